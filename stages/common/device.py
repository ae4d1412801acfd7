"""Where and in which precision a stage computes: one rule for stage one, stage two and evaluation."""

from __future__ import annotations


def pick_device(local_rank: int = 0, cuda: bool | None = None) -> str:
    """`cuda:<local rank>` when CUDA is available (each launcher process owns one GPU), else `cpu`."""
    if cuda is None:
        import torch
        cuda = torch.cuda.is_available()
    return f"cuda:{local_rank}" if cuda else "cpu"


def compute_dtype(setting: str, device: str) -> str:
    """The dtype a `dtype` setting means on `device`: `auto` is bfloat16 on any CUDA device (`cuda`,
    `cuda:1`, ...) and float32 elsewhere; an explicit dtype is itself."""
    if setting == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return setting


def pad_id(tok) -> int:
    """The id that pads batches: the tokenizer's pad token, else its end-of-sequence token. Padding is
    masked out everywhere, so the choice never changes a value; one rule keeps it so."""
    if tok.pad_token_id is not None:
        return tok.pad_token_id
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {getattr(tok, 'name_or_path', '')!r} has neither a pad nor an eos token")
    return tok.eos_token_id
