"""Sequence shards (schema `adpa.sequences`): token ids per scored or generated sequence.

Used for generations (ADPA states: the prompt and the generated response, with why generation
stopped) and for sequence log-probs (`with_logp`: the realized-token log-prob of every response
position under one model, float32, for DPO references and implicit rewards).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from adpa.schemas.rows import SequenceRow
from adpa.schemas.token_topk import list_offsets

NAME = "adpa.sequences"
VERSION = "1.0"
SIDES = ("chosen", "rejected", "generated")
FINISH = ("", "stop", "length")  # "" for sequences that were not generated


@dataclass(frozen=True)
class Layout:
    vocab_size: int
    with_logp: bool = False

    @property
    def id_type(self) -> pa.DataType:
        return pa.uint16() if self.vocab_size <= 2**16 else pa.uint32()

    @classmethod
    def from_meta(cls, meta: dict) -> "Layout":
        v = int(meta["vocab_size"])
        if not 2 <= v <= 2**32:
            raise ValueError(f"vocab_size={v} is outside 2..2^32")
        return cls(v, bool(meta.get("with_logp", False)))


def arrow_schema(layout: Layout) -> pa.Schema:
    fields = [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("side", pa.string(), nullable=False),
        pa.field("input_index", pa.int64(), nullable=False),
        pa.field("token_ids", pa.list_(layout.id_type), nullable=False),
        pa.field("prompt_len", pa.int32(), nullable=False),
        pa.field("finish", pa.string(), nullable=False),
    ]
    if layout.with_logp:
        fields.append(pa.field("realized_logp", pa.list_(pa.float32()), nullable=False))
    return pa.schema(fields, metadata={"adpa.schema": NAME, "adpa.schema_version": VERSION})


@dataclass(frozen=True)
class Row(SequenceRow):
    """One sequence: a generated ADPA state (`finish`: why generation stopped) or a scored response
    (`realized_logp`: the model's log-prob of each response token, n of them)."""

    pair_id: str
    side: str  # chosen | rejected | generated
    input_index: int
    token_ids: np.ndarray  # [prompt + n] (any integer sequence when written)
    prompt_len: int
    finish: str = ""  # "" (not generated) | stop | length
    realized_logp: np.ndarray | None = None  # [n], layouts with_logp


@dataclass
class SequenceBatch:
    pair_id: list[str]
    side: list[str]
    input_index: np.ndarray
    prompt_len: np.ndarray
    finish: list[str]
    token_ids: np.ndarray
    tok_offsets: np.ndarray
    realized_logp: np.ndarray | None
    pos_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.pair_id)

    @property
    def tokens(self) -> int:
        return int(self.pos_offsets[-1])

    def row(self, i: int) -> Row:
        """Row i, its arrays views into this batch (Row.copy() to keep one beyond it)."""
        lp = self.realized_logp
        return Row(self.pair_id[i], self.side[i], int(self.input_index[i]),
                   self.token_ids[self.tok_offsets[i]:self.tok_offsets[i + 1]], int(self.prompt_len[i]), self.finish[i],
                   None if lp is None else lp[self.pos_offsets[i]:self.pos_offsets[i + 1]])


def check_row(row: Row, layout: Layout) -> int:
    ids = np.asarray(row.token_ids)
    p = int(row.prompt_len)
    if row.side not in SIDES:
        raise ValueError(f"row {row.pair_id!r}: side {row.side!r} is not one of {SIDES}")
    if row.finish not in FINISH:
        raise ValueError(f"row {row.pair_id!r}: finish {row.finish!r} is not one of {FINISH}")
    if not 0 <= p <= len(ids):
        raise ValueError(f"row {row.pair_id!r}: prompt_len {p} is outside 0..{len(ids)}")
    if len(ids) and (ids.min() < 0 or ids.max() >= layout.vocab_size):
        raise ValueError(f"row {row.pair_id!r}: token id outside the vocabulary of {layout.vocab_size}")
    if layout.with_logp:
        lp = np.asarray(row.realized_logp)
        if lp.shape != (len(ids) - p,):
            raise ValueError(f"row {row.pair_id!r}: realized_logp has shape {lp.shape}, expected ({len(ids) - p},)")
        if np.isnan(lp).any() or (lp > 1e-4).any():
            raise ValueError(f"row {row.pair_id!r}: realized_logp holds NaN or positive values")
    return len(ids) - p


def encode(rows: list[Row], layout: Layout, state=None) -> pa.RecordBatch:
    for r in rows:
        check_row(r, layout)
    lens = [len(r.token_ids) for r in rows]
    tok_offs = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    flat = np.concatenate([np.asarray(r.token_ids, np.int64) for r in rows]) if rows else np.zeros(0, np.int64)
    cols = {
        "pair_id": pa.array([str(r.pair_id) for r in rows], pa.string()),
        "side": pa.array([r.side for r in rows], pa.string()),
        "input_index": pa.array([int(r.input_index) for r in rows], pa.int64()),
        "token_ids": pa.ListArray.from_arrays(pa.array(tok_offs), pa.array(flat, layout.id_type)),
        "prompt_len": pa.array([int(r.prompt_len) for r in rows], pa.int32()),
        "finish": pa.array([r.finish for r in rows], pa.string()),
    }
    if layout.with_logp:
        n = [r.tokens for r in rows]
        offs = np.concatenate([[0], np.cumsum(n)]).astype(np.int32)
        lp = np.concatenate([np.asarray(r.realized_logp, np.float32) for r in rows]) if rows else np.zeros(0, np.float32)
        cols["realized_logp"] = pa.ListArray.from_arrays(pa.array(offs), pa.array(lp, pa.float32()))
    return pa.RecordBatch.from_pydict(cols, schema=arrow_schema(layout))


def decode(batch: pa.RecordBatch, layout: Layout, state=None) -> SequenceBatch:
    tok_offs = list_offsets(batch.column("token_ids"))
    prompt_len = batch.column("prompt_len").to_numpy()
    pos = np.concatenate([[0], np.cumsum(np.diff(tok_offs) - prompt_len)]).astype(np.int64)
    return SequenceBatch(
        pair_id=batch.column("pair_id").to_pylist(), side=batch.column("side").to_pylist(),
        input_index=batch.column("input_index").to_numpy(), prompt_len=prompt_len,
        finish=batch.column("finish").to_pylist(),
        token_ids=batch.column("token_ids").flatten().to_numpy().astype(np.int64), tok_offsets=tok_offs,
        realized_logp=batch.column("realized_logp").flatten().to_numpy() if layout.with_logp else None,
        pos_offsets=pos)


class Codec:
    name = NAME
    version = VERSION
    layout = staticmethod(Layout.from_meta)
    expected_schema = staticmethod(arrow_schema)
    encode = staticmethod(encode)
    decode = staticmethod(decode)

    @staticmethod
    def file_schema(layout: Layout, first_rows: list[Row]):
        return arrow_schema(layout), None

    @staticmethod
    def read_state(schema: pa.Schema, layout: Layout):
        return None

    @staticmethod
    def row_tokens(row: Row) -> int:
        return row.tokens

    @staticmethod
    def batch_tokens(batch: pa.RecordBatch) -> int:
        lens = np.diff(batch.column("token_ids").offsets.to_numpy())
        return int(lens.sum() - batch.column("prompt_len").to_numpy().sum())
