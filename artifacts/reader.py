"""Streaming an artifact: shard by shard, decoded on a background thread, never all in memory.

Order is deterministic: shards in manifest order, or shuffled by `seed`; rows within a record
batch optionally shuffled by the same seed. Data-parallel readers take every `world_size`-th row
of that global order starting at `rank`, so ranks are disjoint and together cover every row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from artifacts.prefetch import background
from artifacts.shards import codec_and_layout, open_shard
from artifacts.store import MANIFEST, read_manifest


class ArtifactReader:
    def __init__(self, artifact_dir: str | Path, *, seed: int | None = None, shuffle_rows: bool = False,
                 rank: int = 0, world_size: int = 1, prefetch: int = 4, check_sha: bool = True):
        self.dir = Path(artifact_dir)
        if not (self.dir / MANIFEST).exists():
            raise FileNotFoundError(f"{self.dir.name}: incomplete or missing artifact (no manifest.json)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.manifest = read_manifest(self.dir / MANIFEST, self.dir.name)
        self.codec, self.layout = codec_and_layout(self.manifest)
        self.seed, self.shuffle_rows = seed, shuffle_rows
        self.rank, self.world_size = rank, world_size
        self.prefetch, self.check_sha = prefetch, check_sha

    def shard_order(self) -> list[dict]:
        shards = list(self.manifest["shards"])
        if self.seed is not None:
            np.random.default_rng(self.seed).shuffle(shards)
        return shards

    def _decoded(self):
        """(decoded batch, row indices for this rank) per record batch, in the global order."""
        rng = np.random.default_rng(self.seed) if self.shuffle_rows else None
        start = 0
        for entry in self.shard_order():
            reader, state = open_shard(self.dir, entry, self.codec, self.layout, self.check_sha)
            for i in range(reader.num_record_batches):
                batch = self.codec.decode(reader.get_batch(i), self.layout, state)
                n = len(batch)
                order = rng.permutation(n) if rng is not None else np.arange(n)
                mine = order[(start + np.arange(n)) % self.world_size == self.rank]
                start += n
                yield batch, mine

    def iter_decoded(self):
        """Decoded record batches with this rank's row indices, decoding `prefetch` batches ahead."""
        return background(self._decoded(), self.prefetch, "adpa-shard-decoder")

    def __iter__(self):
        """Rows as dicts of numpy arrays (see the codec's TokenBatch.row)."""
        for batch, mine in self.iter_decoded():
            for i in mine:
                yield batch.row(int(i))

    def iter_token_batches(self, token_budget: int):
        """Lists of rows whose scored tokens sum to at most `token_budget` (a longer row comes alone)."""
        out, used = [], 0
        for row in self:
            n = self.codec.row_tokens(row)
            if out and used + n > token_budget:
                yield out
                out, used = [], 0
            out.append(row)
            used += n
        if out:
            yield out
