"""`make bench-plan`: planning stage one's keys for a 100,000-pair file, against rendering it.

What stage two and `adpa cache ls -r` do to name a recipe's caches: `plan` hashes the data file,
reads its first row and loads the chat template's tokenizer (the real SmolLM2 one); it renders no
row. Measured in one run, on HH-RLHF-shaped transcripts made from text CPython ships
(`benchmarks.real_text.chat_pairs`):

* `plan` in this process, transformers already imported (best of REPEATS);
* `adpa cache ls -r` as a fresh process (interpreter, imports and model resolution included);
* what planning cost before it (issue 25): stage one's `setup`, which loads all three tokenizers
  and renders every row, on the same file (once).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

OUT = Path("bench-out")
REPEATS = 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--store", default=str(OUT / "store"))
    args = ap.parse_args()

    from adpa.artifacts import Store
    from benchmarks.real_text import chat_pairs
    from adpa.pipeline import builtin
    from adpa.pipeline.recipe import load_recipe
    from adpa.stages.common.ranks import silent
    from adpa.stages.teacher_cache.run import Request, plan, setup

    data = OUT / f"plan-{args.pairs}.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("\n".join(json.dumps(r) for r in chat_pairs(args.pairs)) + "\n")
    sets = [f"data.source={data}", "data.format=auto", "teacher_cache.max_length=512"]
    r = load_recipe("smollm2", sets)
    store = Store(args.store)
    models = builtin.resolve_models(r.models, store)
    print(f"{args.pairs:,} pairs, {data.stat().st_size / 2**20:,.1f} MiB: {data}")

    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        keys = plan(Request(models, r.data, r.teacher_cache))
        times.append(time.perf_counter() - t0)
    print(f"plan, in process (best of {REPEATS}):  {min(times):7.3f} s  ({', '.join(f'{t:.3f}' for t in times)})")

    cmd = [sys.executable, "-m", "adpa.pipeline.cli", "cache", "ls", "-r", "smollm2", "--store", args.store]
    cmd += [a for s in sets for a in ("--set", s)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cli = time.perf_counter() - t0
    assert all(k in out for k in keys.values()), out
    print(f"adpa cache ls -r, a fresh process:     {cli:7.3f} s")

    t0 = time.perf_counter()
    run = setup(Request(models, r.data, r.teacher_cache), store, say=silent)
    rendered = time.perf_counter() - t0
    print(f"setup (3 tokenizers, every row rendered): {rendered:7.3f} s  ({len(run.prepared):,} rows; "
          f"{rendered / min(times):,.0f}x plan)")


if __name__ == "__main__":
    main()
