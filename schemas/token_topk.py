"""The token-level shard contract: one Arrow row per scored sequence (schema `adpa.token_topk`).

A row holds the whole sequence (prompt + response) and, for every response position j
(predicting ``token_ids[prompt_len + j]``), the teacher's top-k ids and log-probs, the
log-mass of the tail beyond the top-k and the realized token's log-prob. Advantage rows add
the reference model's log-probs at the same ids and its realized-token log-prob.

Encoding (chosen by measuring real SmolLM2 output; see docs/STORE.md):

* ids: each shard maps token ids to ranks by how often they occur among the top-k ids of
  its first record batch (the table ``adpa.id_order`` in the file's schema metadata:
  ``id = id_order[rank]``, little-endian uint16 or uint32). Ranks are split into byte
  planes (``topk_rank_p0`` low byte, ``topk_rank_p1``, ``topk_rank_p2`` when the vocabulary
  exceeds 65,536). Frequent ids get small ranks, so the high planes are nearly constant and
  zstd removes them.
* teacher log-probs, sorted descending, as codes ``c = round(-logp / LOGP_STEP)`` clamped to
  ``[0, 65535]``, stored as their running differences (``c_0, c_1 - c_0, ...``, all >= 0)
  in two byte planes ``topk_dq_p0`` / ``topk_dq_p1``. Absolute error <= LOGP_STEP / 2 for every
  log-prob above ``-LOGP_STEP * 65535`` (about -1245 nats); lower values clamp there.
* tail log-mass ``log(1 - sum exp(topk))`` as the same code, uint16 (``tail_q``).
* realized-token log-probs as float32 (exact to float32: they feed sequence sums).
* reference log-probs (advantage rows) as the zigzag-coded difference of their code from the
  teacher's code at the same id, in two byte planes ``ref_dq_p0`` / ``ref_dq_p1``; the
  reference's realized log-prob as float32. Both sides carry the same LOGP_STEP / 2 bound,
  so a decoded advantage is within LOGP_STEP of the original.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

NAME = "adpa.token_topk"
VERSION = "1.0"
LOGP_STEP = 0.019  # nats per code: max error 0.0095 < 0.01
CODE_MAX = 65535
SIDES = ("chosen", "rejected", "generated")


@dataclass(frozen=True)
class Layout:
    """What fixes a shard's Arrow schema: k, the vocabulary size, and whether rows carry the reference."""

    k: int
    vocab_size: int
    with_ref: bool = False

    def __post_init__(self):
        if not 1 <= self.k <= 1024:
            raise ValueError(f"k={self.k} is outside 1..1024")
        if not 2 <= self.vocab_size <= 2**32:
            raise ValueError(f"vocab_size={self.vocab_size} is outside 2..2^32")
        if self.k > self.vocab_size:
            raise ValueError(f"k={self.k} exceeds vocab_size={self.vocab_size}")

    @property
    def id_type(self) -> pa.DataType:
        return pa.uint16() if self.vocab_size <= 2**16 else pa.uint32()

    @property
    def rank_planes(self) -> int:
        return 2 if self.vocab_size <= 2**16 else (3 if self.vocab_size <= 2**24 else 4)

    @classmethod
    def from_meta(cls, meta: dict) -> "Layout":
        return cls(int(meta["k"]), int(meta["vocab_size"]), bool(meta.get("with_ref", False)))


def arrow_schema(layout: Layout) -> pa.Schema:
    """The Arrow schema of a shard with this layout (id_order metadata is added per file)."""
    k = layout.k
    planes = lambda prefix, n: [  # noqa: E731
        pa.field(f"{prefix}_p{i}", pa.list_(pa.list_(pa.uint8(), k)), nullable=False) for i in range(n)
    ]
    fields = [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("side", pa.string(), nullable=False),
        pa.field("input_index", pa.int64(), nullable=False),
        pa.field("token_ids", pa.list_(layout.id_type), nullable=False),
        pa.field("prompt_len", pa.int32(), nullable=False),
        *planes("topk_rank", layout.rank_planes),
        *planes("topk_dq", 2),
        pa.field("tail_q", pa.list_(pa.uint16()), nullable=False),
        pa.field("realized_logp", pa.list_(pa.float32()), nullable=False),
    ]
    if layout.with_ref:
        fields += [*planes("ref_dq", 2), pa.field("ref_realized_logp", pa.list_(pa.float32()), nullable=False)]
    return pa.schema(fields, metadata={"adpa.schema": NAME, "adpa.schema_version": VERSION,
                                       "adpa.logp_step": repr(LOGP_STEP)})


# ---- numeric codec -------------------------------------------------------------------------

