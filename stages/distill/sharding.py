"""FSDP2 (`distill.fsdp`): a student's parameters, gradients and optimizer state sharded over the
torchrun processes, for students larger than one GPU.

Each decoder layer is one `fully_shard` unit; the root unit is `LossModule`, which holds the
embeddings, the final norm and the output layer and computes a micro-batch's loss in its forward,
so those parameters are gathered exactly while the loss needs them. FSDP averages gradients over
processes where the trainer's weights (a micro-batch's share of the step's pairs) already make the
sum the step's mean, so the sharded loss is multiplied by the world size. Every process must run
the same number of forward passes (each one gathers parameters from all): `micro_batch_count`
gives the most any process has, and the others run zero-weighted copies.
Checkpoints go through `torch.distributed.checkpoint` (each process writes its shards);
`full_state` gathers the weights for `save_pretrained` on rank 0.
"""

from __future__ import annotations

import os
import pickle

import torch

from adpa.stages.distill.objective import micro_loss


class LossModule(torch.nn.Module):
    """The FSDP root: `forward(micro_batch)` -> (loss, terms) through the student it holds."""

    def __init__(self, model, out, loss: str, settings):
        super().__init__()
        self.model = model
        self.out, self.loss, self.settings = out, loss, settings

    def forward(self, mb):
        return micro_loss(self.model, self.out, mb, self.loss, self.settings)


def layers_of(model) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model (the classes it names as never to be split)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    found = [m for m in model.modules() if type(m).__name__ in names]
    if not found:
        raise ValueError(f"distill.fsdp: {type(model).__name__} names no layer class (_no_split_modules) to shard by")
    return found


def shard(model, out, loss: str, settings) -> LossModule:
    from torch.distributed.fsdp import fully_shard

    root = LossModule(model, out, loss, settings)
    for layer in layers_of(model):
        fully_shard(layer)
    fully_shard(root)
    return root


def micro_batch_count(n: int) -> int:
    """The most micro-batches any process has in this step."""
    import torch.distributed as dist
    t = torch.tensor([n], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def full_state(root: LossModule) -> dict | None:
    """The student's whole state dict (transformers' names) on rank 0, None elsewhere; every rank calls it."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    # a tied output layer is the input embedding: saved once, under the name transformers saves it
    names = {n for n, _ in root.model.named_parameters()} | {n for n, _ in root.model.named_buffers()}
    return {k.removeprefix("model."): v for k, v in sd.items() if k.removeprefix("model.") in names}


def save(root: LossModule, optimizer, folder) -> None:
    """Every rank writes its shards of the model and optimizer state into `folder` (a shared file system)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(root, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(folder))


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's `.metadata` is a pickle; only its own record classes and torch's dtypes, layouts and sizes
    may come out of it, so a planted checkpoint cannot run code (the rest is read `weights_only`)."""

    def find_class(self, module: str, name: str):
        if module.startswith("torch.distributed.checkpoint.") or (module, name) in (
                ("collections", "OrderedDict"), ("torch", "Size"), ("torch.serialization", "_get_layout"),
                ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath")):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                         torch.memory_format)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"checkpoint metadata names {module}.{name}, which is not checkpoint data")


def _reader(folder):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with open(os.path.join(self.path, ".metadata"), "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Reader(str(folder))


def load(root: LossModule, optimizer, folder) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(root, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, storage_reader=_reader(folder))
    set_state_dict(root, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
