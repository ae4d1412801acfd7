"""Training checkpoints, written whole or not at all, and found again by `--resume`.

`<run>/checkpoints/step-00000012/` holds `state.pt` (model, optimizer, scheduler, the step and the
run's key; the data position follows from the step) and one `rng-rankN.pt` per rank; a sharded
(FSDP) run keeps model and optimizer in `dcp/`, written by every rank with torch.distributed.checkpoint. Everything is
written into a `.tmp` folder that is renamed into place once complete (rename is atomic), so a kill at any
moment leaves either the previous checkpoint or the new one, never half of one. Only the newest
`keep` checkpoints stay.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adpa.artifacts.fsutil import fsync_dir, fsync_file

PREFIX = "step-"


def _rng_state() -> dict:
    """Plain tensors, numbers and lists only, so that loading needs no unpickling of arbitrary objects."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                      gauss],
            "python": random.getstate(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    kind, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(s["python"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def trained_state(model) -> dict:
    """What training changes: the whole state, or only the trainable parameters when some are frozen
    (LoRA: the adapters, not a second copy of the base model)."""
    if all(p.requires_grad for p in model.parameters()):
        return model.state_dict()
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def restore(model, state: dict) -> None:
    """Load what `trained_state` gave; a state that misses a trainable parameter is refused."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):
        raise ValueError(f"a state of another model: unexpected {unexpected[:3]}, missing "
                         f"{sorted(trainable & set(missing))[:3]}")


def complete(run_dir: Path) -> list[Path]:
    d = Path(run_dir) / "checkpoints"
    return sorted(p for p in d.glob(f"{PREFIX}*") if p.is_dir() and not p.name.endswith(".tmp")) if d.is_dir() else []


@dataclass(frozen=True)
class Trainee:
    """What a checkpoint holds the state of: a run (its key), its model, optimizer and schedule, on its ranks.
    `sharded` (the FSDP root, else None): model and optimizer are saved by every rank, in shards."""

    key: str
    model: object
    optimizer: object
    scheduler: object
    ranks: object  # stages.common.ranks.Ranks
    sharded: object = None


def save(run_dir: Path, step: int, t: Trainee, keep: int = 2, extra: dict | None = None) -> Path:
    """Every rank calls this; rank 0 writes the shared state (and `extra`: the best state so far when
    checkpoints are selected), each rank its RNG state. Sharded, model and optimizer go to `dcp/`
    instead, each rank writing its own shards."""
    key, model, optimizer, scheduler, ranks, sharded = t.key, t.model, t.optimizer, t.scheduler, t.ranks, t.sharded
    d = Path(run_dir) / "checkpoints"
    final = d / f"{PREFIX}{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if ranks.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    ranks.barrier()
    rng = tmp / f"rng-rank{ranks.rank}.pt"
    torch.save(_rng_state(), rng)
    fsync_file(rng)
    if sharded is not None:
        from adpa.stages.distill import sharding
        sharding.save(sharded, optimizer, tmp / "dcp")
    ranks.barrier()
    if ranks.rank == 0:
        state = tmp / "state.pt"
        weights = {"sharded": True} if sharded is not None else {"model": trained_state(model),
                                                                 "optimizer": optimizer.state_dict()}
        torch.save({"key": key, "step": step, "world_size": ranks.world_size, **weights,
                    "scheduler": scheduler.state_dict(), "extra": extra}, state)
        fsync_file(state)
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(d)
        for old in complete(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    ranks.barrier()
    return final


def load(path: Path, t: Trainee) -> dict:
    """Restore a checkpoint into the trainee's objects; returns its step and what `save` got as `extra`."""
    key, model, optimizer, scheduler, ranks, sharded = t.key, t.model, t.optimizer, t.scheduler, t.ranks, t.sharded
    # weights_only: a checkpoint is data (tensors, numbers, strings), never code to run
    state = torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=True)
    if state["key"] != key:
        raise ValueError(f"{path}: a checkpoint of run {state['key']}, not of {key} (other settings or data); "
                         f"use another --output or remove it")
    if state["world_size"] != ranks.world_size:
        raise ValueError(f"{path}: written by {state['world_size']} processes; resume with the same number")
    if state.get("sharded", False) != (sharded is not None):
        raise ValueError(f"{path}: written {'with' if state.get('sharded') else 'without'} distill.fsdp; resume "
                         f"the same way")
    if sharded is not None:
        from adpa.stages.distill import sharding
        sharding.load(sharded, optimizer, Path(path) / "dcp")
    else:
        restore(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(torch.load(Path(path) / f"rng-rank{ranks.rank}.pt", weights_only=True))
    return {"step": state["step"], "extra": state.get("extra")}
