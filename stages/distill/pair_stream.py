"""Stage two's examples: the artifacts a loss needs, joined by input row and shuffled by a seed.

Every stage-one artifact lists its rows in input order and drops the same input rows for the
same reasons, so a streaming merge on `input_index` joins them without holding an artifact in
memory. An example is one preference pair: its parts (`chosen`, `rejected`, `state`) are rows
of the artifacts the loss reads. Shuffling is a seeded buffer of `buffer` pairs, re-seeded per
epoch, so an epoch's order is a pure function of (seed, epoch) and a data position is just
(epoch, pairs consumed): resuming re-reads the epoch and skips that many pairs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adpa.artifacts.reader import ArtifactReader
from adpa.artifacts.remote import RemoteArtifact
from adpa.schemas import sequences, token_topk
from adpa.stages.distill.losses import LOSSES

class JoinError(ValueError):
    pass


Row = token_topk.Row | sequences.Row  # what a part is: a row of the artifact it comes from


@dataclass
class Example:
    index: int  # the input row
    parts: dict[str, Row]  # part name (the loss's reads: chosen, rejected, state) -> its row

    @property
    def tokens(self) -> int:
        return sum(len(r.token_ids) for r in self.parts.values())


def _grouped(reader: ArtifactReader, name: str) -> Iterator[tuple[int, list[Row]]]:
    """(input index, its rows) in input order."""
    cur, rows = None, []
    for row in reader:
        i = row.input_index
        if cur is not None and i != cur:
            if i < cur:
                raise JoinError(f"{reader.dir.name} ({name}): rows are not in input order ({cur} then {i})")
            yield cur, rows
            rows = []
        cur = i
        rows.append(row)
    if cur is not None:
        yield cur, rows


def _part(rows: list[Row], side: str, where: str) -> Row:
    """The row of this side, its arrays copied: a view would keep its whole decoded record batch alive
    for as long as the shuffle buffer holds the pair."""
    for r in rows:
        if r.side == side or side == "generated":  # an advantage row's side names where its state came from
            return r.copy()
    raise JoinError(f"{where}: input row {rows[0].input_index} has no {side} row")


def joined(dirs: dict[str, Path | RemoteArtifact], loss: str) -> Iterator[Example]:
    """Examples in input order; artifacts that disagree on which input rows they hold stop the run."""
    reads = LOSSES[loss].reads
    names = sorted({r.cache for r in reads.values()})
    # Decoding runs far ahead of training anyway; one decoded record batch in hand per artifact is enough.
    its = {n: _grouped(ArtifactReader(dirs[n], prefetch=1), n) for n in names}
    while True:
        heads = {n: next(it, None) for n, it in its.items()}
        if all(h is None for h in heads.values()):
            return
        present = {n: h[0] for n, h in heads.items() if h is not None}
        if len(set(present.values())) != 1 or len(present) != len(names):
            first = min(present.values())
            where = ", ".join(f"{dirs[n].name} ({n}) at {present.get(n, 'its end')}" for n in names)
            raise JoinError(f"artifacts do not hold the same input rows (input row {first}): {where}")
        i = next(iter(present.values()))
        yield Example(i, {part: _part(heads[r.cache][1], r.side, f"{dirs[r.cache].name} ({r.cache})")
                          for part, r in reads.items()})


def shuffled(items, buffer: int, rng: np.random.Generator):
    """A streaming shuffle: hold `buffer` items, emit a random one as each new one arrives."""
    held = []
    for x in items:
        if len(held) < buffer:
            held.append(x)
            continue
        j = int(rng.integers(len(held)))
        held[j], x = x, held[j]
        yield x
    rng.shuffle(held)
    yield from held


class PairStream:
    """The examples of one training run over `epochs`, as steps of `batch_pairs` pairs."""

    def __init__(self, dirs: dict[str, Path | RemoteArtifact], loss: str, seed: int, buffer: int, batch_pairs: int):
        self.dirs, self.loss, self.seed, self.buffer, self.batch_pairs = dirs, loss, seed, buffer, batch_pairs
        self.n_pairs = self._count()
        if self.n_pairs == 0:
            raise JoinError(f"{', '.join(d.name for d in dirs.values())}: no usable pairs")
        self.steps_per_epoch = -(-self.n_pairs // batch_pairs)

    def _count(self) -> int:
        counts = {n: ArtifactReader(d).manifest["rows_used"] for n, d in self.dirs.items()}
        if len(set(counts.values())) != 1:
            raise JoinError("artifacts do not hold the same number of input rows: "
                            + ", ".join(f"{self.dirs[n].name} ({n}) {c}" for n, c in counts.items()))
        return next(iter(counts.values()))

    def epoch(self, epoch: int) -> Iterator[Example]:
        rng = np.random.default_rng([self.seed, epoch])
        return shuffled(joined(self.dirs, self.loss), self.buffer, rng)

    def steps(self, epochs: int, start_step: int = 0) -> Iterator[tuple[int, list[Example]]]:
        """(global step, its pairs) from `start_step` on; the pairs before it are read and skipped."""
        step = 0
        for e in range(epochs):
            if step + self.steps_per_epoch <= start_step:
                step += self.steps_per_epoch
                continue
            batch = []
            for ex in self.epoch(e):
                batch.append(ex)
                if len(batch) == self.batch_pairs:
                    if step >= start_step:
                        yield step, batch
                    step, batch = step + 1, []
            if batch:
                if step >= start_step:
                    yield step, batch
                step += 1
