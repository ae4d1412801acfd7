"""Versioned contracts: the Arrow shard schemas and the manifest (see schemas/README.md)."""

from adpa.schemas import files, sequences, token_topk

CODECS = {c.NAME: c.Codec for c in (token_topk, sequences, files)}


def codec(name: str, version: str):
    """The codec for a shard schema; refuses unknown names and unknown major versions."""
    if name not in CODECS:
        raise ValueError(f"unknown shard schema {name!r} (known: {', '.join(sorted(CODECS))})")
    c = CODECS[name]
    if str(version).split(".")[0] != c.version.split(".")[0]:
        raise ValueError(f"shard schema {name} version {version} is not supported (this adpa reads {c.version.split('.')[0]}.x)")
    return c
