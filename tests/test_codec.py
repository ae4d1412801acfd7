"""The token shard codec against the original values: exact ids, bounded log-prob error."""

import numpy as np
import pyarrow as pa
import pytest

from schemas import token_topk as tt
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
        assert got["pair_id"] == r["pair_id"] and got["side"] == r["side"] and got["input_index"] == r["input_index"]
        np.testing.assert_array_equal(got["token_ids"], r["token_ids"])
        np.testing.assert_array_equal(got["topk_ids"], r["topk_ids"])
        assert np.abs(got["topk_logp"] - r["topk_logp"]).max() <= tt.LOGP_STEP / 2 + 1e-6
        assert np.abs(got["tail_logp"] - r["tail_logp"]).max() <= tt.LOGP_STEP / 2 + 1e-6
        np.testing.assert_array_equal(got["realized_logp"], r["realized_logp"].astype(np.float32))
        if with_ref:
            assert np.abs(got["ref_topk_logp"] - r["ref_topk_logp"]).max() <= tt.LOGP_STEP / 2 + 1e-6
            adv, adv0 = got["topk_logp"] - got["ref_topk_logp"], r["topk_logp"] - r["ref_topk_logp"]
            assert np.abs(adv - adv0).max() <= tt.LOGP_STEP + 1e-6
            np.testing.assert_array_equal(got["ref_realized_logp"], r["ref_realized_logp"].astype(np.float32))


def test_error_bound_holds_over_the_whole_range():
    """Every value down to about -1245 nats decodes within LOGP_STEP / 2; lower values clamp."""
    layout = tt.Layout(4, 100)
    vals = -np.sort(np.random.default_rng(0).uniform(0, 1200, (5000, 4)), axis=1)
    rows = [{"pair_id": "a", "side": "chosen", "input_index": 0, "token_ids": np.zeros(5001, int), "prompt_len": 1,
             "topk_ids": np.tile(np.arange(4), (5000, 1)), "topk_logp": vals, "realized_logp": vals[:, 0]}]
    tb = roundtrip(rows, layout)
    assert np.abs(tb.topk_logp - vals).max() <= tt.LOGP_STEP / 2 + 1e-4
    assert tt.code_to_logp(tt.logp_to_code(np.array([-np.inf])))[0] == pytest.approx(-tt.LOGP_STEP * tt.CODE_MAX)


def test_a_reference_far_from_the_teacher_is_clamped_never_wrapped():
    """A reference log-prob of -inf (or > 622 nats from the teacher's) at a teacher top-k id: its code
    difference is clamped to the planes' range. Before the clamp it wrapped around to a value near 0."""
    layout = tt.Layout(2, 100, with_ref=True)
    teacher = np.array([[-0.5, -2.0], [-1.0, -3.0]])
    ref = np.array([[-np.inf, -2.5], [-1.5, -500.0]])
    rows = [{"pair_id": "a", "side": "generated", "input_index": 0, "token_ids": np.zeros(3, int), "prompt_len": 1,
             "topk_ids": np.array([[1, 2], [3, 4]]), "topk_logp": teacher, "realized_logp": teacher[:, 0],
             "ref_topk_logp": ref, "ref_realized_logp": ref[:, 1]}]
    got = roundtrip(rows, layout).ref_topk_logp
    far = tt.code_to_logp(tt.logp_to_code(teacher[0, 0]) + tt.REF_DIFF_MAX)
    assert got[0, 0] == pytest.approx(far) and far < -600  # clamped 622 nats below the teacher, still very low
    assert np.abs(got[[0, 1], [1, 0]] - ref[[0, 1], [1, 0]]).max() <= tt.LOGP_STEP / 2 + 1e-6
    assert abs(got[1, 1] - (-500.0)) <= tt.LOGP_STEP / 2 + 1e-4  # 497 nats below the teacher: within range


def test_large_vocabulary_uses_uint32_ids_and_three_planes():
    layout = tt.Layout(4, 151_936)
    assert layout.id_type == pa.uint32() and layout.rank_planes == 3
    n = 6
    ids = np.stack([np.random.default_rng(i).choice(151_936, 4, replace=False) for i in range(n)])
    ids[0, 0] = 151_935
    logp = np.tile([-0.1, -2.0, -3.0, -9.0], (n, 1))
    rows = [{"pair_id": "x", "side": "generated", "input_index": 3, "token_ids": np.array([151_935] * (n + 2)),
             "prompt_len": 2, "topk_ids": ids, "topk_logp": logp, "realized_logp": np.zeros(n)}]
    tb = roundtrip(rows, layout)
    np.testing.assert_array_equal(tb.topk_ids, ids)
    np.testing.assert_array_equal(tb.token_ids, rows[0]["token_ids"])


def test_empty_response_and_k1():
    layout = tt.Layout(1, 10)
    rows = [{"pair_id": "e", "side": "chosen", "input_index": 0, "token_ids": np.array([1, 2]), "prompt_len": 2,
             "topk_ids": np.zeros((0, 1), int), "topk_logp": np.zeros((0, 1)), "realized_logp": np.zeros(0)},
            {"pair_id": "f", "side": "chosen", "input_index": 1, "token_ids": np.array([1, 2, 3]), "prompt_len": 2,
             "topk_ids": np.array([[3]]), "topk_logp": np.array([[-0.5]]), "realized_logp": np.array([-0.5])}]
    tb = roundtrip(rows, layout)
    assert tb.row(0)["topk_ids"].shape == (0, 1) and tb.row(1)["topk_ids"].tolist() == [[3]]


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
    row = {"pair_id": "bad", "side": "chosen", "input_index": 0, "token_ids": np.arange(5), "prompt_len": 2,
           "topk_ids": np.array([[1, 2]] * 3), "topk_logp": np.array([[-0.5, -1.0]] * 3), "realized_logp": np.zeros(3)}
    row[field] = value
    with pytest.raises(ValueError, match=message):
        tt.encode([row], layout, np.arange(100))


def test_id_table_must_be_a_permutation():
    layout = tt.Layout(2, 10)
    with pytest.raises(ValueError, match="repeats"):
        tt.id_order_from_meta(np.array([1, 1], "<u2").tobytes(), layout)
    with pytest.raises(ValueError, match="outside"):
        tt.id_order_from_meta(np.array([12], "<u2").tobytes(), layout)
    with pytest.raises(ValueError, match="prefix"):
        tt.id_order_from_meta(b"\x01", layout)
    order = tt.id_order_from_meta(np.array([7, 3], "<u2").tobytes(), layout)
    assert order.tolist() == [7, 3, 0, 1, 2, 4, 5, 6, 8, 9]
