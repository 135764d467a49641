"""Benchmarks of cgbench's sibling commands: `cgbench serve-overhead` (cgserve's cost per
request) and `cgbench convert-speed` (cgconvert from-hf against a raw copy)."""
