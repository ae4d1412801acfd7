"""The parts a training step is made of, each small and testable alone: the learning-rate schedule, the
stops for a diverging run, the sum of gradients and numbers over ranks, and the selection of the best
validated state. `distiller.Distiller` puts them together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from adpa.stages.distill import checkpoints
from adpa.stages.distill.settings import LOWER_IS_BETTER


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


def stop_if_not_finite(step: int, values: dict, lr: float, run_dir: Path) -> None:
    """Before the optimizer applies a step: a non-finite loss term or gradient norm ends the run (nothing is
    published; the checkpoints written so far, all finite, stay in the run folder)."""
    bad = [n for n, v in values.items() if not math.isfinite(v)]
    if bad:
        raise NotFinite(f"step {step}: {bad[0]} is {values[bad[0]]} at learning rate {lr:.3g}; nothing was "
                        f"published, the last finite checkpoint stays in {Path(run_dir) / 'checkpoints'} (lower "
                        f"distill.lr or max_grad_norm)")


def stop_if_weights_not_finite(model, steps: int, ranks) -> None:
    """Finite losses can still leave an infinite weight (a huge learning rate): never publish one. Every rank
    checks its own part (FSDP: its shards) and all learn the verdict."""
    local = [(n, p.to_local() if hasattr(p, "to_local") else p) for n, p in model.named_parameters()]
    bad = [n for n, p in local if not bool(torch.isfinite(p.detach()).all())]
    if sum_over_ranks([float(len(bad))], ranks)[0]:
        raise NotFinite(f"after step {steps}: weight {bad[0] if bad else '(on another rank)'} is not finite; nothing "
                        f"was published (lower distill.lr)")


def all_reduce_grads(params, ranks, bucket: int = 1 << 24) -> None:
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


def sum_over_ranks(values: list[float], ranks) -> list[float]:
    if ranks.world_size == 1:
        return values
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


@dataclass
class Selection:
    """The best validated state so far under `by` (a metric of `settings.SELECT_BY`; "last": none kept).
    A checkpoint carries it (`as_extra`), so a resumed run selects among the states of the whole run."""

    by: str
    step: int | None = None
    value: float | None = None
    state: dict | None = None  # the trained tensors, on the CPU

    @classmethod
    def from_extra(cls, by: str, extra: dict | None) -> "Selection":
        return cls(by, **extra) if extra else cls(by)

    def as_extra(self) -> dict | None:
        return None if self.step is None else {"step": self.step, "value": self.value, "state": self.state}

    def offer(self, step: int, values: dict, model) -> None:
        """Keep the model's state when its `values` beat the best so far."""
        if self.by == "last":
            return
        v = values[self.by]
        if self.step is None or (v < self.value if self.by in LOWER_IS_BETTER else v > self.value):
            self.step, self.value = step, v
            self.state = {k: t.detach().to("cpu", copy=True) for k, t in checkpoints.trained_state(model).items()}
