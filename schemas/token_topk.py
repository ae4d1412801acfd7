"""The token-level shard contract: one Arrow row per scored sequence (schema `adpa.token_topk` 2.x).

A row holds the whole sequence (prompt + response) and, for every response position j
(predicting ``token_ids[prompt_len + j]``), the teacher's top-k ids and log-probs, the
log-mass of the tail beyond the top-k and the realized token's log-prob. Advantage rows add
the reference model's log-probs at the same ids and its realized-token log-prob.

Encoding (chosen by measuring real SmolLM2 output on chat text; see docs/BENCHMARKS.md and
schemas/README.md). Everything per position lives in ONE list<struct> column, ``positions``,
whose struct fields are separate Arrow buffers, so each is zstd-compressed with its own
Huffman table; the top-k columns are cut into groups (column 0, 1, 2-3, 4-7, ...) because
their statistics differ with the rank in the top-k.

* ids: each shard maps token ids to ranks by how often they occur among the top-k ids of its
  first record batch (``adpa.id_order`` in the schema metadata, see `id_order_to_meta`). A rank
  is one head byte when below ESC_DIRECT; else the head names a block of 256 ranks and one byte
  of ``rank_x1`` (a list<uint8> column, in position order) the rank inside it; head 255 takes
  three bytes of ``rank_x3`` (little-endian). Frequent ids cost one Huffman code, rare ones a
  code and a byte: about the order-0 entropy of the ranks, which byte planes missed by ~4%.
* teacher log-probs, sorted descending, as codes ``c = round(-logp / LOGP_STEP)`` clamped to
  ``[0, 65535]``, stored as their running differences (``c_0, c_1 - c_0, ...``, all >= 0):
  low bytes per column group, high bytes in one field. Absolute error <= LOGP_STEP / 2 above
  ``-LOGP_STEP * 65535`` (about -1245 nats); lower values clamp there.
* tail log-mass ``log(1 - sum exp(topk))`` as the same code, uint16.
* realized-token log-probs as fine codes ``round(-logp / REALIZED_STEP)`` (LOGP_STEP / 128),
  stored as the zigzag of their difference from 128 x the teacher's code of the realized token
  when it is among the first REALIZED_COLS top-k ids, else of the last top-k code: one small
  byte for most positions.
* reference log-probs (advantage rows) as the zigzag of their code's difference from the
  teacher's code at the same id (three byte planes, low bytes per group); the reference's
  realized log-prob as a fine code, zigzag of its difference from the teacher's realized code.

Decoding is vectorized numpy plus two loops compiled with numba on first use (rank escapes with
the id lookup, and the running sums of code differences); numba is imported only then (see
_compiled).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from adpa.schemas.rows import SequenceRow

NAME = "adpa.token_topk"
VERSION = "2.0"
LOGP_STEP = 0.019  # nats per code: max error 0.0095 < 0.01
CODE_MAX = 65535
FINE = 128  # realized log-probs: LOGP_STEP / FINE nats per code (error <= 7.4e-5 nats)
REALIZED_STEP = LOGP_STEP / FINE
REALIZED_COLS = 16  # where the realized token is looked for in the top-k (3 in 4 positions find it there)
MAX_VOCAB = 1 << 24  # ranks and fine-code differences fit the 24-bit escapes and planes
SIDES = ("chosen", "rejected", "generated")
ESC_DIRECT = 192  # rank heads below this are the rank itself
ESC_ONE = ESC_DIRECT + (255 - ESC_DIRECT) * 256  # heads 192..254: a block of 256 ranks plus one byte


@dataclass(frozen=True)
class Layout:
    """What fixes a shard's Arrow schema: k, the vocabulary size, and whether rows carry the reference."""

    k: int
    vocab_size: int
    with_ref: bool = False

    def __post_init__(self):
        if not 1 <= self.k <= 1024:
            raise ValueError(f"k={self.k} is outside 1..1024")
        if not 2 <= self.vocab_size <= MAX_VOCAB:
            raise ValueError(f"vocab_size={self.vocab_size} is outside 2..2^24")
        if self.k > self.vocab_size:
            raise ValueError(f"k={self.k} exceeds vocab_size={self.vocab_size}")

    @property
    def id_type(self) -> pa.DataType:
        return pa.uint16() if self.vocab_size <= 2**16 else pa.uint32()

    @property
    def groups(self) -> list[tuple[int, int]]:
        """Top-k column groups [start, end): 0, 1, 2-3, 4-7, ... (the last one cut at k)."""
        out, a = [], 0
        while a < self.k:
            b = min(self.k, max(1, 2 * a))
            out.append((a, b))
            a = b
        return out

    @classmethod
    def from_meta(cls, meta: dict) -> "Layout":
        return cls(int(meta["k"]), int(meta["vocab_size"]), bool(meta.get("with_ref", False)))


