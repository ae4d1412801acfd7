"""Streaming an artifact: shard by shard, decoded on a background thread, never all in memory.

Rows come in manifest order (shards in order, rows in order within each): stage-one artifacts
list input rows in input order, which is what stage two's merge-join relies on. An artifact on a
URL store is fetched one shard at a time into the working copy (size and sha256 checked on the way)
and each shard is deleted once decoded.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from adpa.artifacts.fsutil import work_folder
from adpa.artifacts.prefetch import background
from adpa.artifacts.remote import RemoteArtifact, RemoteError
from adpa.artifacts.shards import ShardError, codec_and_layout, open_shard
from adpa.artifacts.store import MANIFEST, read_manifest, repair_hint


class ArtifactReader:
    """`artifact_dir`: a local artifact folder, or a RemoteArtifact (Store.location gives either)."""

    def __init__(self, artifact_dir: str | Path | RemoteArtifact, *, prefetch: int = 4, check_sha: bool = True):
        self.remote = artifact_dir if isinstance(artifact_dir, RemoteArtifact) else None
        if self.remote is not None:
            self.dir, self.name = None, self.remote.key
            m = self.remote.remote.manifest(self.remote.key)
            if m is None:
                raise FileNotFoundError(f"{self.remote}: incomplete or missing artifact (no manifest.json)")
            self.manifest = m
        else:
            self.dir = Path(artifact_dir)
            self.name = self.dir.name
            if not (self.dir / MANIFEST).exists():
                raise FileNotFoundError(f"{self.dir.name}: incomplete or missing artifact (no manifest.json)")
            self.manifest = read_manifest(self.dir / MANIFEST, self.dir.name)
        self.codec, self.layout = codec_and_layout(self.manifest)
        self.prefetch, self.check_sha = prefetch, check_sha

    @contextlib.contextmanager
    def _shard(self, entry: dict):
        """The shard's local folder: the artifact's, or a scratch folder it is fetched into (removed after)."""
        if self.remote is None:
            yield self.dir, self.check_sha
            return
        with work_folder(self.remote.scratch, "read") as scratch:
            try:
                self.remote.remote.fetch(self.remote.key, entry, scratch / entry["file"])
            except RemoteError as e:
                raise ShardError(f"artifact {self.name}: {e}; {repair_hint(self.name)}") from None
            yield scratch, False  # fetch hashed it on the way

    def decoded(self):
        """Decoded record batches in manifest order (each shard's sha256 checked first, unless told not to)."""
        for entry in self.manifest["shards"]:
            with self._shard(entry) as (folder, check_sha):
                try:
                    batches, state = open_shard(folder, entry, self.codec, self.layout, check_sha)
                except ShardError as e:
                    raise ShardError(f"artifact {self.name}: {e}; {repair_hint(self.name)}") from None
                for batch in batches:
                    yield self.codec.decode(batch, self.layout, state)

    def __iter__(self):
        """The codec's `Row`s (arrays are views into their record batch), decoding `prefetch` batches ahead."""
        for batch in background(self.decoded(), self.prefetch, "adpa-shard-decoder"):
            for i in range(len(batch)):
                yield batch.row(i)