def logp_to_code(logp: np.ndarray) -> np.ndarray:
    """Quantize log-probs (<= 0) to uint16 codes; NaN is refused, -inf clamps to CODE_MAX."""
    logp = np.asarray(logp, dtype=np.float64)
    if np.isnan(logp).any():
        raise ValueError("log-probs contain NaN")
    return np.clip(np.rint(-np.minimum(logp, 0.0) / LOGP_STEP), 0, CODE_MAX).astype(np.int32)


def code_to_logp(code: np.ndarray) -> np.ndarray:
    return code.astype(np.float32) * np.float32(-LOGP_STEP)


def tail_logmass(topk_logp: np.ndarray) -> np.ndarray:
    """log(1 - sum_k exp(topk_logp)) per position, in float64; -inf when the top-k hold all mass."""
    s = np.exp(np.asarray(topk_logp, dtype=np.float64)).sum(-1)
    with np.errstate(divide="ignore"):
        return np.log(np.clip(1.0 - s, 0.0, 1.0))


def _split_planes(x: np.ndarray, n: int) -> list[np.ndarray]:
    x = x.astype(np.uint32, copy=False)
    return [((x >> (8 * i)) & 0xFF).astype(np.uint8) for i in range(n)]


def _join_planes(planes: list[np.ndarray]) -> np.ndarray:
    """Byte planes (low first) back to little-endian uint16 (two planes) or uint32 integers, by
    interleaving the bytes: one copy per plane, no widening and shifting."""
    width = 2 if len(planes) <= 2 else 4
    out = np.zeros(planes[0].shape + (width,), dtype=np.uint8)
    for i, p in enumerate(planes):
        out[..., i] = p
    return out.view("<u2" if width == 2 else "<u4")[..., 0]


REF_DIFF_MAX = 32767  # the zigzag of a difference within +-32767 codes fits the two ref_dq planes


def _zigzag(x: np.ndarray) -> np.ndarray:
    return ((x << 1) ^ (x >> 31)).astype(np.uint32)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.int32)
    return (z >> 1) ^ -(z & 1)


def build_id_order(topk_ids: np.ndarray, vocab_size: int) -> tuple[np.ndarray, int]:
    """Ids sorted by how often they occur in `topk_ids` (ties and unseen ids by id), and how many occur."""
    counts = np.bincount(np.asarray(topk_ids, dtype=np.int64).ravel(), minlength=vocab_size)
    return np.argsort(-counts, kind="stable").astype(np.int64), int((counts > 0).sum())


# ---- rows <-> record batches ---------------------------------------------------------------

def _nested(flat: np.ndarray, k: int, offsets: np.ndarray) -> pa.Array:
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), k)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), inner)


def _list(flat: np.ndarray, offsets: np.ndarray, typ: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, typ))


def check_row(row: dict, layout: Layout) -> int:
    """Validate one row's shapes and ranges; return its number of response positions."""
    ids = np.asarray(row["token_ids"])
    p = int(row["prompt_len"])
    n = len(ids) - p
    if row["side"] not in SIDES:
        raise ValueError(f"row {row['pair_id']!r}: side {row['side']!r} is not one of {SIDES}")
    if not 0 <= p <= len(ids):
        raise ValueError(f"row {row['pair_id']!r}: prompt_len {p} is outside 0..{len(ids)}")
    if len(ids) and (ids.min() < 0 or ids.max() >= layout.vocab_size):
        raise ValueError(f"row {row['pair_id']!r}: token id outside the vocabulary of {layout.vocab_size}")
    want = {"topk_ids": (n, layout.k), "topk_logp": (n, layout.k), "realized_logp": (n,)}
    if layout.with_ref:
        want |= {"ref_topk_logp": (n, layout.k), "ref_realized_logp": (n,)}
    for name, shape in want.items():
        got = np.shape(row[name])
        if got != shape:
            raise ValueError(f"row {row['pair_id']!r}: {name} has shape {got}, expected {shape}")
    return n


