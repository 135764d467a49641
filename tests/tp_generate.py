"""Rank-0 script for the tensor-parallel equivalence tests: the same requests on a model split
N ways and on the same model in one process; prints what both gave as JSON, and the shapes of
rank 0's vocabulary tensors.  One prompt is token ids from both sides of every boundary between
the ranks' vocabulary rows, so with the vocabulary split every rank's rows are looked up.

    python tp_generate.py MODEL WORLD [DTYPE]
"""
from __future__ import annotations

import json
import sys
import threading

import numpy as np

from engine import SamplingParams, load

TEXTS = ["def fibonacci(n):\n    if n < 2:\n", "import os\n\nclass Point:\n", "x = [i for i"]


def spread_ids(vocab: int, eos: int) -> list[int]:
    """Token ids on both sides of every boundary between ranks' vocabulary rows (N = 2, 4)."""
    picks = (7, vocab // 4 - 1, vocab // 4, vocab // 2 - 1, vocab // 2, 3 * vocab // 4 + 1,
             vocab - 1)
    return [i for i in picks if i != eos]


class CancelAfter:
    """A cancel that turns on after `n` checks (the model checks once per layer)."""

    def __init__(self, n: int):
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


def run(gen) -> dict:
    out: dict = {}
    spread = spread_ids(gen.config.arch.vocab_size, gen.config.eos_token_id)
    prompts = TEXTS + [spread]
    ids = gen.encode(prompts[0] * 3) + spread
    out["logits"] = gen.model.logits(ids).tolist()
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True)
    out["greedy"] = [gen.generate(p, greedy).choices[0].token_ids for p in prompts]
    sampled = SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=5, n=2,
                             ignore_eos=True)
    out["sampled"] = [c.token_ids for c in gen.generate(prompts[1], sampled).choices]
    # several requests at once: one batch, rows at different positions
    done: list = [None] * len(prompts)
    reqs = [gen.request(p, SamplingParams(max_new_tokens=10 + 3 * i, temperature=0.0,
                                          ignore_eos=True),
                        threading.Event(), lambda e: None,
                        lambda r, i=i: done.__setitem__(i, r))
            for i, p in enumerate(prompts)]
    for r in reqs:
        gen.submit(r)
    while gen.step():
        pass
    out["batched"] = [r.result.choices[0].token_ids for r in reqs]
    # prefix reuse: the prompt plus a few characters reuses its KV cache
    longer = gen.generate(prompts[0] + "        ret", greedy)
    out["reused"] = [longer.reused_tokens > 0, longer.choices[0].token_ids]
    # a warm-up stopped after one layer, then the request resumes from there
    warm_prompt = prompts[2] * 4
    gen.warm(warm_prompt, CancelAfter(1))
    out["resumed"] = gen.generate(warm_prompt, greedy).choices[0].token_ids
    return out


if __name__ == "__main__":
    spec, world = sys.argv[1], int(sys.argv[2])
    dtype = sys.argv[3] if len(sys.argv) > 3 else "float32"
    split_gen = load(spec, dtype=dtype, tensor_parallel=world)
    local, arch = split_gen.model.local, split_gen.config.arch  # rank 0's shard model
    shapes = {"wte": list(local.wte.shape), "lm_head": list(local.lm_w.shape),
              "vocab": arch.vocab_size, "n_embd": arch.n_embd}
    split = run(split_gen)
    one = run(load(spec, dtype=dtype))
    a, b = np.asarray(split.pop("logits")), np.asarray(one.pop("logits"))
    nmse = float(((a - b) ** 2).sum() / (b ** 2).sum())
    print(json.dumps({"nmse": nmse, "shapes": shapes, "split": split, "one": one}), flush=True)
