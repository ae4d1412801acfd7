"""The token shard codec against the original values: exact ids, bounded log-prob error; its compiled
decode kernels against the plain numpy computation of the format (written here, independently)."""

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from adpa.schemas import token_topk as tt
from synthetic import make_row


def roundtrip(rows, layout):
    schema, order = tt.Codec.file_schema(layout, rows)
    batch = tt.encode(rows, layout, order)
    state = tt.Codec.read_state(schema, layout)
    return tt.decode(batch, layout, state)


@pytest.mark.parametrize("with_ref", [False, True])
def test_roundtrip_matches_originals(with_ref):
    layout = tt.Layout(8, 5000, with_ref)
    rows = [make_row(1, i, side, with_ref=with_ref) for i in range(20) for side in ("chosen", "rejected")]
    tb = roundtrip(rows, layout)
    assert len(tb) == len(rows)
    for i, r in enumerate(rows):
        got = tb.row(i)
        assert got.pair_id == r.pair_id and got.side == r.side and got.input_index == r.input_index
        np.testing.assert_array_equal(got.token_ids, r.token_ids)
        np.testing.assert_array_equal(got.topk_ids, r.topk_ids)
        assert np.abs(got.topk_logp - r.topk_logp).max() <= tt.LOGP_STEP / 2 + 1e-6
        assert np.abs(got.tail_logp - r.tail_logp).max() <= tt.LOGP_STEP / 2 + 1e-6
        assert np.abs(got.realized_logp - r.realized_logp).max() <= tt.REALIZED_STEP / 2 + 1e-6
        if with_ref:
            assert np.abs(got.ref_topk_logp - r.ref_topk_logp).max() <= tt.LOGP_STEP / 2 + 1e-6
            adv, adv0 = got.topk_logp - got.ref_topk_logp, r.topk_logp - r.ref_topk_logp
            assert np.abs(adv - adv0).max() <= tt.LOGP_STEP + 1e-6
            assert np.abs(got.ref_realized_logp - r.ref_realized_logp).max() <= tt.REALIZED_STEP / 2 + 1e-6


def test_error_bound_holds_over_the_whole_range():
    """Every value down to about -1245 nats decodes within LOGP_STEP / 2; lower values clamp."""
    layout = tt.Layout(4, 100)
    vals = -np.sort(np.random.default_rng(0).uniform(0, 1200, (5000, 4)), axis=1)
    rows = [tt.Row(pair_id="a", side="chosen", input_index=0, token_ids=np.zeros(5001, int), prompt_len=1,
             topk_ids=np.tile(np.arange(4), (5000, 1)), topk_logp=vals, realized_logp=vals[:, 0])]
    tb = roundtrip(rows, layout)
    assert np.abs(tb.topk_logp - vals).max() <= tt.LOGP_STEP / 2 + 1e-4
    assert tt.code_to_logp(tt.logp_to_code(np.array([-np.inf])))[0] == pytest.approx(-tt.LOGP_STEP * tt.CODE_MAX)


def test_a_reference_far_from_the_teacher_decodes_within_the_bound_or_at_the_clamp():
    """A reference log-prob of -inf, or hundreds of nats below the teacher's, at a teacher top-k id:
    its code difference spans the whole code range and must never wrap around (1.x clamped it)."""
    layout = tt.Layout(2, 100, with_ref=True)
    teacher = np.array([[-0.5, -2.0], [-1.0, -3.0]])
    ref = np.array([[-np.inf, -2.5], [-1.5, -1200.0]])
    rows = [tt.Row(pair_id="a", side="generated", input_index=0, token_ids=np.array([0, 1, 7]), prompt_len=1,
             topk_ids=np.array([[1, 2], [3, 4]]), topk_logp=teacher, realized_logp=np.array([-0.5, -30.0]),
             ref_topk_logp=ref, ref_realized_logp=np.array([-np.inf, -2.0]))]
    tb = roundtrip(rows, layout)
    assert tb.ref_topk_logp[0, 0] == pytest.approx(-tt.LOGP_STEP * tt.CODE_MAX)  # -inf: the lowest code
    assert np.abs(tb.ref_topk_logp[[0, 1, 1], [1, 0, 1]] - ref[[0, 1, 1], [1, 0, 1]]).max() <= tt.LOGP_STEP / 2 + 1e-4
    assert tb.ref_realized_logp[0] == pytest.approx(-tt.REALIZED_STEP * tt.FINE * tt.CODE_MAX)
    assert abs(tb.ref_realized_logp[1] + 2.0) <= tt.REALIZED_STEP / 2 + 1e-6
    assert abs(tb.realized_logp[1] + 30.0) <= tt.REALIZED_STEP / 2 + 1e-5  # realized token 7: not in the top-k


