"""int8 vs float32: logits NMSE after each prompt and greedy agreement over 64 new tokens."""
import json, sys, numpy as np
from engine import load, SamplingParams
model = sys.argv[1]; n_prompts = int(sys.argv[2]); plen = int(sys.argv[3])
rng = np.random.default_rng(7)
gens = {d: load(model, dtype=d, prefix_cache_bytes=0) for d in ("float32", "int8")}
usable = min(gens["float32"].tokenizer.usable_ids(), gens["float32"].config.arch.vocab_size)
params = SamplingParams(max_new_tokens=64, ignore_eos=True, truncate=False)
out = []
for p in range(n_prompts):
    ids = [int(i) for i in rng.integers(0, usable, plen)]
    logits = {d: g.model.prefill(ids)[0] for d, g in gens.items()}
    ref, got = logits["float32"].astype(np.float64), logits["int8"].astype(np.float64)
    nmse = float(((ref - got) ** 2).sum() / (ref ** 2).sum())
    toks = {d: list(g.generate(ids, params).choices[0].token_ids) for d, g in gens.items()}
    same = next((i for i, (a, b) in enumerate(zip(toks["float32"], toks["int8"])) if a != b), 64)
    agree = float(np.mean([a == b for a, b in zip(toks["float32"], toks["int8"])]))
    out.append(dict(prompt=p, prompt_tokens=plen, nmse=nmse, argmax_same=bool(ref.argmax() == got.argmax()),
                    greedy_identical_prefix=same, greedy_positionwise_agreement=agree))
    print(json.dumps(out[-1]), flush=True)
print(json.dumps(dict(model=model, nmse_mean=float(np.mean([o["nmse"] for o in out])),
                      identical_64=sum(o["greedy_identical_prefix"] == 64 for o in out), prompts=len(out))))
