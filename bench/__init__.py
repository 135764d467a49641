"""cgbench: latency and memory sweeps across CodeGen variants."""
