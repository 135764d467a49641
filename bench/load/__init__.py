"""`cgbench load`: fixed-length requests (`fixed`) and typing clients (`typists`) against one
server at once (`run`)."""