def _position_fields(layout: Layout) -> list[pa.Field]:
    u8, k = pa.uint8(), layout.k
    grouped = lambda name: [pa.field(f"{name}_g{i}", pa.list_(u8, b - a), nullable=False)  # noqa: E731
                            for i, (a, b) in enumerate(layout.groups)]
    planes = lambda name: [pa.field(f"{name}_p{i}", u8, nullable=False) for i in range(3)]  # noqa: E731
    fields = [*grouped("rank"), *grouped("dq"), pa.field("dq_hi", pa.list_(u8, k), nullable=False),
              pa.field("tail_q", pa.uint16(), nullable=False), *planes("realized")]
    if layout.with_ref:
        fields += [*grouped("ref"), pa.field("ref_mid", pa.list_(u8, k), nullable=False),
                   pa.field("ref_hi", pa.list_(u8, k), nullable=False), *planes("ref_realized")]
    return fields


def arrow_schema(layout: Layout) -> pa.Schema:
    """The Arrow schema of a shard with this layout (id_order metadata is added per file)."""
    positions = pa.struct(_position_fields(layout))
    fields = [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("side", pa.string(), nullable=False),
        pa.field("input_index", pa.int64(), nullable=False),
        pa.field("token_ids", pa.list_(layout.id_type), nullable=False),
        pa.field("prompt_len", pa.int32(), nullable=False),
        pa.field("positions", pa.list_(pa.field("item", positions, nullable=False)), nullable=False),
        pa.field("rank_x1", pa.list_(pa.uint8()), nullable=False),
        pa.field("rank_x3", pa.list_(pa.uint8()), nullable=False),
    ]
    return pa.schema(fields, metadata={"adpa.schema": NAME, "adpa.schema_version": VERSION,
                                       "adpa.logp_step": repr(LOGP_STEP), "adpa.realized_step": repr(REALIZED_STEP)})


# ---- numeric codec -------------------------------------------------------------------------

def logp_to_code(logp: np.ndarray, step: float = LOGP_STEP, top: int = CODE_MAX) -> np.ndarray:
    """Quantize log-probs (<= 0) to codes in [0, top]; NaN is refused, -inf clamps to `top`."""
    logp = np.asarray(logp, dtype=np.float64)
    if np.isnan(logp).any():
        raise ValueError("log-probs contain NaN")
    return np.clip(np.rint(-np.minimum(logp, 0.0) / step), 0, top).astype(np.int32)


def code_to_logp(code: np.ndarray) -> np.ndarray:
    return code.astype(np.float32) * np.float32(-LOGP_STEP)


def tail_logmass(topk_logp: np.ndarray) -> np.ndarray:
    """log(1 - sum_k exp(topk_logp)) per position, in float64; -inf when the top-k hold all mass."""
    s = np.exp(np.asarray(topk_logp, dtype=np.float64)).sum(-1)
    with np.errstate(divide="ignore"):
        return np.log(np.clip(1.0 - s, 0.0, 1.0))


def _zigzag(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    return ((x << 1) ^ (x >> 63)).astype(np.int64)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.int32)
    return (z >> 1) ^ -(z & 1)


def _planes(x: np.ndarray, n: int) -> list[np.ndarray]:
    """Byte planes of non-negative integers, low byte first."""
    return [((x >> (8 * i)) & 0xFF).astype(np.uint8) for i in range(n)]


