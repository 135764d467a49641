"""RSS (MiB) of rank 0 right after loading MODEL split WORLD ways, and its embedding's shape:
PYTHONPATH=. python results/cpu-350M-2B-tensor-parallel-vocab-sharded/rss_after_load.py MODEL WORLD"""
import json, sys
import psutil
from engine import load

spec, world = sys.argv[1], int(sys.argv[2])
gen = load(spec, tensor_parallel=world)
m = gen.model
local = m.local if world > 1 else m
rss = psutil.Process().memory_info().rss / 2**20
kids = [p.memory_info().rss / 2**20 for p in psutil.Process().children(recursive=True)]
print(json.dumps({"spec": spec, "world": world, "rss_mib": round(rss, 1),
                  "followers_rss_mib": [round(k, 1) for k in kids],
                  "wte": list(local.wte.shape)}), flush=True)
if world > 1:
    m.close()
