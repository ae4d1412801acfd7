"""Data-parallel processes: RANK / WORLD_SIZE / LOCAL_RANK from the launcher (torchrun, accelerate, slurm).

Stage one: each rank scores its own contiguous slice of the input rows into its own shards; ranks
meet at a barrier after every artifact, then rank 0 publishes the one manifest. The barrier is a
gloo process group (it needs MASTER_ADDR and MASTER_PORT, which torchrun sets); it carries no data.
Stage two sums gradients over the same kind of group (nccl on GPUs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta


def silent(*_) -> None:
    """A `say` that says nothing."""


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def speaker(self, say):
        """`say` on rank 0, silence elsewhere: rank 0 speaks for all."""
        return say if self.rank == 0 else silent

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist
            dist.barrier()

    def close(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def from_env(backend: str = "gloo") -> Ranks:
    """Ranks from the launcher's environment; joins the process group (`backend`: gloo, or nccl for
    training on GPUs) when there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    r = Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not 0 <= r.rank < world:
        raise ValueError(f"RANK={r.rank} is outside 0..WORLD_SIZE-1={world - 1}")
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            if not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
                raise ValueError("WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT (torchrun sets them)")
            # Stage one can run for hours between barriers.
            dist.init_process_group(backend, timeout=timedelta(hours=24))
    return r
