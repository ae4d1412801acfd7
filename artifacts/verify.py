"""`adpa cache verify`: re-check an artifact end to end against its manifest."""

from __future__ import annotations

from pathlib import Path

from artifacts.shards import ShardError, check_shard, codec_and_layout
from artifacts.store import MANIFEST, read_manifest
from schemas.manifest import ManifestError


class Incomplete(Exception):
    """The artifact has no manifest yet: a producer is running, died, or never started."""


class VerifyError(Exception):
    """The first thing found wrong, in one line."""


def verify_artifact(artifact_dir: Path) -> dict:
    """Return the manifest when every shard matches it; raise Incomplete or VerifyError otherwise."""
    d = Path(artifact_dir)
    if not d.is_dir():
        raise VerifyError(f"{d}: no such artifact")
    if not (d / MANIFEST).exists():
        raise Incomplete(f"{d.name}: incomplete (no manifest.json); re-run its producer to finish it")
    try:
        m = read_manifest(d / MANIFEST, d.name)
        codec, layout = codec_and_layout(m)
    except (ManifestError, ValueError) as e:
        raise VerifyError(f"{d.name}/manifest.json: {e}") from None
    for entry in m["shards"]:
        try:
            check_shard(d, entry, codec, layout)
        except (ShardError, ManifestError) as e:
            raise VerifyError(f"{d.name}/{e}") from None
    return m
