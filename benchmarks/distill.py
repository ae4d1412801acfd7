"""`make bench-distill`: stage two's step time per token for each loss, data wait, and memory.

A student of realistic shape for the machine, randomly initialised (no hub): on CPU a Llama of
~51M parameters with SmolLM2's real 49,152-token vocabulary; `--shape danube3-500m` gives the
Danube3-500M shape (32,000 tokens, 1536 wide, 16 layers) for a GPU. The caches are real
artifacts written through the store (teacher-topk with k = 50, advantage, seq-logp) holding
teacher-like synthetic values; only their values are synthetic, their sizes and layout are
stage one's. Measured in one run, on the same pairs:

* bare: `model(input_ids, labels=...)` forward + backward on the chosen sequences, the textbook
  SFT step (full [tokens, vocab] logits), with AdamW;
* our trainer for sft, kd, dckd and adpa: seconds per 1,000 tokens through the student
  (prompts included, padding not; dckd and adpa forward two sequences per pair, sft and kd one)
  and the fraction of step time spent waiting for data;
* peak RSS of a whole training run in a fresh process streaming N and 10N pairs (a smaller
  student there: the question is whether memory grows with the cache, not the model's size;
  the shuffle buffer, which holds `shuffle_buffer` decoded pairs, is 32 pairs in both runs, and
  every response has 160 tokens, so every step has the same shapes; record batches of 4,096
  tokens instead of stage one's 65,536, so that N pairs already span several of them).

Each loss's run is paired with a bare run just before it (bare, sft, bare, kd, ...), `--repeats`
rounds (3), and the ratio reported is the median of the paired ratios, all of them printed: a
shared machine's load changes between separate phases, a pair is measured under one load. On CUDA
a first round more is run and discarded: it meets each new batch shape cold (kernel selection,
allocator growth).
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
from pathlib import Path

import numpy as np

OUT = Path("bench-out")
SHAPES = {  # name: (vocab, hidden, layers, heads, kv heads, intermediate)
    "cpu-51m": (49152, 512, 8, 8, 4, 1408),
    "rss-tiny": (49152, 64, 2, 4, 2, 128),
    "danube3-500m": (32000, 1536, 16, 16, 8, 4096),
    "llama-1.5b": (32000, 2048, 24, 32, 8, 8192),
    "smoke": (32000, 64, 2, 4, 2, 128),  # the GPU check's --device cpu mode
}
K = 50
RSS_BATCH_TOKENS = 4096  # record batches of ~18 rows: a reader holds at most 3 decoded record batches, so
# memory stops growing once a cache has a few of them; stage one's 65,536-token batches need ~900 pairs
RSS_BUFFER = 32  # shuffle buffer of the RSS runs: below both N and 10N, so both runs hold it full
RSS_RESPONSE = (160, 161)  # one response length: every step has the same shapes, so the peak cannot
# grow just because a longer cache holds a longer batch somewhere


def make_model(shape: str, device: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    vocab, hidden, layers, heads, kv, inter = SHAPES[shape]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, tie_word_embeddings=True,
                      max_position_embeddings=4096)
    return LlamaForCausalLM(cfg).to(device)


def _row(rng, i, side, ids, prompt_len, vocab, with_ref=False):
    """Teacher-like values: a peaked top-k (sorted, summing below 1) at every response position."""
    n = len(ids) - prompt_len
    top = (rng.integers(0, vocab, (n, 1)) + np.arange(K) * 7919) % vocab  # distinct: 7919 is prime to the vocab
    p = rng.dirichlet(np.full(K + 1, 0.3), size=n)
    logp = np.log(np.sort(p[:, :K], axis=1)[:, ::-1] + 1e-12)
    from adpa.schemas.token_topk import Row, tail_logmass
    realized = -rng.exponential(2.0, n)
    ref = {"ref_topk_logp": logp + rng.normal(0, 0.5, logp.shape),
           "ref_realized_logp": realized - rng.normal(0, 0.5, n)} if with_ref else {}
    return Row(f"p{i}", side, i, ids, prompt_len, top, logp, realized, tail_logp=tail_logmass(logp), **ref)


def _seq(rng, prompt_ids, vocab: int, response: tuple[int, int]) -> np.ndarray:
    return np.concatenate([prompt_ids, rng.integers(0, vocab, int(rng.integers(*response)))])


def build_caches(store, n: int, vocab: int, prompt: int, response: tuple[int, int], batch_tokens: int = 65536) -> dict:
    """teacher_topk, advantage and student_logp artifacts for n pairs, through the store's writer."""
    from adpa.artifacts import ArtifactSpec, ArtifactWriter, WriteOptions
    from adpa.schemas import sequences, token_topk
    specs = {"teacher_topk": ("teacher-topk", token_topk.Codec, {"k": K, "vocab_size": vocab, "with_ref": False}),
             "advantage": ("advantage", token_topk.Codec, {"k": K, "vocab_size": vocab, "with_ref": True}),
             "student_logp": ("seq-logp", sequences.Codec, {"vocab_size": vocab, "with_logp": True})}
    keys = {}
    for name, (kind, codec, layout) in specs.items():
        rng = np.random.default_rng(0)
        spec = ArtifactSpec(kind, {"bench": name, "n": n, "vocab": vocab, "prompt": prompt, "response": list(response),
                                   "batch_tokens": batch_tokens}, codec, layout, n)
        with ArtifactWriter(store, spec, options=WriteOptions(max_shard_rows=512, batch_tokens=batch_tokens)) as w:
            if not w.reused:
                for i in range(n):
                    p_ids = rng.integers(0, vocab, prompt)
                    if name == "advantage":
                        w.add(i, [_row(rng, i, "generated", _seq(rng, p_ids, vocab, response), prompt, vocab, with_ref=True)])
                    else:
                        rows = [_row(rng, i, s, _seq(rng, p_ids, vocab, response), prompt, vocab) for s in ("chosen", "rejected")]
                        if name == "student_logp":
                            rows = [sequences.Row(r.pair_id, r.side, r.input_index, r.token_ids, r.prompt_len,
                                                  realized_logp=r.realized_logp) for r in rows]
                        w.add(i, rows)
                w.publish({})
            keys[name] = w.key
    return {name: store.path(k) for name, k in keys.items()}