def encode(rows: list[dict], layout: Layout, id_order: np.ndarray) -> pa.RecordBatch:
    """Encode rows (dicts of numpy arrays, see check_row) into one record batch.

    Each row's top-k must be sorted by descending teacher log-prob (what torch.topk returns).
    """
    k = layout.k
    lens = np.array([check_row(r, layout) for r in rows], dtype=np.int64)
    offs = np.concatenate([[0], np.cumsum(lens)])
    tok_offs = np.concatenate([[0], np.cumsum([len(r["token_ids"]) for r in rows])])
    cat = lambda name, shape: (  # noqa: E731
        np.concatenate([np.asarray(r[name]).reshape(shape) for r in rows]) if rows else np.zeros((0,) + shape[1:]))
    ids = cat("topk_ids", (-1, k)).astype(np.int64)
    logp = cat("topk_logp", (-1, k)).astype(np.float64)
    if (np.diff(logp, axis=1) > 1e-6).any():
        raise ValueError("top-k log-probs must be sorted in descending order within each position")
    rank_of = np.empty(layout.vocab_size, dtype=np.uint32)
    rank_of[id_order] = np.arange(layout.vocab_size, dtype=np.uint32)
    ranks = rank_of[ids]
    code = logp_to_code(logp)
    dq = np.diff(code, axis=1, prepend=0)  # >= 0: sorted log-probs give ascending codes
    cols = {
        "pair_id": pa.array([str(r["pair_id"]) for r in rows], pa.string()),
        "side": pa.array([r["side"] for r in rows], pa.string()),
        "input_index": pa.array([int(r["input_index"]) for r in rows], pa.int64()),
        "token_ids": _list(cat("token_ids", (-1,)).astype(np.int64), tok_offs, layout.id_type),
        "prompt_len": pa.array([int(r["prompt_len"]) for r in rows], pa.int32()),
    }
    for i, plane in enumerate(_split_planes(ranks, layout.rank_planes)):
        cols[f"topk_rank_p{i}"] = _nested(plane, k, offs)
    for i, plane in enumerate(_split_planes(dq, 2)):
        cols[f"topk_dq_p{i}"] = _nested(plane, k, offs)
    # The producer's tail (from the full distribution) is exact; recomputing from top-k is the fallback.
    tail = cat("tail_logp", (-1,)) if rows and "tail_logp" in rows[0] else tail_logmass(logp)
    cols["tail_q"] = _list(logp_to_code(tail).astype(np.uint16), offs, pa.uint16())
    cols["realized_logp"] = _list(cat("realized_logp", (-1,)).astype(np.float32), offs, pa.float32())
    if layout.with_ref:
        ref_code = logp_to_code(cat("ref_topk_logp", (-1, k)))
        diff = np.clip(ref_code - code, -REF_DIFF_MAX, REF_DIFF_MAX)
        for i, plane in enumerate(_split_planes(_zigzag(diff), 2)):
            cols[f"ref_dq_p{i}"] = _nested(plane, k, offs)
        cols["ref_realized_logp"] = _list(cat("ref_realized_logp", (-1,)).astype(np.float32), offs, pa.float32())
    return pa.RecordBatch.from_pydict(cols, schema=arrow_schema(layout))


@dataclass
class TokenBatch:
    """Decoded rows of one record batch, flattened: row i's positions are pos_offsets[i]:pos_offsets[i+1]."""

    pair_id: list[str]
    side: list[str]
    input_index: np.ndarray  # [rows] int64
    prompt_len: np.ndarray  # [rows] int32
    token_ids: np.ndarray  # [sum len] int64
    tok_offsets: np.ndarray  # [rows + 1]
    pos_offsets: np.ndarray  # [rows + 1]
    topk_ids: np.ndarray  # [positions, k] int32 (int64 for vocabularies beyond 2^31)
    topk_logp: np.ndarray  # [positions, k] float32
    tail_logp: np.ndarray  # [positions] float32
    realized_logp: np.ndarray  # [positions] float32
    ref_topk_logp: np.ndarray | None = None
    ref_realized_logp: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pair_id)

    @property
    def tokens(self) -> int:
        return int(self.pos_offsets[-1])

    def row(self, i: int) -> dict:
        t0, t1 = self.tok_offsets[i], self.tok_offsets[i + 1]
        p0, p1 = self.pos_offsets[i], self.pos_offsets[i + 1]
        out = {"pair_id": self.pair_id[i], "side": self.side[i], "input_index": int(self.input_index[i]),
               "prompt_len": int(self.prompt_len[i]), "token_ids": self.token_ids[t0:t1]}
        for name in ("topk_ids", "topk_logp", "tail_logp", "realized_logp", "ref_topk_logp", "ref_realized_logp"):
            arr = getattr(self, name)
            if arr is not None:
                out[name] = arr[p0:p1]
        return out


def list_offsets(col: pa.ListArray) -> np.ndarray:
    """Row offsets of a list column, starting at 0 even when the column is a slice."""
    o = col.offsets.to_numpy()
    return (o - o[0]).astype(np.int64)


def _flat(col: pa.ListArray, k: int | None = None) -> np.ndarray:
    vals = col.flatten()
    if k is not None:
        vals = vals.flatten()
    a = vals.to_numpy(zero_copy_only=False)
    return a.reshape(-1, k) if k is not None else a


