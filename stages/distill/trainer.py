"""The stage-two training loop: plain PyTorch, readable in one sitting.

One optimizer step sees `batch_pairs` preference pairs in total. Rank r of W takes pairs
r, r + W, ... of the step and packs them into micro-batches of at most `token_budget` padded
tokens. Each micro-batch's loss (a mean over its pairs) is weighted by its share of the step's
pairs, so the accumulated gradient is the gradient of the mean over all of the step's pairs,
whatever the number of processes or micro-batches. Ranks sum their gradients (all-reduce),
then clip, AdamW, and the learning-rate schedule step. Data are collated on a background
thread; the time the loop waits for them is measured. With `eval_every`, a `validate` callback
measures the model on validation pairs at the start, every `eval_every` steps and at the end, and
with `select_by` the best state (not the last) is what the run leaves in `model`.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from artifacts.prefetch import background
from stages.common.lm import OutputLayer
from stages.distill import checkpoints, sharding
from stages.distill.objective import collate, micro_loss, pack
from stages.common.settings import plain
from stages.distill.pair_stream import PairStream
from stages.distill.run_log import RunLog
from stages.distill.losses import LOSSES
from stages.distill.settings import LOWER_IS_BETTER, Distill


def lr_multiplier(schedule: str, total: int, warmup_steps: int):
    """Multiplier of the peak lr for optimizer step s (0-based): linear warm-up over `warmup_steps` steps
    ((s + 1) / (warmup_steps + 1): no step is wasted at lr 0), then the peak at step `warmup_steps`, then
    cosine (or linear) decay towards 0 at the end, or constant."""
    def f(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / (warmup_steps + 1)
        p = (s - warmup_steps) / max(1, total - warmup_steps)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * p))
        if schedule == "linear":
            return 1 - p
        return 1.0
    return f


class NotFinite(ValueError):
    """Training diverged: the step, the quantity and the learning rate, in one line."""


def _stop_if_not_finite(step: int, values: dict, lr: float, run_dir: Path) -> None:
    """Before the optimizer applies a step: a non-finite loss term or gradient norm ends the run (nothing is
    published; the checkpoints written so far, all finite, stay in the run folder)."""
    bad = [n for n, v in values.items() if not math.isfinite(v)]
    if bad:
        raise NotFinite(f"step {step}: {bad[0]} is {values[bad[0]]} at learning rate {lr:.3g}; nothing was "
                        f"published, the last finite checkpoint stays in {Path(run_dir) / 'checkpoints'} (lower "
                        f"distill.lr or max_grad_norm)")


def _stop_if_weights_not_finite(model, steps: int, ranks) -> None:
    """Finite losses can still leave an infinite weight (a huge learning rate): never publish one. Every rank
    checks its own part (FSDP: its shards) and all learn the verdict."""
    local = [(n, p.to_local() if hasattr(p, "to_local") else p) for n, p in model.named_parameters()]
    bad = [n for n, p in local if not bool(torch.isfinite(p.detach()).all())]
    if _sum_over_ranks([float(len(bad))], ranks)[0]:
        raise NotFinite(f"after step {steps}: weight {bad[0] if bad else '(on another rank)'} is not finite; nothing "
                        f"was published (lower distill.lr)")


def _all_reduce_grads(params, ranks, bucket: int = 1 << 24) -> None:
    """Sum gradients over ranks, in flat buckets (one call per bucket, not per parameter)."""
    import torch.distributed as dist
    grads = [p.grad for p in params]
    i = 0
    while i < len(grads):
        j, n = i, 0
        while j < len(grads) and (n == 0 or n + grads[j].numel() <= bucket):
            n += grads[j].numel()
            j += 1
        flat = torch.cat([g.reshape(-1) for g in grads[i:j]])
        dist.all_reduce(flat)
        o = 0
        for g in grads[i:j]:
            g.copy_(flat[o:o + g.numel()].view_as(g))
            o += g.numel()
        i = j


def _sum_over_ranks(values: list[float], ranks) -> list[float]:
    if ranks.world_size == 1:
        return values
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def train(model, stream: PairStream, loss: str, hp: Distill, lr: float, autocast: str | None, ranks, run_dir: Path,
          key: str, resume: bool, pad_id: int, vocab_size: int, say=print, validate=None, sharded=None) -> dict:
    """Train `model` in place with objective `loss` at peak learning rate `lr` (autocast: "bfloat16" or
    None); returns the run's summary. Rank 0 writes metrics.jsonl and checkpoints. `validate(model)`
    -> {metric: mean} is called when `hp.eval_every` asks for it. `sharded`: the FSDP root over `model`
    (`sharding.shard`), whose forward computes a micro-batch's loss."""
    if hp.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    out = OutputLayer(model, vocab_size)
    compute = sharded or (lambda mb: micro_loss(model, out, mb, loss, hp))
    params = [p for p in (sharded or model).parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=hp.weight_decay)
    total = stream.steps_per_epoch * hp.epochs
    warmup_steps = max(1, round(hp.warmup * total)) if hp.warmup > 0 else 0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(hp.schedule, total, warmup_steps))

    start, best = 0, None  # best: {"step", "value", "state"} under select_by
    found = checkpoints.complete(run_dir)
    if found and not resume:
        raise ValueError(f"{run_dir} holds checkpoints ({found[-1].name}); pass --resume to continue that run "
                         f"or choose another --output")
    if resume and found:
        restored = checkpoints.load(found[-1], key, model, opt, sched, ranks, sharded)
        start, best = restored["step"], restored["extra"]
        say(f"resuming from {found[-1]} (step {start} of {total})")
    with RunLog(run_dir, hp.report_to, start, name=f"{Path(run_dir).name} ({loss})",
                config={"loss": loss, "key": key, "lr": lr} | {k: plain(v) for k, v in vars(hp).items()},
                rank=ranks.rank, say=say) as log:
        return _loop(model, compute, stream, loss, hp, opt, sched, params, start, best, autocast, ranks, run_dir, key,
                     pad_id, say, validate, log, sharded)