def train_run(loss: str, dirs: dict, model, batch_pairs: int, token_budget: int, autocast, steps_dir: Path,
              buffer: int = 256, gradient_checkpointing: bool = False) -> dict:
    import torch

    from adpa.stages.distill.settings import Distill
    settings = Distill(loss=loss, lr=1e-5, sft_lr=1e-5, epochs=1, batch_pairs=batch_pairs, token_budget=token_budget,
                       gradient_checkpointing=gradient_checkpointing, shuffle_buffer=buffer)
    shutil.rmtree(steps_dir, ignore_errors=True)
    steps_dir.mkdir(parents=True)
    cuda = next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run = _bench_distiller(model, dirs, settings, autocast, steps_dir)
    run.check()
    run.setup()
    summary = run.train()
    m = [json.loads(ln) for ln in (steps_dir / "metrics.jsonl").read_text().splitlines()]
    m = m[1:] or m  # step 1 warms up (allocations): not timed when there are others
    fwd, secs = sum(x["forward_tokens"] for x in m), sum(x["step_s"] for x in m)
    return {"loss": loss, "steps_timed": len(m), "forward_tokens": fwd, "seconds": round(secs, 3),
            "s_per_1k_tokens": round(1000 * secs / fwd, 4),
            "data_wait_fraction": round(sum(x["data_wait_s"] for x in m) / secs, 4),
            "whole_run_data_wait_fraction": summary["data_wait_fraction"],
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None}


