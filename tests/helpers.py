"""Checks shared by the store tests: what a store returns against the originals."""

import os

import numpy as np

from artifacts import ArtifactReader, Store
from schemas import token_topk as tt
from synthetic import drop_reason, make_row


def assert_complete_and_exact(artifact_dir, n: int, seed: int = 0, with_ref: bool = False):
    """Every usable input row exactly once per side, every dropped one absent, values as produced."""
    rows = list(ArtifactReader(artifact_dir))
    seen = sorted((r["input_index"], r["side"]) for r in rows)
    want = sorted((i, s) for i in range(n) if drop_reason(i) is None for s in ("chosen", "rejected"))
    assert seen == want, "rows missing, duplicated or unexpected"
    for r in rows[:: max(1, len(rows) // 25)]:
        o = make_row(seed, r["input_index"], r["side"], with_ref=with_ref)
        np.testing.assert_array_equal(r["topk_ids"], o["topk_ids"])
        np.testing.assert_array_equal(r["token_ids"], o["token_ids"])
        assert np.abs(r["topk_logp"] - o["topk_logp"]).max() <= tt.LOGP_STEP / 2 + 1e-6
    return rows


def linked_store(source: Store, path, kinds=("model-", "dataset-")) -> Store:
    """A new store sharing `source`'s complete artifacts of these kinds by hard links (fast, no copies)."""
    st = Store(path)
    for d in source.root.iterdir():
        if d.name.startswith(tuple(kinds)) and (d / "manifest.json").exists():
            (st.root / d.name).mkdir(parents=True)
            for f in d.iterdir():
                os.link(f, st.root / d.name / f.name)
    return st
