"""A deterministic producer of teacher-like rows, for store tests (run in-process or as a subprocess).

Row values derive from (seed, input index) alone, so a test can recompute the originals and
compare them with what a store returns after crashes, resumes and transfers.
Run as a script: python tests/synthetic.py STORE N [--sleep S] [--max-shard-rows R]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adpa.artifacts import ArtifactSpec, ArtifactWriter, Store, WriteOptions  # noqa: E402
from adpa.artifacts.writer import assemble  # noqa: E402
from adpa.schemas import token_topk  # noqa: E402

K, VOCAB, PROMPT = 8, 5000, 4


def drop_reason(i: int) -> str | None:
    return "empty_response" if i % 11 == 5 else ("identical_pair" if i % 17 == 3 else None)


def make_row(seed: int, i: int, side: str, k: int = K, vocab: int = VOCAB, with_ref: bool = False) -> token_topk.Row:
    """A peaked top-k distribution per position, sorted descending, as a teacher would give."""
    rng = np.random.default_rng([seed, i, ("chosen", "rejected", "generated").index(side)])
    n = int(rng.integers(1, 40))
    logits = rng.standard_normal((n, vocab)).astype(np.float64) * 3.0
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    ids = np.argsort(-logp, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(logp, ids, 1)
    tokens = rng.integers(0, vocab, PROMPT + n)
    row = token_topk.Row(f"pair-{i:06d}", side, i, tokens, PROMPT, ids, top, logp[np.arange(n), tokens[PROMPT:]],
                         tail_logp=token_topk.tail_logmass(top))
    if with_ref:
        ref = logp + rng.normal(0, 0.3, logp.shape)
        ref -= np.logaddexp.reduce(ref, axis=1, keepdims=True)
        row = dataclasses.replace(row, ref_topk_logp=np.take_along_axis(ref, ids, 1),
                                  ref_realized_logp=ref[np.arange(n), tokens[PROMPT:]])
    return row


def spec(seed: int = 0, n: int = 0, with_ref: bool = False) -> ArtifactSpec:
    """The synthetic artifact of n input rows."""
    return ArtifactSpec("teacher-topk", {"dataset": "synthetic", "seed": seed, "n": n, "k": K, "with_ref": with_ref},
                        token_topk.Codec, {"k": K, "vocab_size": VOCAB, "with_ref": with_ref}, n)


def produce(root, n: int, seed: int = 0, sleep: float = 0.0, max_shard_rows: int = 16, with_ref: bool = False,
            fail_at: int | None = None, rank: int = 0, world_size: int = 1,
            assemble_after: bool = False, pause_before_assemble: float = 0.0,
            load_time: float = 0.0, batch_tokens: int = 200) -> tuple[dict | None, bool]:
    """Produce (or resume, or reuse) the synthetic artifact or one rank's slice of it; returns
    (manifest or None while other ranks are pending, reused). `assemble_after`: as stage one does,
    finish the slice inside the writer and assemble the manifest after leaving it. `batch_tokens`: other
    record batch boundaries give other shard bytes for the same rows (as two machines' runs would)."""
    options = WriteOptions(max_shard_rows=max_shard_rows, batch_tokens=batch_tokens)
    with ArtifactWriter(Store(root), spec(seed, n, with_ref), rank=rank, world_size=world_size, options=options) as w:
        if w.reused:
            return w.manifest, True
        if w.done:
            assert w.resume_from == w.end
        else:
            time.sleep(load_time)  # as stage one loads its engines when there is work
        for i in range(w.resume_from, w.end):
            if i == fail_at:
                raise RuntimeError(f"injected failure at row {i}")
            if reason := drop_reason(i):
                w.drop(i, reason)
            else:
                w.add(i, [make_row(seed, i, "chosen", with_ref=with_ref), make_row(seed, i, "rejected", with_ref=with_ref)])
            if sleep:
                time.sleep(sleep)
        if not assemble_after:
            return w.publish(stats={"note": "synthetic"}), False
        w.finish({"note": "synthetic"})
    time.sleep(pause_before_assemble)  # a slow barrier between the ranks' finish and the manifest
    return assemble(Store(root), spec(seed, n, with_ref)), w.done


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("n", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--max-shard-rows", type=int, default=16)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world-size", type=int, default=1)
    ap.add_argument("--assemble-after", action="store_true")
    ap.add_argument("--pause-before-assemble", type=float, default=0.0)
    ap.add_argument("--load-time", type=float, default=0.0)
    ap.add_argument("--batch-tokens", type=int, default=200)
    a = ap.parse_args()
    m, reused = produce(a.store, a.n, a.seed, a.sleep, a.max_shard_rows, rank=a.rank, world_size=a.world_size,
                        assemble_after=a.assemble_after, pause_before_assemble=a.pause_before_assemble, load_time=a.load_time,
                        batch_tokens=a.batch_tokens)
    print("reused " + m["key"] if reused else ("published " + m["key"] if m else f"rank {a.rank} done"), flush=True)