def _bench_distiller(model, dirs: dict, settings, autocast, run_dir: Path):
    """The Distiller on a model already in memory and synthetic caches: no tokenizer to check the caches
    against, no key to compute, nothing published (the benchmark calls check, setup and train)."""
    from adpa.stages.common.models import ResolvedModel
    from adpa.stages.common.ranks import silent
    from adpa.stages.distill.distiller import Distiller, Job, Place, key_settings
    from adpa.stages.distill.losses import caches_of

    class BenchDistiller(Distiller):
        def check(self) -> str:
            loss = self.job.loss
            self.dirs, self.pad, self.vocab = {a: dirs[a] for a in caches_of(loss)}, 0, model.config.vocab_size
            self.sharded, self.device, self.autocast = False, next(model.parameters()).device, autocast
            self.key_settings, self.key = key_settings(self.settings, loss), f"bench-{loss}"
            return self.key

        def load_student(self):
            return model

    init = ResolvedModel("bench (random init)", "", None, {"bench": True})
    return BenchDistiller(None, Job(settings.loss, init, settings, {}), Place(run_dir, say=silent))


def bare_run(dirs: dict, model, batch_pairs: int, steps: int, device: str, autocast) -> dict:
    """The textbook SFT step on the same chosen sequences: full logits, HF's own loss."""
    import torch

    from adpa.artifacts import ArtifactReader
    rows = [r for r in ArtifactReader(dirs["student_logp"]) if r.side == "chosen"]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ctx = torch.autocast(device.split(":")[0], dtype=getattr(torch, autocast)) if autocast else torch.autocast(
        "cpu", enabled=False)
    times, fwd = [], 0
    for s in range(steps + 1):
        batch = rows[s * batch_pairs:(s + 1) * batch_pairs]
        T = max(len(r.token_ids) for r in batch)
        ids = torch.zeros(len(batch), T, dtype=torch.long)
        labels = torch.full((len(batch), T), -100, dtype=torch.long)
        mask = torch.zeros(len(batch), T, dtype=torch.long)
        for b, r in enumerate(batch):
            ids[b, :len(r.token_ids)] = torch.as_tensor(r.token_ids)
            labels[b, r.prompt_len:len(r.token_ids)] = ids[b, r.prompt_len:len(r.token_ids)]
            mask[b, :len(r.token_ids)] = 1
        t0 = time.perf_counter()
        with ctx:
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if s:  # step 0: warm-up
            times.append(time.perf_counter() - t0)
            fwd += int(mask.sum())
    return {"loss": "bare", "steps_timed": steps, "forward_tokens": fwd, "seconds": round(sum(times), 3),
            "s_per_1k_tokens": round(1000 * sum(times) / fwd, 4)}