def test_large_vocabulary_uses_uint32_ids_and_three_byte_rank_escapes():
    layout = tt.Layout(4, 151_936)
    assert layout.id_type == pa.uint32()
    n = 6
    ids = np.stack([np.random.default_rng(i).choice(151_936, 4, replace=False) for i in range(n)])
    ids[0, 0] = 151_935
    logp = np.tile([-0.1, -2.0, -3.0, -9.0], (n, 1))
    rows = [tt.Row(pair_id="x", side="generated", input_index=3, token_ids=np.array([151_935] * (n + 2)),
             prompt_len=2, topk_ids=ids, topk_logp=logp, realized_logp=np.zeros(n))]
    schema, order = tt.Codec.file_schema(layout, rows[:0])  # an empty id table: every rank is the id itself
    batch = tt.encode(rows, layout, order)
    assert len(batch.column("rank_x3").flatten()) > 0  # ranks past ESC_ONE took the three-byte escape
    tb = tt.decode(batch, layout, tt.Codec.read_state(schema, layout))
    np.testing.assert_array_equal(tb.topk_ids, ids)
    np.testing.assert_array_equal(tb.token_ids, rows[0].token_ids)
    with pytest.raises(ValueError, match="2\\^24"):
        tt.Layout(4, (1 << 24) + 1)


def plain_ranks(head, x1, x3):
    """The rank escape code as the format defines it, element by element (schemas/README.md)."""
    out, i1, i3 = [], 0, 0
    for h in head.ravel().tolist():
        if h < tt.ESC_DIRECT:
            out.append(h)
        elif h < 255:
            out.append(tt.ESC_DIRECT + (h - tt.ESC_DIRECT) * 256 + int(x1[i1]))
            i1 += 1
        else:
            out.append(tt.ESC_ONE + int(x3[i3]) + 256 * int(x3[i3 + 1]) + 65536 * int(x3[i3 + 2]))
            i3 += 3
    assert (i1, i3) == (len(x1), len(x3))
    return np.array(out).reshape(head.shape)


def test_the_compiled_decode_matches_the_plain_computation():
    rng = np.random.default_rng(3)
    ranks = np.concatenate([rng.integers(0, tt.ESC_DIRECT, 300), rng.integers(tt.ESC_DIRECT, tt.ESC_ONE, 300),
                            rng.integers(tt.ESC_ONE, tt.ESC_ONE + (1 << 24), 50)])
    rng.shuffle(ranks)
    head, x1, x3 = tt.escape_encode(ranks.reshape(-1, 10))
    np.testing.assert_array_equal(plain_ranks(head, x1, x3), ranks.reshape(-1, 10))
    order = rng.permutation(tt.ESC_ONE + (1 << 24)).astype(np.int32)
    np.testing.assert_array_equal(tt.ids_from_heads(head, x1, x3, order), order[ranks.reshape(-1, 10)])
    lo, hi = rng.integers(0, 256, (40, 7)).astype(np.uint8), rng.integers(0, 3, (40, 7)).astype(np.uint8)
    code = np.empty((40, 7), np.int32)
    tt._compiled(tt._codes)(lo, hi, code)
    np.testing.assert_array_equal(code, np.cumsum(lo.astype(np.int64) + 256 * hi.astype(np.int64), axis=1))