def _join(planes: list[np.ndarray]) -> np.ndarray:
    """Byte planes (low first, at most 4) back to int32, by interleaving bytes: no widening and shifting."""
    out = np.zeros(planes[0].shape + (4,), dtype=np.uint8)
    for i, p in enumerate(planes):
        out[..., i] = p
    return out.view("<i4")[..., 0]


def escape_encode(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-negative ints below ESC_ONE + 2^24 -> (head bytes, one extension byte per head in
    [ESC_DIRECT, 255), three little-endian extension bytes per head 255), extensions in order."""
    v = np.asarray(v, dtype=np.int64)
    if v.size and (v.min() < 0 or v.max() >= ESC_ONE + (1 << 24)):
        raise ValueError("value outside the escape code's range")
    one = (v >= ESC_DIRECT) & (v < ESC_ONE)
    three = v >= ESC_ONE
    head = np.where(one, ESC_DIRECT + ((v - ESC_DIRECT) >> 8), np.where(three, 255, v)).astype(np.uint8)
    x1 = ((v[one] - ESC_DIRECT) & 0xFF).astype(np.uint8)
    x3 = np.stack(_planes(v[three] - ESC_ONE, 3), axis=-1).reshape(-1) if three.any() else np.zeros(0, np.uint8)
    return head, x1, x3


def _ids_from_heads(head, x1, x3, id_order, out):  # compiled by _compiled; tests/test_codec.py decodes by hand
    """out[i] = id_order[rank i] for escape-coded ranks (see escape_encode), in one pass. Returns 0,
    or -1 when the extension streams do not match the heads, -2 for a rank outside id_order: a
    damaged shard is refused, never read out of bounds. Heads below 255 take no branch (about half
    of them carry an extension byte, in no predictable order): the one-byte extension is read at a
    clamped index whether used or not, and the count moves by 0 or 1."""
    j1 = 0
    j3 = 0
    n1 = x1.size
    for i in range(head.size):
        h = np.int64(head[i])
        if h == 255:  # rare: ranks beyond ESC_ONE
            if j3 + 3 > x3.size:
                return -1
            r = ESC_ONE + (np.int64(x3[j3]) | (np.int64(x3[j3 + 1]) << 8) | (np.int64(x3[j3 + 2]) << 16))
            j3 += 3
        else:
            esc = np.int64(h >= ESC_DIRECT)
            e = np.int64(x1[min(j1, n1 - 1)]) if n1 else np.int64(0)
            r = h + esc * (((h - ESC_DIRECT) << 8) + ESC_DIRECT + e - h)
            j1 += esc
        if r >= id_order.size:
            return -2
        out[i] = id_order[r]
    return 0 if (j1 == n1 and j3 == x3.size) else -1


@functools.cache
def _compiled(fn):
    """`fn` compiled by numba, on first use: numba is imported only by processes that decode (a vLLM
    engine's workers fail to start in a process that imported it first)."""
    import numba
    return numba.njit(cache=True, nogil=True)(fn)


def ids_from_heads(head: np.ndarray, x1: np.ndarray, x3: np.ndarray, id_order: np.ndarray) -> np.ndarray:
    """Token ids (int32, head's shape) from escape-coded ranks and the shard's id order."""
    out = np.empty(head.shape, np.int32)
    status = _compiled(_ids_from_heads)(head.reshape(-1), x1, x3, id_order, out.reshape(-1))
    if status == -1:
        raise ValueError(f"rank extensions hold {len(x1)} + {len(x3)} bytes, not what the rank heads need")
    if status == -2:
        raise ValueError(f"a rank is outside the vocabulary of {len(id_order)}")
    return out


def _codes(lo, hi, out):  # compiled by _compiled; tested against numpy cumsum
    """out[i, j] = sum over j' <= j of lo[i, j'] + 256 hi[i, j']: the running sum of the code differences."""
    n, k = lo.shape
    for i in range(n):
        c = np.int32(0)
        for j in range(k):
            c += np.int32(lo[i, j]) + (np.int32(hi[i, j]) << 8)
            out[i, j] = c


def build_id_order(topk_ids: np.ndarray, vocab_size: int) -> tuple[np.ndarray, int]:
    """Ids by descending count class in `topk_ids`, by id within a class (unseen ids last, by id),
    and how many occur. Classes are exact counts up to 16, then quarter octaves: close enough to
    frequency order for the rank code, and a table of sorted runs that costs about half as much."""
    counts = np.bincount(np.asarray(topk_ids, dtype=np.int64).ravel(), minlength=vocab_size)
    cls = _count_class(counts)
    order = np.lexsort((np.arange(vocab_size), -cls))
    return order.astype(np.int64), int((counts > 0).sum())


def _count_class(counts: np.ndarray) -> np.ndarray:
    c = np.maximum(counts, 1).astype(np.float64)
    return np.where(counts <= 16, counts, 16 + np.floor(4 * np.log2(c / 16)) + 1).astype(np.int64)


_TABLE_MAGIC = b"ADPAIDT2"


def id_order_to_meta(id_order: np.ndarray, seen: int, layout: Layout) -> bytes:
    """The first `seen` entries of id_order, as runs of ascending ids (one run per count class):
    the run lengths, then the ids' differences from the previous id of their run (the first of a
    run: the id itself) in byte planes, zstd-compressed. The rest of the order is implied: unseen
    ids in id order."""
    ids = np.asarray(id_order[:seen], dtype=np.int64)
    start = np.r_[True, ids[1:] <= ids[:-1]] if seen else np.zeros(0, bool)  # a run restarts where ids descend
    runs = np.diff(np.r_[np.flatnonzero(start), seen]).astype("<u4")
    gaps = np.where(start, ids, ids - np.r_[0, ids[:-1]])
    payload = runs.tobytes() + np.stack(_planes(gaps, 3)).tobytes()
    packed = pa.Codec("zstd", 3).compress(payload, asbytes=True)
    return _TABLE_MAGIC + struct.pack("<III", seen, len(runs), len(payload)) + packed


def id_order_from_meta(raw: bytes, layout: Layout) -> np.ndarray:
    """Rebuild the full id_order from its stored prefix, refusing anything that is not a permutation."""
    head = len(_TABLE_MAGIC) + 12
    if len(raw) < head or raw[:len(_TABLE_MAGIC)] != _TABLE_MAGIC:
        raise ValueError("id_order metadata is not an adpa id table")
    seen, nruns, size = struct.unpack("<III", raw[len(_TABLE_MAGIC):head])
    if seen > layout.vocab_size or nruns > seen or size != 4 * nruns + 3 * seen:
        raise ValueError(f"id_order metadata claims {seen} ids in {nruns} runs, not a prefix of {layout.vocab_size} ids")
    try:
        payload = pa.Codec("zstd").decompress(raw[head:], size, asbytes=True)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise ValueError(f"id_order metadata does not decompress ({e})") from None
    runs = np.frombuffer(payload, "<u4", nruns).astype(np.int64)
    if runs.sum() != seen or (runs == 0).any():
        raise ValueError("id_order metadata's runs do not add up to its ids")
    planes = np.frombuffer(payload, np.uint8, offset=4 * nruns).reshape(3, seen)
    c = np.cumsum(_join(list(planes)).astype(np.int64))
    first = np.cumsum(runs) - runs
    ids = c - np.repeat(np.r_[0, c[first[1:] - 1]], runs) if seen else c  # each run restarts at its first id
    if seen and (ids.min() < 0 or ids.max() >= layout.vocab_size or len(np.unique(ids)) != seen):
        raise ValueError("id_order metadata repeats ids or names ids outside the vocabulary")
    rest = np.setdiff1d(np.arange(layout.vocab_size), ids, assume_unique=True)
    return np.concatenate([ids, rest]).astype(np.int32)


# ---- rows <-> record batches ---------------------------------------------------------------

@dataclass(frozen=True)
class Row(SequenceRow):
    """One scored sequence: what a producer hands the writer and what a reader yields. Per response position j
    (predicting ``token_ids[prompt_len + j]``, n of them): the teacher's top-k ids and log-probs (descending),
    the tail's log-mass and the realized token's log-prob; advantage rows add the reference's log-probs at
    the same ids and at the realized token."""

    pair_id: str
    side: str  # chosen | rejected | generated (an advantage row's state: where it came from)
    input_index: int
    token_ids: np.ndarray  # [prompt + n] (any integer sequence when written)
    prompt_len: int
    topk_ids: np.ndarray  # [n, k]
    topk_logp: np.ndarray  # [n, k]
    realized_logp: np.ndarray  # [n]
    tail_logp: np.ndarray | None = None  # [n]; None when written: computed from the top-k
    ref_topk_logp: np.ndarray | None = None  # [n, k], advantage rows
    ref_realized_logp: np.ndarray | None = None  # [n], advantage rows


def check_row(row: Row, layout: Layout) -> int:
    """Validate one row's shapes and ranges; return its number of response positions."""
    ids = np.asarray(row.token_ids)
    p = int(row.prompt_len)
    n = len(ids) - p
    if row.side not in SIDES:
        raise ValueError(f"row {row.pair_id!r}: side {row.side!r} is not one of {SIDES}")
    if not 0 <= p <= len(ids):
        raise ValueError(f"row {row.pair_id!r}: prompt_len {p} is outside 0..{len(ids)}")
    if len(ids) and (ids.min() < 0 or ids.max() >= layout.vocab_size):
        raise ValueError(f"row {row.pair_id!r}: token id outside the vocabulary of {layout.vocab_size}")
    want = {"topk_ids": (n, layout.k), "topk_logp": (n, layout.k), "realized_logp": (n,)}
    if layout.with_ref:
        want |= {"ref_topk_logp": (n, layout.k), "ref_realized_logp": (n,)}
    for name, shape in want.items():
        got = np.shape(getattr(row, name))
        if got != shape:
            raise ValueError(f"row {row.pair_id!r}: {name} has shape {got}, expected {shape}")
    return n


def _realized_positions(token_ids: np.ndarray, tok_offsets: np.ndarray, prompt_len: np.ndarray,
                        pos_offsets: np.ndarray) -> np.ndarray:
    """Index into the flat token ids of the token each response position predicts."""
    lens = np.diff(pos_offsets)
    start = tok_offsets[:-1] + prompt_len.astype(np.int64) - pos_offsets[:-1]
    return np.repeat(start, lens) + np.arange(int(pos_offsets[-1]))


def _realized_prediction(topk_ids: np.ndarray, code: np.ndarray, realized: np.ndarray) -> np.ndarray:
    """FINE x the teacher's code of the realized token where it is among the first REALIZED_COLS
    ids of the top-k, else of the last top-k id (the realized log-prob is at or below it)."""
    rows = np.arange(len(realized))
    col = (topk_ids[:, :REALIZED_COLS] == realized[:, None]).argmax(1)
    col[topk_ids[rows, col] != realized] = code.shape[1] - 1
    return FINE * code[rows, col].astype(np.int64)


def _fsl(flat: np.ndarray, width: int) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(flat).ravel()), width)