def interleaved(a, dirs: dict, model, device: str, autocast) -> list[dict]:
    """Each loss's run paired with a bare run just before it (bare, sft, bare, kd, ...), `a.repeats` rounds
    (on CUDA a first round more, untimed: it meets each shape cold). Per loss: the last run's figures, the
    paired ratios to its bare run and their median (a shared machine's load changes between separate
    phases; a pair is measured under one load)."""
    steps = a.pairs // a.batch_pairs - 1
    warm = 1 if device == "cuda" else 0
    rounds = []
    for rep in range(warm + a.repeats):
        for loss in ("sft", "kd", "dckd", "adpa"):
            bare = bare_run(dirs, model, a.batch_pairs, steps, device, autocast)
            run = train_run(loss, dirs, model, a.batch_pairs, a.token_budget, autocast, OUT / f"distill-{loss}",
                            gradient_checkpointing=a.gradient_checkpointing)
            print(json.dumps(run | {"pass": rep + 1, "bare_s_per_1k_tokens": bare["s_per_1k_tokens"]}), flush=True)
            if rep >= warm:
                rounds.append((loss, bare, run))
    out = [bare | {"vs_bare": 1.0, "vs_bare_paired": [1.0]}]
    for loss in ("sft", "kd", "dckd", "adpa"):
        mine = [(b, r) for name, b, r in rounds if name == loss]
        ratios = [r["s_per_1k_tokens"] / b["s_per_1k_tokens"] for b, r in mine]
        out.append(mine[-1][1] | {"vs_bare": statistics.median(ratios), "vs_bare_paired": ratios})
    return out


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(n: int) -> dict:
    """A whole adpa run over n pairs (caches built beforehand) with the small student; peak RSS."""
    from adpa.artifacts import Store
    dirs = build_caches(Store(OUT / "distill-store"), n, SHAPES["rss-tiny"][0], 64, RSS_RESPONSE, RSS_BATCH_TOKENS)
    model = make_model("rss-tiny", "cpu")
    r = train_run("adpa", dirs, model, 8, 8192, None, OUT / f"distill-rss-{n}", buffer=RSS_BUFFER)
    return {"pairs": n, "peak_rss_mb": peak_rss_mb(), "seconds": r["seconds"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="cpu-51m", choices=sorted(SHAPES))
    ap.add_argument("--pairs", type=int, default=24, help="pairs per loss run (the timed steps)")
    ap.add_argument("--batch-pairs", type=int, default=4)
    ap.add_argument("--token-budget", type=int, default=4096)
    ap.add_argument("--prompt", type=int, default=48)
    ap.add_argument("--response", type=int, nargs=2, default=(96, 192), help="response length range")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="the trainer's runs recompute activations")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (bare, loss) pairs; the median ratio is reported")
    ap.add_argument("--rss-pairs", type=int, default=64, help="N for the RSS check (it also runs 10N); 0 skips it")
    ap.add_argument("--child-rss", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_rss:
        if a.build_only:
            from adpa.artifacts import Store
            build_caches(Store(OUT / "distill-store"), a.child_rss, SHAPES["rss-tiny"][0], 64, RSS_RESPONSE, RSS_BATCH_TOKENS)
        else:
            print(json.dumps(rss_child(a.child_rss)))
        return
    import torch

    from adpa.artifacts import Store
    device = "cuda" if torch.cuda.is_available() else "cpu"
    autocast = "bfloat16" if device == "cuda" else None
    store = Store(OUT / "distill-store")
    dirs = build_caches(store, a.pairs, SHAPES[a.shape][0], a.prompt, tuple(a.response))
    model = make_model(a.shape, device)
    params = sum(p.numel() for p in model.parameters())
    print(f"student {a.shape}: {params / 1e6:.1f}M parameters, vocab {SHAPES[a.shape][0]}, {device}"
          f"{' bf16 autocast' if autocast else ' float32'}; {a.pairs} pairs, {a.batch_pairs} per step"
          f"{'; gradient checkpointing' if a.gradient_checkpointing else ''}", flush=True)
    results = interleaved(a, dirs, model, device, autocast)
    print(f"\n{'loss':6} {'s/1k tok':>9} {'vs bare, paired (median of ...)':>34} {'data wait':>10} {'peak GPU MB':>12}")
    for r in results:
        paired = "/".join(f"{x:.3f}" for x in r["vs_bare_paired"])
        print(f"{r['loss']:6} {r['s_per_1k_tokens']:>9.4f} {r['vs_bare']:>8.3f} ({paired}){'':>{max(0, 24 - len(paired))}}"
              f" {r.get('data_wait_fraction', float('nan')):>10.4f} {str(r.get('peak_gpu_mb')):>12}")
    rss = []
    if a.rss_pairs:
        for n in (a.rss_pairs, 10 * a.rss_pairs):
            child = [sys.executable, "-m", "benchmarks.distill", "--child-rss", str(n)]
            subprocess.run(child + ["--build-only"], capture_output=True, check=True)  # caches exist before the run
            out = subprocess.run(child, capture_output=True, text=True, check=True)
            rss.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"\npeak RSS, whole adpa run (student {SHAPES['rss-tiny']}): {rss[0]['pairs']} pairs "
              f"{rss[0]['peak_rss_mb']:,.0f} MB, {rss[1]['pairs']} pairs {rss[1]['peak_rss_mb']:,.0f} MB "
              f"({rss[1]['peak_rss_mb'] / rss[0]['peak_rss_mb']:.3f}x)")
    OUT.mkdir(exist_ok=True)
    (OUT / f"distill-{a.shape}.json").write_text(json.dumps({"shape": a.shape, "device": device,
                                                             "gradient_checkpointing": a.gradient_checkpointing,
                                                             "parameters": params, "results": results, "rss": rss},
                                                            indent=1))


if __name__ == "__main__":
    main()
