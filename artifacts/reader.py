"""Streaming an artifact: shard by shard, decoded on a background thread, never all in memory.

Rows come in manifest order (shards in order, rows in order within each): stage-one artifacts
list input rows in input order, which is what stage two's merge-join relies on.
"""

from __future__ import annotations

from pathlib import Path

from artifacts.prefetch import background
from artifacts.shards import ShardError, codec_and_layout, open_shard
from artifacts.store import MANIFEST, read_manifest, repair_hint


class ArtifactReader:
    def __init__(self, artifact_dir: str | Path, *, prefetch: int = 4, check_sha: bool = True):
        self.dir = Path(artifact_dir)
        if not (self.dir / MANIFEST).exists():
            raise FileNotFoundError(f"{self.dir.name}: incomplete or missing artifact (no manifest.json)")
        self.manifest = read_manifest(self.dir / MANIFEST, self.dir.name)
        self.codec, self.layout = codec_and_layout(self.manifest)
        self.prefetch, self.check_sha = prefetch, check_sha

    def decoded(self):
        """Decoded record batches in manifest order (each shard's sha256 checked first, unless told not to)."""
        for entry in self.manifest["shards"]:
            try:
                reader, state = open_shard(self.dir, entry, self.codec, self.layout, self.check_sha)
            except ShardError as e:
                raise ShardError(f"artifact {self.dir.name}: {e}; {repair_hint(self.dir.name)}") from None
            for i in range(reader.num_record_batches):
                yield self.codec.decode(reader.get_batch(i), self.layout, state)

    def __iter__(self):
        """Rows as dicts of numpy arrays (see the codec's TokenBatch.row), decoding `prefetch` batches ahead."""
        for batch in background(self.decoded(), self.prefetch, "adpa-shard-decoder"):
            for i in range(len(batch)):
                yield batch.row(i)
