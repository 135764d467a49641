"""`cgbench run`: the sweep plan, one worker process per point, the backends it measures, and
the `points.csv` schema."""
