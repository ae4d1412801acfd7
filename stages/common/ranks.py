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


RENDEZVOUS_S = 300  # seconds to wait for every process to join; ADPA_RENDEZVOUS_S overrides


def env_int(name: str, default: int, minimum: int) -> int:
    """A launcher variable as an integer >= minimum, or one line naming it."""
    text = os.environ.get(name, str(default))
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError(f"{name}={text[:40]!r} must be an integer >= {minimum} (a launcher such as torchrun sets "
                         f"it; unset it to run one process)")
    return value


def from_env(backend: str = "gloo") -> Ranks:
    """Ranks from the launcher's environment; joins the process group (`backend`: gloo, or nccl for
    training on GPUs) when there is more than one process."""
    world = env_int("WORLD_SIZE", 1, 1)
    r = Ranks(env_int("RANK", 0, 0), world, env_int("LOCAL_RANK", 0, 0))
    if not r.rank < world:
        raise ValueError(f"RANK={r.rank} is outside 0..WORLD_SIZE-1={world - 1}")
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            day = timedelta(hours=24)  # stage one can run for hours between barriers
            store = _rendezvous(r)
            store.set_timeout(day)
            # what init_process_group does with a store it makes itself (env://)
            dist.init_process_group(backend, store=dist.PrefixStore("default_pg", store), rank=r.rank,
                                    world_size=world, timeout=day)
    return r


def _rendezvous(r: Ranks):
    """The launcher's TCP store, joined within ADPA_RENDEZVOUS_S seconds: left-over launcher variables in a
    shell (WORLD_SIZE=2 outside torchrun) end with a line naming the address, not a day's silent wait."""
    from torch.distributed import TCPStore
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (addr and port):
        raise ValueError("WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT (torchrun sets them)")
    wait = env_int("ADPA_RENDEZVOUS_S", RENDEZVOUS_S, 1)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"MASTER_PORT={port[:40]!r} is not a port number")
    try:
        # torchrun already serves the store on rank 0's agent (TORCHELASTIC_USE_AGENT_STORE): join it
        master = r.rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
        return TCPStore(addr, int(port), r.world_size, master, timeout=timedelta(seconds=wait),
                        wait_for_workers=True)
    except (RuntimeError, OSError) as e:
        raise RuntimeError(f"{r.world_size} processes did not meet at MASTER_ADDR:MASTER_PORT={addr}:{port} within "
                           f"{wait} s ({str(e).splitlines()[0][:120]}): start every rank (torchrun does), or unset "
                           f"WORLD_SIZE, RANK and MASTER_ADDR to run one process") from None