def _list(flat: np.ndarray, offsets: np.ndarray, typ: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, typ))


def encode(rows: list[Row], layout: Layout, id_order: np.ndarray) -> pa.RecordBatch:
    """Encode rows (see check_row) into one record batch.

    Each row's top-k must be sorted by descending teacher log-prob (what torch.topk returns).
    """
    k, groups = layout.k, layout.groups
    lens = np.array([check_row(r, layout) for r in rows], dtype=np.int64)
    offs = np.concatenate([[0], np.cumsum(lens)])
    tok_offs = np.concatenate([[0], np.cumsum([len(r.token_ids) for r in rows])]).astype(np.int64)
    cat = lambda name, shape: (  # noqa: E731
        np.concatenate([np.asarray(getattr(r, name)).reshape(shape) for r in rows]) if rows else np.zeros((0,) + shape[1:]))
    token_ids = cat("token_ids", (-1,)).astype(np.int64)
    prompt_len = np.array([int(r.prompt_len) for r in rows], dtype=np.int64)
    ids = cat("topk_ids", (-1, k)).astype(np.int64)
    logp = cat("topk_logp", (-1, k)).astype(np.float64)
    if (np.diff(logp, axis=1) > 1e-6).any():
        raise ValueError("top-k log-probs must be sorted in descending order within each position")
    rank_of = np.empty(layout.vocab_size, dtype=np.int64)
    rank_of[id_order] = np.arange(layout.vocab_size)
    head, x1, x3 = escape_encode(rank_of[ids])
    code = logp_to_code(logp)
    dq = np.diff(code, axis=1, prepend=0)  # >= 0: sorted log-probs give ascending codes
    dq_lo, dq_hi = _planes(dq, 2)
    fields = {}

    def grouped(name, m):  # a [positions, k] byte matrix as one field per column group
        fields.update({f"{name}_g{i}": _fsl(m[:, a:b], b - a) for i, (a, b) in enumerate(groups)})

    def planes(name, x):  # a per-position integer as three byte-plane fields
        fields.update({f"{name}_p{i}": pa.array(p) for i, p in enumerate(_planes(x, 3))})

    grouped("rank", head)
    grouped("dq", dq_lo)
    fields["dq_hi"] = _fsl(dq_hi, k)
    # The producer's tail (from the full distribution) is exact; recomputing from top-k is the fallback.
    tail = cat("tail_logp", (-1,)) if rows and rows[0].tail_logp is not None else tail_logmass(logp)
    fields["tail_q"] = pa.array(logp_to_code(tail).astype(np.uint16))
    realized_tok = token_ids[_realized_positions(token_ids, tok_offs, prompt_len, offs)]
    fine = lambda name: logp_to_code(cat(name, (-1,)), REALIZED_STEP, FINE * CODE_MAX).astype(np.int64)  # noqa: E731
    real = fine("realized_logp")
    planes("realized", _zigzag(real - _realized_prediction(ids, code, realized_tok)))
    if layout.with_ref:
        lo, mid, hi = _planes(_zigzag(logp_to_code(cat("ref_topk_logp", (-1, k))) - code), 3)
        grouped("ref", lo)
        fields["ref_mid"], fields["ref_hi"] = _fsl(mid, k), _fsl(hi, k)
        planes("ref_realized", _zigzag(fine("ref_realized_logp") - real))
    schema = arrow_schema(layout)
    pos_type = schema.field("positions").type.value_type
    positions = pa.StructArray.from_arrays([fields[f.name] for f in pos_type], fields=list(pos_type))
    # a rank's extension bytes belong to the row of its position
    esc1 = ((head >= ESC_DIRECT) & (head < 255)).sum(1)
    esc3 = (head == 255).sum(1)
    x1_offs = np.concatenate([[0], np.cumsum(esc1)])[offs]
    x3_offs = 3 * np.concatenate([[0], np.cumsum(esc3)])[offs]
    cols = {
        "pair_id": pa.array([str(r.pair_id) for r in rows], pa.string()),
        "side": pa.array([r.side for r in rows], pa.string()),
        "input_index": pa.array([int(r.input_index) for r in rows], pa.int64()),
        "token_ids": _list(token_ids, tok_offs, layout.id_type),
        "prompt_len": pa.array(prompt_len, pa.int32()),
        "positions": pa.ListArray.from_arrays(pa.array(offs, pa.int32()), positions,
                                              type=schema.field("positions").type),
        "rank_x1": _list(x1, x1_offs, pa.uint8()),
        "rank_x3": _list(x3, x3_offs, pa.uint8()),
    }
    return pa.RecordBatch.from_pydict(cols, schema=schema)


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
    topk_ids: np.ndarray  # [positions, k] int32
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

    def row(self, i: int) -> Row:
        """Row i, its arrays views into this batch (Row.copy() to keep one beyond it)."""
        p = slice(self.pos_offsets[i], self.pos_offsets[i + 1])
        ref = self.ref_topk_logp is not None
        return Row(self.pair_id[i], self.side[i], int(self.input_index[i]),
                   self.token_ids[self.tok_offsets[i]:self.tok_offsets[i + 1]], int(self.prompt_len[i]),
                   self.topk_ids[p], self.topk_logp[p], self.realized_logp[p], tail_logp=self.tail_logp[p],
                   ref_topk_logp=self.ref_topk_logp[p] if ref else None,
                   ref_realized_logp=self.ref_realized_logp[p] if ref else None)


