"""`make bench-distill` keeps measuring what it says, in process on a tiny student: per loss the two bare
runs (each pair alone; our packed rows), ours on plain and on packed rows, over the same unique tokens."""

import argparse

from adpa.artifacts import Store
from benchmarks import distill as bench


def test_bench_distill_runs_every_variant_over_the_same_tokens(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "OUT", tmp_path)
    dirs = bench.build_caches(Store(tmp_path / "store"), 6, bench.SHAPES["smoke"][0], 8, (4, 12))
    model = bench.make_model("smoke", "cpu")
    a = argparse.Namespace(batch_pairs=2, token_budget=4096, gradient_checkpointing=False, compile=False, repeats=1)
    results = bench.interleaved(a, dirs, model, None)
    assert [(r["for"], r["loss"], r["pack"]) for r in results] == [
        (loss, name, pack) for loss in bench.LOSSES
        for name, pack in (("alone", True), ("rows", True), (loss, False), (loss, True))]
    for loss in bench.LOSSES:
        alone, rows, plain, packed = (r for r in results if r["for"] == loss)
        assert alone["padding_fraction"] == 0  # each pair alone: its prompt once, nothing padded
        assert alone["forward_tokens"] == rows["forward_tokens"] == packed["forward_tokens"]  # the unique tokens
        if loss in ("dckd", "adpa"):  # two parts of one prompt: plain rows compute it twice
            assert plain["forward_tokens"] > packed["forward_tokens"]
        assert max(alone["of_limit"], rows["of_limit"]) == 1.0  # the limit is the faster bare run
        assert all(r["steps_timed"] == 2 and r["of_limit"] > 0 for r in (plain, packed))
    bench.print_table(results)
    out = capsys.readouterr().out
    assert out.count("ours packed") == 4 and out.count("bare alone") == 4
