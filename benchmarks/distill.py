"""`make bench-distill`: stage two's step time per token for each loss, data wait, and memory.

A student of realistic shape for the machine, randomly initialised (no hub): on CPU a Llama of
~51M parameters with SmolLM2's real 49,152-token vocabulary; `--shape danube3-500m` gives the
Danube3-500M shape (32,000 tokens, 1536 wide, 16 layers) for a GPU. The caches are real
artifacts written through the store (teacher-topk with k = 50, advantage, seq-logp) holding
teacher-like synthetic values; only their values are synthetic, their sizes and layout are
stage one's. Measured in one run, on the same pairs:

* the limit: the student's bare forward and backward over the unique tokens of the same pairs (each
  prompt once): its forward, the output layer at the scored positions, a cross-entropy of the realized
  tokens there, backward, AdamW (`limit_loss`). Run two ways, and the faster is the limit: each pair
  alone in a row of its own (no padding at all), and on our packed rows (batched; their padding);
* our trainer for sft, kd, dckd and adpa on plain rows (each part of each pair alone, right-padded:
  `distill.pack: false`) and on packed rows (each prompt once, several pairs per row: the default);
  for each, seconds per 1,000 unique tokens, the share of the limit (limit seconds / these seconds),
  the padding fraction of its rows and the fraction of step time spent waiting for data;
* peak RSS of a whole training run in a fresh process streaming N and 10N pairs (a smaller
  student there: the question is whether memory grows with the cache, not the model's size;
  the shuffle buffer, which holds `shuffle_buffer` decoded pairs, is 32 pairs in both runs, and
  every response has 160 tokens, so every step has the same shapes; record batches of 4,096
  tokens instead of stage one's 65,536, so that N pairs already span several of them).

The four runs of a loss (bare alone, bare rows, ours plain, ours packed) are one round, `--repeats`
rounds (3), and each ratio reported is the median of its per-round ratios, all of them printed: a
shared machine's load changes between separate phases, a round is measured under one load. On CUDA
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
from dataclasses import dataclass, replace
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
        spec = ArtifactSpec(kind, {"bench": name, "prompts": "one per pair", "n": n, "vocab": vocab, "prompt": prompt, "response": list(response),
                                   "batch_tokens": batch_tokens}, codec, layout, n)
        with ArtifactWriter(store, spec, options=WriteOptions(max_shard_rows=512, batch_tokens=batch_tokens)) as w:
            if not w.reused:
                for i in range(n):
                    # a pair's prompt is the same in every artifact, as stage one renders it
                    p_ids = np.random.default_rng([7, i]).integers(0, vocab, prompt)
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


def train_run(loss: str, dirs: dict, model, steps_dir: Path, run: Run) -> dict:
    """One run of our trainer (or of the limit) over the caches -> its timed figures."""
    import torch

    from adpa.stages.common.lm import base_model
    from adpa.stages.distill.settings import Distill
    settings = Distill(loss=loss, lr=1e-5, sft_lr=1e-5, epochs=1, batch_pairs=run.batch_pairs,
                       token_budget=run.token_budget, gradient_checkpointing=run.gradient_checkpointing,
                       shuffle_buffer=run.buffer, pack=run.pack or bool(run.limit), compile=run.compile)
    shutil.rmtree(steps_dir, ignore_errors=True)
    steps_dir.mkdir(parents=True)
    cuda = next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = _bench_distiller(model, dirs, settings, run, steps_dir)
    trainer.check()
    trainer.setup()
    summary = trainer.train()
    if run.compile:  # the model serves the next runs too: back to eager (nn.Module.compile's own switch)
        base_model(model)._compiled_call_impl = None
    m = [json.loads(ln) for ln in (steps_dir / "metrics.jsonl").read_text().splitlines()]
    m = m[1:] or m  # step 1 warms up (allocations): not timed when there are others
    fwd, secs = sum(x["forward_tokens"] for x in m), sum(x["step_s"] for x in m)
    return {"loss": run.limit or loss, "pack": run.pack, "compile": run.compile, "steps_timed": len(m), "forward_tokens": fwd,
            "seconds": round(secs, 3), "s_per_1k_tokens": round(1000 * secs / fwd, 4),
            "padding_fraction": round(1 - fwd / sum(x["padded_tokens"] for x in m), 4),
            "data_wait_fraction": round(sum(x["data_wait_s"] for x in m) / secs, 4),
            "whole_run_data_wait_fraction": summary["data_wait_fraction"],
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None}


@dataclass(frozen=True)
class Run:
    """How a benchmark run trains: our trainer (plain rows or packed), or a bare run (`limit_loss`) over each pair
    alone ("alone": no padding) or over our packed rows ("rows")."""

    batch_pairs: int
    token_budget: int
    autocast: str | None = None
    pack: bool = True
    limit: str | None = None
    compile: bool = False
    gradient_checkpointing: bool = False
    buffer: int = 256


def limit_loss(model, out, mb) -> tuple:
    """The least any loss must do with a micro-batch: the student's forward over its rows, the output layer at
    the scored positions and a cross-entropy of the realized tokens there (what backward then differentiates)."""
    import torch

    from adpa.stages.distill.objective import BLOCK_BYTES, Head, forward, head_logprobs
    hidden = forward(model, mb)
    rows = torch.cat([p.rows for p in mb.parts.values()])
    cols, targets = torch.cat([p.cols for p in mb.parts.values()]), torch.cat([p.targets for p in mb.parts.values()])
    _, realized = head_logprobs(out, hidden[rows, cols], Head(None, targets), max(1, BLOCK_BYTES // (4 * out.vocab_size)))
    value = -realized.mean()
    return value, {"loss": value.item()}


def _bench_distiller(model, dirs: dict, settings, run: Run, run_dir: Path):
    """The Distiller on a model already in memory and synthetic caches: no tokenizer to check the caches
    against, no key to compute, nothing published (the benchmark calls check, setup and train). A bare run
    (`run.limit`) goes through `limit_loss`: on our packed rows ("rows"), or ("alone") on the same steps'
    pairs, each pair alone in a row of its own (its prompt once, its parts as branches: no padding)."""
    from adpa.stages.common.lm import OutputLayer
    from adpa.stages.common.models import ResolvedModel
    from adpa.stages.common.ranks import silent
    from adpa.stages.distill.distiller import Distiller, Job, Place, key_settings
    from adpa.stages.distill.losses import caches_of
    from adpa.stages.distill.objective import collate

    class BenchDistiller(Distiller):
        def check(self) -> str:
            loss = self.job.loss
            self.dirs, self.pad, self.vocab = {a: dirs[a] for a in caches_of(loss)}, 0, model.config.vocab_size
            self.sharded, self.device, self.autocast = False, next(model.parameters()).device, run.autocast
            self.bridge = None
            self.key_settings, self.key = key_settings(self.settings, loss), f"bench-{loss}"
            return self.key

        def load_student(self):
            return model

        def setup(self):
            super().setup()
            if run.limit:
                out = OutputLayer(model, self.vocab)
                self.compute = lambda mb: limit_loss(model, out, mb)

        def _batches(self):
            if run.limit != "alone":
                yield from super()._batches()
                return
            for step, pairs in self.stream.steps(self.settings.epochs, self.start):
                yield step, len(pairs), [collate([ex], self.job.loss, 0, packed=True) for ex in pairs], None

    init = ResolvedModel("bench (random init)", "", None, {"bench": True})
    return BenchDistiller(None, Job(settings.loss, init, settings, {}), Place(run_dir, say=silent))


LOSSES = ("sft", "kd", "dckd", "adpa")


VARIANTS = (Run(0, 0, limit="alone"), Run(0, 0, limit="rows"), Run(0, 0, pack=False), Run(0, 0))
COMPILED = Run(0, 0, compile=True)  # with --compile: ours packed, compiled


def interleaved(a, dirs: dict, model, autocast) -> list[dict]:
    """Per loss, over the same pairs: the bare run on each pair alone, the bare run on our packed rows, our
    trainer on plain rows and on packed rows; `a.repeats` rounds (on CUDA a first round more, untimed: it
    meets each shape cold). Per loss and variant: the last run's figures, and the paired ratios (limit
    seconds / these seconds, 1.0: at the limit) and their median, the limit being the faster bare run of the
    round (a shared machine's load changes between separate phases; a round is measured under one load)."""
    cuda = next(model.parameters()).is_cuda
    shared = {"batch_pairs": a.batch_pairs, "token_budget": a.token_budget, "autocast": autocast,
              "gradient_checkpointing": a.gradient_checkpointing}
    variants = [replace(v, **shared) for v in VARIANTS + ((COMPILED,) if a.compile else ())]
    rounds = []
    for rep in range((1 if cuda else 0) + a.repeats):
        for loss in LOSSES:
            runs = [train_run(loss, dirs, model, OUT / f"distill-{loss}", v) for v in variants]
            for r in runs:
                print(json.dumps(r | {"for": loss, "pass": rep + 1}), flush=True)
            if rep >= (1 if cuda else 0):
                rounds.append((loss, runs))
    out = []
    for loss in LOSSES:
        mine = [runs for name, runs in rounds if name == loss]
        for j in range(len(variants)):
            ratios = [min(runs[0]["seconds"], runs[1]["seconds"]) / runs[j]["seconds"] for runs in mine]
            out.append(mine[-1][j] | {"for": loss, "of_limit": statistics.median(ratios), "of_limit_paired": ratios})
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
    r = train_run("adpa", dirs, model, OUT / f"distill-rss-{n}", Run(8, 8192, buffer=RSS_BUFFER))
    return {"pairs": n, "peak_rss_mb": peak_rss_mb(), "seconds": r["seconds"]}


def row_length_probe(shape: str, segment: int = 432) -> dict:
    """Why packed rows are no longer than the longest pair: the transformer's forward and backward per token on
    4 rows of one segment, 2 rows of two and 1 row of four (a dense `segment_mask`), best of 3 each."""
    import torch

    from adpa.stages.common.lm import base_model, segment_mask
    model = make_model(shape, "cpu").train()
    out = {}
    for per_row in (1, 2, 4):
        R, T = 4 // per_row, per_row * segment
        seg = torch.arange(T).repeat(R, 1) // segment
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            h = base_model(model)(input_ids=torch.randint(0, SHAPES[shape][0], (R, T)),
                                  attention_mask=segment_mask(seg, torch.full((R, T), -1), None),
                                  position_ids=torch.arange(T).repeat(R, 1) % segment).last_hidden_state
            h.float().pow(2).mean().backward()
            times.append(time.perf_counter() - t0)
        out[f"{per_row}x{segment}"] = 1000 * min(times) / (R * T)
    print("transformer forward + backward, s per 1k tokens, by segments per row: " + ", ".join(
        f"{k} {v:.3f} ({v / out[f'1x{segment}']:.2f}x)" for k, v in out.items()))
    return out


def print_table(results: list[dict]) -> None:
    """Per loss: the limit's seconds per 1,000 unique tokens, then plain and packed rows: their share of the
    limit (limit seconds / ours, median of the paired rounds), padding fraction, data wait, peak GPU memory."""
    print(f"\n{'loss':5} {'run':22} {'s/1k unique tok':>15} {'of limit, paired (median of ...)':>36} "
          f"{'padding':>8} {'data wait':>10} {'peak GPU MB':>12}")
    unique = {}
    for r in results:
        unique.setdefault(r["for"], r["forward_tokens"])  # the first variant: each pair alone, unique tokens only
        paired = "/".join(f"{x:.3f}" for x in r["of_limit_paired"])
        per_unique = 1000 * r["seconds"] / unique[r["for"]]
        name = f"bare {r['loss']}" if r["loss"] in ("alone", "rows") else "ours " + ("packed" if r["pack"] else "plain")
        name += " compiled" if r["compile"] else ""
        print(f"{r['for']:5} {name:22} {per_unique:>15.4f} {r['of_limit']:>8.3f} "
              f"({paired}){'':>{max(0, 25 - len(paired))}} {r['padding_fraction']:>8.4f} "
              f"{r['data_wait_fraction']:>10.4f} {str(r['peak_gpu_mb']):>12}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="cpu-51m", choices=sorted(SHAPES))
    ap.add_argument("--pairs", type=int, default=24, help="pairs per loss run (the timed steps)")
    ap.add_argument("--batch-pairs", type=int, default=4)
    ap.add_argument("--token-budget", type=int, default=4096)
    ap.add_argument("--prompt", type=int, default=48)
    ap.add_argument("--response", type=int, nargs=2, default=(96, 192), help="response length range")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="the trainer's runs recompute activations")
    ap.add_argument("--compile", action="store_true", help="a fifth run per round: ours packed with distill.compile")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (limit, plain, packed) per loss; the median "
                    "paired ratio is reported")
    ap.add_argument("--rss-pairs", type=int, default=64, help="N for the RSS check (it also runs 10N); 0 skips it")
    ap.add_argument("--row-probe", action="store_true", help="only: the transformer's cost per token in rows of 1, 2 "
                    "and 4 segments of 432 tokens (why packed rows are no longer than the longest pair)")
    ap.add_argument("--child-rss", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.row_probe:
        row_length_probe(a.shape)
        return
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
    results = interleaved(a, dirs, model, autocast)
    print_table(results)
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