def _loop(model, compute, stream, loss, hp, opt, sched, params, start, best, autocast, ranks, run_dir, key, pad_id,
          say, validate, log: RunLog, sharded) -> dict:
    """The optimizer steps from `start` to the end, validation and checkpoints among them."""
    device = next(model.parameters()).device
    total = stream.steps_per_epoch * hp.epochs

    def validation(step: int):
        nonlocal best
        values = validate(model)
        log.write({"step": step, "split": "valid", **values})
        if hp.select_by != "last":
            v = values[hp.select_by]
            if best is None or (v < best["value"] if hp.select_by in LOWER_IS_BETTER else v > best["value"]):
                best = {"step": step, "value": v, "state": {k: t.detach().to("cpu", copy=True)
                                                             for k, t in checkpoints.trained_state(model).items()}}
        say(f"validation at step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(values.items())))

    validating = bool(hp.eval_every and validate)
    if validating and start == 0:
        validation(0)

    def steps():
        for step, pairs in stream.steps(hp.epochs, start):
            mine = pairs[ranks.rank::ranks.world_size]
            micro = [collate(m, loss, pad_id) for m in pack(mine, hp.token_budget)]
            yield step, len(pairs), micro, (micro or [collate(pairs[:1], loss, pad_id)])[0] if sharded else None

    amp = torch.autocast(device.type, dtype=getattr(torch, autocast)) if autocast else nullcontext()
    bar = tqdm(total=total, initial=start, desc=f"distill ({loss})", unit="step", dynamic_ncols=True,
               disable=ranks.rank > 0)
    t_start = time.perf_counter()
    t_ready = t_start
    totals = defaultdict(float)
    last = {n: v for n, v in log.final.items() if n in ("loss", *LOSSES[loss].terms)}  # resumed at the end
    model.train()
    # sharded: every rank runs as many forwards as the busiest one (zero-weighted spares), and FSDP's
    # average over ranks becomes the sum the weights below are made for
    scale = ranks.world_size if sharded else 1
    with bar:  # closed before an error's line, so that line is the last on the terminal
        for step, n_step, micro, spare in background(steps(), depth=2, name="adpa-collate"):
            t_got = time.perf_counter()
            sums = defaultdict(float)
            tokens = pairs = forward = 0
            n_micro = sharding.micro_batch_count(len(micro)) if sharded else len(micro)
            for i in range(n_micro):
                mb = (micro[i] if i < len(micro) else spare).to(device)
                with amp:
                    value, terms = compute(mb)
                (value * (scale * mb.n_pairs / n_step if i < len(micro) else 0.0)).backward()
                if i >= len(micro):
                    continue
                for name, v in terms.items():
                    sums[name] += v * mb.n_pairs
                tokens += mb.tokens
                forward += mb.forward_tokens
                pairs += mb.n_pairs
            for p in params:
                if p.grad is None:  # a rank without pairs in this step still joins the sum
                    p.grad = torch.zeros_like(p)
            names = sorted(sums)
            reduced = _sum_over_ranks([sums[n] for n in names] + [tokens, forward, pairs], ranks)
            if ranks.world_size > 1 and not sharded:
                _all_reduce_grads(params, ranks)
            gnorm = torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm if hp.max_grad_norm > 0 else float("inf"))
            gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm  # sharded: a DTensor
            lr = sched.get_last_lr()[0]
            _stop_if_not_finite(step + 1, dict(zip(names, reduced)) | {"grad_norm": float(gnorm)}, lr, run_dir)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_done = time.perf_counter()
            tokens, forward, pairs = (int(x) for x in reduced[-3:])
            last = {n: v / max(pairs, 1) for n, v in zip(names, reduced)}
            rec = {"step": step + 1, "epoch": step // stream.steps_per_epoch, "lr": lr, **last,
                   "grad_norm": float(gnorm), "pairs": pairs, "tokens": tokens,
                   "forward_tokens": forward, "step_s": round(t_done - t_ready, 4),
                   "data_wait_s": round(t_got - t_ready, 4), "tokens_per_s": round(tokens / (t_done - t_ready), 1)}
            for n in ("tokens", "forward_tokens", "pairs", "step_s", "data_wait_s"):
                totals[n] += rec[n]
            log.write(rec)
            bar.update(1)
            bar.set_postfix_str(f"loss {last['loss']:.4f} {totals['tokens'] / totals['step_s']:,.0f} tok/s")
            if validating and ((step + 1) % hp.eval_every == 0 or step + 1 == total):
                validation(step + 1)
            # the last step always: a run killed after it (saving, publishing) resumes with nothing to retrain
            if hp.save_every and (step + 1) % hp.save_every == 0 or step + 1 == total:
                checkpoints.save(run_dir, step + 1, key, model, opt, sched, ranks, extra=best, sharded=sharded)
            t_ready = time.perf_counter()
    _stop_if_weights_not_finite(model, total, ranks)
    selected = {"by": hp.select_by, "step": total}
    if best is not None:
        checkpoints.restore(model, best["state"])
        selected = {"by": hp.select_by, "step": best["step"], "value": best["value"]}
        say(f"selected the state of step {best['step']} of {total} by validation {hp.select_by} {best['value']:.4f}")
    model.eval()
    secs = time.perf_counter() - t_start
    return {"steps": total, "steps_this_run": total - start, "pairs_per_epoch": stream.n_pairs,
            "tokens_this_run": int(totals["tokens"]), "seconds": round(secs, 2),
            "tokens_per_s": round(totals["tokens"] / totals["step_s"], 1) if totals["step_s"] else None,
            "data_wait_fraction": round(totals["data_wait_s"] / totals["step_s"], 4) if totals["step_s"] else None,
            "final": last, "selected": selected}