def list_offsets(col: pa.ListArray) -> np.ndarray:
    """Row offsets of a list column, starting at 0 even when the column is a slice."""
    o = col.offsets.to_numpy()
    return (o - o[0]).astype(np.int64)


def _flat(col: pa.ListArray) -> np.ndarray:
    return col.flatten().to_numpy(zero_copy_only=False)


def decode(batch: pa.RecordBatch, layout: Layout, id_order: np.ndarray) -> TokenBatch:
    """Inverse of encode, vectorized over the whole record batch (one pass per buffer: the
    decode of stage two's loader, measured in make bench-teacher-cache)."""
    k = layout.k
    positions = batch.column("positions")
    f = dict(zip((fld.name for fld in positions.type.value_type), positions.flatten().flatten()))
    n = len(f["tail_q"])
    mat = lambda name: f[name].flatten().to_numpy().reshape(n, f[name].type.list_size)  # noqa: E731
    planes = lambda name: _unzigzag(_join([f[f"{name}_p{i}"].to_numpy() for i in range(3)]))  # noqa: E731

    grouped = lambda name: np.concatenate([mat(f"{name}_g{i}") for i in range(len(layout.groups))], 1)  # noqa: E731
    topk_ids = ids_from_heads(grouped("rank"), _flat(batch.column("rank_x1")), _flat(batch.column("rank_x3")),
                              id_order)
    code = np.empty((n, k), np.int32)
    _compiled(_codes)(grouped("dq"), mat("dq_hi"), code)
    token_ids = _flat(batch.column("token_ids")).astype(np.int64)
    tok_offsets = list_offsets(batch.column("token_ids"))
    prompt_len = batch.column("prompt_len").to_numpy()
    pos_offsets = list_offsets(positions)
    realized_tok = token_ids[_realized_positions(token_ids, tok_offsets, prompt_len, pos_offsets)]
    real = _realized_prediction(topk_ids, code, realized_tok) + planes("realized")
    tb = TokenBatch(
        pair_id=batch.column("pair_id").to_pylist(),
        side=batch.column("side").to_pylist(),
        input_index=batch.column("input_index").to_numpy(),
        prompt_len=prompt_len,
        token_ids=token_ids,
        tok_offsets=tok_offsets,
        pos_offsets=pos_offsets,
        topk_ids=topk_ids,
        topk_logp=code_to_logp(code),
        tail_logp=code_to_logp(f["tail_q"].to_numpy()),
        realized_logp=(real * -REALIZED_STEP).astype(np.float32),
    )
    if layout.with_ref:
        diff = _unzigzag(_join([grouped("ref"), mat("ref_mid"), mat("ref_hi")]))
        tb.ref_topk_logp = code_to_logp(code + diff)
        ref_real = real + planes("ref_realized")
        tb.ref_realized_logp = (ref_real * -REALIZED_STEP).astype(np.float32)
    return tb


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
    def file_schema(layout: Layout, first_rows: list[Row]) -> tuple[pa.Schema, np.ndarray]:
        """Schema for a new shard; its id table comes from the rows of its first record batch."""
        ids = [np.asarray(r.topk_ids).reshape(-1) for r in first_rows]
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
    def row_tokens(row: Row) -> int:
        return row.tokens

    @staticmethod
    def batch_tokens(batch: pa.RecordBatch) -> int:
        """Scored positions in a batch, read from offsets alone (no decoding)."""
        o = batch.column("positions").offsets
        return int(o[-1].as_py() - o[0].as_py()) if len(o) else 0