@pytest.mark.parametrize("cut", ["x1", "x3", "rank"])
def test_damaged_rank_streams_are_refused_not_read_out_of_bounds(cut):
    ranks = np.array([[3, 500, tt.ESC_ONE + 7, 40]])
    head, x1, x3 = tt.escape_encode(ranks)
    order = np.arange(tt.ESC_ONE + 8, dtype=np.int32)
    if cut == "x1":
        x1 = x1[:-1]
    elif cut == "x3":
        x3 = x3[:-1]
    else:
        order = order[:tt.ESC_ONE]
    with pytest.raises(ValueError, match="rank"):
        tt.ids_from_heads(head, x1, x3, order)


def test_empty_response_and_k1():
    layout = tt.Layout(1, 10)
    rows = [tt.Row(pair_id="e", side="chosen", input_index=0, token_ids=np.array([1, 2]), prompt_len=2,
             topk_ids=np.zeros((0, 1), int), topk_logp=np.zeros((0, 1)), realized_logp=np.zeros(0)),
            tt.Row(pair_id="f", side="chosen", input_index=1, token_ids=np.array([1, 2, 3]), prompt_len=2,
             topk_ids=np.array([[3]]), topk_logp=np.array([[-0.5]]), realized_logp=np.array([-0.5]))]
    tb = roundtrip(rows, layout)
    assert tb.row(0).topk_ids.shape == (0, 1) and tb.row(1).topk_ids.tolist() == [[3]]
    for with_ref in (False, True):  # a record batch without a single scored position
        empty = dataclasses.replace(rows[0], ref_topk_logp=np.zeros((0, 1)), ref_realized_logp=np.zeros(0))
        tb = roundtrip([empty], tt.Layout(1, 10, with_ref))
        assert tb.tokens == 0 and tb.topk_ids.shape == (0, 1) and tb.row(0).token_ids.tolist() == [1, 2]


@pytest.mark.parametrize("field,value,message", [
    ("topk_logp", np.array([[-2.0, -1.0]] * 3), "descending"),
    ("topk_logp", np.array([[-1.0, np.nan]] * 3), "NaN"),
    ("topk_ids", np.zeros((2, 2), int), "shape"),
    ("side", "preferred", "side"),
    ("token_ids", np.array([1, 2, 10**6, 4, 5]), "vocabulary"),
    ("prompt_len", 9, "prompt_len"),
])
def test_bad_rows_are_refused_with_a_reason(field, value, message):
    layout = tt.Layout(2, 100)
    row = tt.Row(pair_id="bad", side="chosen", input_index=0, token_ids=np.arange(5), prompt_len=2,
           topk_ids=np.array([[1, 2]] * 3), topk_logp=np.array([[-0.5, -1.0]] * 3), realized_logp=np.zeros(3))
    row = dataclasses.replace(row, **{field: value})
    with pytest.raises(ValueError, match=message):
        tt.encode([row], layout, np.arange(100))


def test_id_table_round_trips_and_must_be_a_permutation():
    layout = tt.Layout(2, 10)
    order, seen = tt.build_id_order(np.array([7, 7, 7, 3, 3, 9, 1]), 10)
    assert order[:seen].tolist() == [7, 3, 1, 9]  # by count, ties by id
    raw = tt.id_order_to_meta(order, seen, layout)
    assert tt.id_order_from_meta(raw, layout).tolist() == [7, 3, 1, 9, 0, 2, 4, 5, 6, 8]
    bad = lambda ids: tt.id_order_to_meta(np.array(ids), len(ids), layout)  # noqa: E731
    with pytest.raises(ValueError, match="repeats"):
        tt.id_order_from_meta(bad([1, 1]), layout)
    with pytest.raises(ValueError, match="outside"):
        tt.id_order_from_meta(bad([12]), layout)
    with pytest.raises(ValueError, match="not an adpa id table"):
        tt.id_order_from_meta(b"\x01", layout)
    with pytest.raises(ValueError, match="decompress|runs|claims"):
        tt.id_order_from_meta(raw[:-3], layout)