def decode(batch: pa.RecordBatch, layout: Layout, id_order: np.ndarray) -> TokenBatch:
    """Inverse of encode, vectorized over the whole record batch."""
    k = layout.k
    ranks = _join_planes([_flat(batch.column(f"topk_rank_p{i}"), k) for i in range(layout.rank_planes)])
    code = np.cumsum(_join_planes([_flat(batch.column(f"topk_dq_p{i}"), k) for i in range(2)]), axis=1,
                     dtype=np.int32)
    tb = TokenBatch(
        pair_id=batch.column("pair_id").to_pylist(),
        side=batch.column("side").to_pylist(),
        input_index=batch.column("input_index").to_numpy(),
        prompt_len=batch.column("prompt_len").to_numpy(),
        token_ids=_flat(batch.column("token_ids")).astype(np.int64),
        tok_offsets=list_offsets(batch.column("token_ids")),
        pos_offsets=list_offsets(batch.column("realized_logp")),
        # int32 while ids fit: a narrower gather (stage two widens what it indexes with, on collation)
        topk_ids=id_order.astype(np.int32 if layout.vocab_size <= 2**31 else np.int64)[ranks],
        topk_logp=code_to_logp(code),
        tail_logp=code_to_logp(_flat(batch.column("tail_q"))),
        realized_logp=_flat(batch.column("realized_logp")),
    )
    if layout.with_ref:
        diff = _unzigzag(_join_planes([_flat(batch.column(f"ref_dq_p{i}"), k) for i in range(2)]))
        tb.ref_topk_logp = code_to_logp(code + diff)
        tb.ref_realized_logp = _flat(batch.column("ref_realized_logp"))
    return tb


def id_order_to_meta(id_order: np.ndarray, seen: int, layout: Layout) -> bytes:
    """The first `seen` entries of id_order (ids that occurred); the rest are implied in id order."""
    return id_order[:seen].astype("<u2" if layout.vocab_size <= 2**16 else "<u4").tobytes()


def id_order_from_meta(raw: bytes, layout: Layout) -> np.ndarray:
    """Rebuild the full id_order from its stored prefix, refusing anything that is not a permutation."""
    width = 2 if layout.vocab_size <= 2**16 else 4
    if len(raw) % width or len(raw) // width > layout.vocab_size:
        raise ValueError(f"id_order metadata has {len(raw)} bytes, not a prefix of {layout.vocab_size} ids")
    seen = np.frombuffer(raw, dtype="<u2" if width == 2 else "<u4").astype(np.int64)
    if len(seen) and (seen.max() >= layout.vocab_size or len(np.unique(seen)) != len(seen)):
        raise ValueError("id_order metadata repeats ids or names ids outside the vocabulary")
    rest = np.setdiff1d(np.arange(layout.vocab_size), seen, assume_unique=True)
    return np.concatenate([seen, rest])


class Codec:
    """The shard codec the artifact store drives: schema per file, rows -> batches -> rows."""

    name = NAME
    version = VERSION

    @staticmethod
    def layout(params: dict) -> Layout:
        return Layout.from_meta(params)

    @staticmethod
    def expected_schema(layout: Layout) -> pa.Schema:
        return arrow_schema(layout)

    @staticmethod
    def file_schema(layout: Layout, first_rows: list[dict]) -> tuple[pa.Schema, np.ndarray]:
        """Schema for a new shard; its id table comes from the rows of its first record batch."""
        ids = [np.asarray(r["topk_ids"]).reshape(-1) for r in first_rows]
        order, seen = build_id_order(np.concatenate(ids) if ids else np.zeros(0, np.int64), layout.vocab_size)
        schema = arrow_schema(layout)
        meta = dict(schema.metadata) | {b"adpa.id_order": id_order_to_meta(order, seen, layout)}
        return schema.with_metadata(meta), order

    @staticmethod
    def read_state(schema: pa.Schema, layout: Layout) -> np.ndarray:
        raw = (schema.metadata or {}).get(b"adpa.id_order")
        if raw is None:
            raise ValueError("schema metadata lacks adpa.id_order")
        return id_order_from_meta(raw, layout)

    encode = staticmethod(encode)
    decode = staticmethod(decode)

    @staticmethod
    def row_tokens(row: dict) -> int:
        return len(row["token_ids"]) - int(row["prompt_len"])

    @staticmethod
    def batch_tokens(batch: pa.RecordBatch) -> int:
        """Scored positions in a batch, read from offsets alone (no decoding)."""
        o = batch.column("realized_logp").offsets
        return int(o[-1].as_py() - o[0].as_py()) if len(o) else 0
