"""Stage two's data: artifacts joined by input row, a seeded streaming shuffle, exact positions."""

import numpy as np
import pytest

from adpa.artifacts import ArtifactSpec, ArtifactWriter, Store, WriteOptions
from adpa.schemas import token_topk
from adpa.stages.distill.pair_stream import JoinError, PairStream, joined, shuffled
from synthetic import drop_reason, make_row, produce

N = 70


def advantage_artifact(root, n=N, drop=drop_reason, seed=0, tag="same"):
    """One generated-state row per usable input row, like stage one's advantage artifact."""
    layout = {"k": 8, "vocab_size": 5000, "with_ref": True}
    spec = ArtifactSpec("advantage", {"synthetic": seed, "n": n, "drop": tag}, token_topk.Codec, layout, n)
    with ArtifactWriter(Store(root), spec, options=WriteOptions(max_shard_rows=9)) as w:
        for i in range(n):
            if reason := drop(i):
                w.drop(i, reason)
            else:
                w.add(i, [make_row(seed, i, "generated", with_ref=True)])
        return w.publish({})


@pytest.fixture
def dirs(store_root):
    topk, _ = produce(store_root, N, max_shard_rows=16)
    adv = advantage_artifact(store_root)
    st = Store(store_root)
    return {"teacher_topk": st.path(topk["key"]), "advantage": st.path(adv["key"])}


def test_join_gives_each_usable_pair_once_with_the_right_rows(dirs):
    usable = [i for i in range(N) if drop_reason(i) is None]
    got = list(joined(dirs, "adpa"))
    assert [ex.index for ex in got] == usable
    for ex in got:
        assert set(ex.parts) == {"chosen", "state"}
        assert ex.parts["chosen"].side == "chosen" and ex.parts["chosen"].input_index == ex.index
        want = make_row(0, ex.index, "generated", with_ref=True)
        np.testing.assert_array_equal(ex.parts["state"].token_ids, want.token_ids)
        np.testing.assert_array_equal(ex.parts["state"].topk_ids, want.topk_ids)
    rejected = [ex.parts["rejected"] for ex in joined(dirs, "dckd")]
    assert all(r.side == "rejected" for r in rejected) and len(rejected) == len(usable)


def test_artifacts_with_different_rows_are_refused(store_root, dirs):
    other = advantage_artifact(store_root, drop=lambda i: "empty_response" if i % 6 == 0 else None,
                               tag="fewer")
    bad = dict(dirs, advantage=Store(store_root).path(other["key"]))
    with pytest.raises(JoinError, match="same number of input rows"):
        PairStream(bad, "adpa", seed=0, buffer=8, batch_pairs=4)
    shifted = advantage_artifact(store_root, drop=lambda i: drop_reason(i + 1), tag="shifted")  # as many rows, other ones
    bad = dict(dirs, advantage=Store(store_root).path(shifted["key"]))
    assert PairStream(bad, "adpa", seed=0, buffer=8, batch_pairs=4).n_pairs == N - 10
    with pytest.raises(JoinError, match="do not hold the same input rows"):
        list(joined(bad, "adpa"))


def test_shuffle_is_a_seeded_permutation():
    a = list(shuffled(range(100), 16, np.random.default_rng(1)))
    b = list(shuffled(range(100), 16, np.random.default_rng(1)))
    c = list(shuffled(range(100), 16, np.random.default_rng(2)))
    assert a == b and a != c and sorted(a) == list(range(100)) and a != list(range(100))


def test_steps_cover_every_pair_each_epoch_and_resume_exactly(dirs):
    s = PairStream(dirs, "adpa", seed=3, buffer=10, batch_pairs=8)
    usable = [i for i in range(N) if drop_reason(i) is None]
    assert s.n_pairs == len(usable) and s.steps_per_epoch == -(-len(usable) // 8)
    steps = [(k, [ex.index for ex in b]) for k, b in s.steps(epochs=2)]
    assert [k for k, _ in steps] == list(range(2 * s.steps_per_epoch))
    for e in range(2):
        epoch = [i for k, b in steps[e * s.steps_per_epoch:(e + 1) * s.steps_per_epoch] for i in b]
        assert sorted(epoch) == usable
    assert steps[0][1] != steps[s.steps_per_epoch][1]  # each epoch has its own order
    for start in (1, s.steps_per_epoch - 1, s.steps_per_epoch + 2):
        again = [(k, [ex.index for ex in b]) for k, b in s.steps(epochs=2, start_step=start)]
        assert again == steps[start:]
