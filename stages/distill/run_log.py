"""Where a training run's scalars go: metrics.jsonl always, TensorBoard and Weights & Biases when
`distill.report_to` names them (the transformers `report_to` convention).

One record per optimizer step (`split` absent: train) and one per validation (`split: valid`);
every number in a record becomes the scalar `<split>/<name>` at its step, so TensorBoard and W&B
hold exactly what metrics.jsonl holds. A resumed run keeps metrics.jsonl up to its checkpoint's
step, starts TensorBoard with `purge_step` there (later events of the killed run are hidden),
and continues the same W&B run (its id is kept in the run folder). Only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from adpa.artifacts.fsutil import atomic_write_bytes

NOT_SCALARS = ("step", "split")
WANDB_ID = "wandb-run-id"
METRICS = "metrics.jsonl"


def read_records(path: Path, say=print) -> list[dict]:
    """The records of a metrics.jsonl. A torn last line (a kill or a full disk mid-write) is dropped with a
    warning naming the file; damage anywhere else is an error naming the file and the line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a record with a step")
        except (ValueError, UnicodeDecodeError) as e:
            if any(rest.strip() for rest in lines[n:]):
                raise ValueError(f"{path}: line {n} is damaged ({str(e)[:80]}); remove that line to go on") from None
            say(f"warning: {path}: dropped its torn last line {n} (a run killed while writing it)")
            break
        out.append(record)
    return out


@dataclass(frozen=True)
class Sinks:
    """Where a run's records go besides metrics.jsonl (`report_to`: tensorboard, wandb), under what name and
    configuration (W&B); `active`: this process writes (rank 0)."""

    report_to: tuple[str, ...]
    name: str
    config: dict
    active: bool = True


class RunLog:
    def __init__(self, run_dir: Path, sinks: Sinks, start: int, say=print):
        report_to, name, config = sinks.report_to, sinks.name, sinks.config
        self.active = sinks.active
        self.path = Path(run_dir) / METRICS
        self.tensorboard = self.wandb = None
        self.final = {}
        if not self.active:
            return
        kept = [r for r in read_records(self.path, say) if r["step"] <= start] if start else []
        self.final = next((r for r in reversed(kept) if "split" not in r), {})  # a run resumed at its end
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start + 1 if start else None)
        if "wandb" in report_to:
            import wandb
            id_file = Path(run_dir) / WANDB_ID
            resuming = bool(start) and id_file.exists()
            run_id = id_file.read_text().strip() if resuming else secrets.token_hex(4)
            atomic_write_bytes(id_file, run_id.encode())
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "adpa-pipeline"), name=name, id=run_id,
                                    dir=str(run_dir), config=config, resume="allow" if resuming else None)

    def write(self, record: dict) -> None:
        if not self.active:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        split = record.get("split", "train")
        scalars = {f"{split}/{k}": v for k, v in record.items()
                   if k not in NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tensorboard is not None:
            for tag, v in scalars.items():
                self.tensorboard.add_scalar(tag, v, record["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=record["step"])

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.tensorboard = self.wandb = None
