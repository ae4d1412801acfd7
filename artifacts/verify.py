"""`adpa cache verify`: re-check an artifact end to end against its manifest."""

from __future__ import annotations

from pathlib import Path

from adpa.artifacts.fsutil import work_folder
from adpa.artifacts.remote import RemoteArtifact, RemoteError
from adpa.artifacts.shards import ShardError, check_shard, codec_and_layout
from adpa.artifacts.store import MANIFEST, read_manifest
from adpa.schemas.manifest import ManifestError


class Incomplete(Exception):
    """The artifact has no manifest yet: a producer is running, died, or never started."""


class VerifyError(Exception):
    """The first thing found wrong, in one line."""


def verify_artifact(artifact_dir: Path | RemoteArtifact) -> dict:
    """Return the manifest when every shard matches it; raise Incomplete or VerifyError otherwise.
    A RemoteArtifact is checked shard by shard, each fetched into the working copy and deleted after."""
    if isinstance(artifact_dir, RemoteArtifact):
        return _verify_remote(artifact_dir)
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


def _verify_remote(a: RemoteArtifact) -> dict:
    try:
        m = a.remote.manifest(a.key)
        if m is None:
            raise Incomplete(f"{a}: incomplete (no manifest.json); re-run its producer to finish it")
        codec, layout = codec_and_layout(m)
    except (ManifestError, ValueError, RemoteError) as e:
        raise VerifyError(f"{a}/manifest.json: {e}") from None
    for entry in m["shards"]:
        with work_folder(a.scratch, "verify") as scratch:
            try:
                a.remote.fetch(a.key, entry, scratch / entry["file"])
                check_shard(scratch, entry, codec, layout)
            except (ShardError, ManifestError, RemoteError) as e:
                raise VerifyError(f"{a}/{e}") from None
    return m
