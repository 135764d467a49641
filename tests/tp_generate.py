"""Rank-0 script for the tensor-parallel equivalence tests: the same requests on a model split
N ways and on the same model in one process; prints what both gave as JSON.

    python tp_generate.py MODEL WORLD
"""
from __future__ import annotations

import json
import sys
import threading

import numpy as np

from engine import SamplingParams, load

PROMPTS = ["def fibonacci(n):\n    if n < 2:\n", "import os\n\nclass Point:\n", "x = [i for i"]


class CancelAfter:
    """A cancel that turns on after `n` checks (the model checks once per layer)."""

    def __init__(self, n: int):
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


def run(gen) -> dict:
    out: dict = {}
    ids = gen.encode(PROMPTS[0] * 3)
    out["logits"] = gen.model.logits(ids).tolist()
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True)
    out["greedy"] = [gen.generate(p, greedy).choices[0].token_ids for p in PROMPTS]
    sampled = SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=5, n=2,
                             ignore_eos=True)
    out["sampled"] = [c.token_ids for c in gen.generate(PROMPTS[1], sampled).choices]
    # several requests at once: one batch, rows at different positions
    done: list = [None] * len(PROMPTS)
    reqs = [gen.request(p, SamplingParams(max_new_tokens=10 + 3 * i, temperature=0.0,
                                          ignore_eos=True),
                        threading.Event(), lambda e: None,
                        lambda r, i=i: done.__setitem__(i, r))
            for i, p in enumerate(PROMPTS)]
    for r in reqs:
        gen.submit(r)
    while gen.step():
        pass
    out["batched"] = [r.result.choices[0].token_ids for r in reqs]
    # prefix reuse: the prompt plus a few characters reuses its KV cache
    longer = gen.generate(PROMPTS[0] + "        ret", greedy)
    out["reused"] = [longer.reused_tokens > 0, longer.choices[0].token_ids]
    # a warm-up stopped after one layer, then the request resumes from there
    warm_prompt = PROMPTS[2] * 4
    gen.warm(warm_prompt, CancelAfter(1))
    out["resumed"] = gen.generate(warm_prompt, greedy).choices[0].token_ids
    return out


if __name__ == "__main__":
    spec, world = sys.argv[1], int(sys.argv[2])
    split = run(load(spec, tensor_parallel=world))
    one = run(load(spec))
    a, b = np.asarray(split.pop("logits")), np.asarray(one.pop("logits"))
    nmse = float(((a - b) ** 2).sum() / (b ** 2).sum())
    print(json.dumps({"nmse": nmse, "split": split, "one": one}), flush=True)
