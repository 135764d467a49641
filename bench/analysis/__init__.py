"""Reading cgbench runs: tables (`report`), ratios between runs (`compare`), the variant to
serve (`recommend`) and plots, each computed on a pandas DataFrame of `points.csv`."""
