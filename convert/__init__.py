"""cgconvert: inspect, fix up, convert and fetch CodeGen model files."""
