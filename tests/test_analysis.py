"""The registered analysis (benchmarks/analysis.py) against independent computations."""

import itertools
import json
import random

import numpy as np
import pytest

from benchmarks import analysis


def brute_sign_flip(values):
    obs = sum(values) / len(values)
    hits = 0
    for signs in itertools.product((1, -1), repeat=len(values)):
        hits += sum(s * abs(v) for s, v in zip(signs, values)) / len(values) >= obs - 1e-12
    return hits / 2 ** len(values)


@pytest.mark.parametrize("seed", range(5))
def test_sign_flip_matches_enumeration(seed):
    rng = random.Random(seed)
    values = [rng.gauss(0.01, 0.02) for _ in range(rng.randint(3, 9))]
    assert analysis.sign_flip_p(values) == pytest.approx(brute_sign_flip(values))


def test_sign_flip_extremes():
    assert analysis.sign_flip_p([0.1] * 12) == 1 / 4096  # every seed positive: only the identity flip
    assert analysis.sign_flip_p([-0.1] * 12) == 1.0
    with pytest.raises(ValueError):
        analysis.sign_flip_p([])


def test_holm_by_hand():
    # sorted p: .01 (x4 = .04), .02 (x3 = .06), .03 (x2 = .06 max), .5 (x1 = .5)
    got = analysis.holm({"a": 0.03, "b": 0.01, "c": 0.5, "d": 0.02})
    assert got == pytest.approx({"b": 0.04, "d": 0.06, "a": 0.06, "c": 0.5})
    assert analysis.holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}


def _world(n_seeds=6, gap=0.05):
    rng = np.random.default_rng(0)
    test, classes = {}, {}
    for s in range(1, n_seeds + 1):
        base = rng.uniform(0.5, 0.9, 40)
        test[str(s)] = {"s32": {"dpo": list(base), "adpa": list(np.clip(base + gap + rng.normal(0, .01, 40), 0, 1))},
                        "s8": {"dpo": list(base + 0.1), "adpa": list(base + 0.1)}}
        classes[str(s)] = ["none", "last_pair"] * 20
    return test, classes


def test_hypotheses_contrasts_and_holm():
    test, _ = _world()
    reg = [{"id": "H1", "text": "adpa beats dpo at s32", "terms": [[1, "adpa", "s32"], [-1, "dpo", "s32"]]},
           {"id": "H2", "text": "the gap shrinks", "terms": [[1, "adpa", "s32"], [-1, "dpo", "s32"],
                                                             [-1, "adpa", "s8"], [1, "dpo", "s8"]]},
           {"id": "H3", "text": "reverse", "terms": [[1, "dpo", "s32"], [-1, "adpa", "s32"]]}]
    out = {h["id"]: h for h in analysis.hypotheses(test, reg, alpha=0.05)}
    by_hand = [np.mean(test[s]["s32"]["adpa"]) - np.mean(test[s]["s32"]["dpo"]) for s in sorted(test, key=int)]
    assert out["H1"]["mean"] == pytest.approx(np.mean(by_hand))
    assert out["H1"]["p"] == 1 / 64 and out["H2"]["p"] == 1 / 64 and out["H3"]["p"] == 1.0
    assert out["H1"]["p_holm"] == pytest.approx(3 / 64) and out["H1"]["supported"]
    assert not out["H3"]["supported"]


def test_table_and_per_flaw():
    test, classes = _world(n_seeds=3)
    t = analysis.table(test)
    assert t["s8"]["adpa"]["minus"]["dpo"]["mean"] == pytest.approx(0.0)
    assert t["s32"]["dpo"]["reward"] == pytest.approx(np.mean([np.mean(test[s]["s32"]["dpo"]) for s in test]))
    f = analysis.per_flaw(test, classes)
    want = np.mean([np.mean(test[s]["s32"]["dpo"][1::2]) for s in test])
    assert f["s32"]["dpo"]["last_pair"] == pytest.approx(want)


def test_integrity_checks():
    classes = ["none", "f"] * 50
    valid = {"teacher-sft": [0.8, 0.6] * 50, "teacher-dpo": [0.795, 0.9] * 50,
             "student-sft:s32": [0.6] * 100, "dpo:s32": [0.7] * 100, "dpo:s8": [0.83] * 100}
    limits = {"a": 0.03, "b": 0.01, "c": 0.05, "smallest": "s32"}
    got = analysis.integrity(valid, classes, limits)
    assert got["checks"]["a:s32"]["passed"] and not got["checks"]["a:s8"]["passed"]  # 0.8475 - 0.83 < 0.03
    assert got["checks"]["b"]["value"] == pytest.approx(-0.005) and got["checks"]["b"]["passed"]
    assert got["checks"]["c"]["passed"] and not got["passed"]


def test_prereg_names_this_analysis(tmp_path):
    """The registered hash is the analysis file's; a changed copy is refused in one line."""
    import json
    import shutil

    from benchmarks import prereg
    reg = prereg.check()
    assert reg["version"] == 4 and len(reg["seeds"]["report"]) >= 12
    assert not set(reg["seeds"]["tuning"]) & set(reg["seeds"]["report"])
    spec = json.loads(prereg.PREREG.read_text())
    shutil.copy(prereg.ROOT / spec["analysis"]["file"], tmp_path / "analysis.py")
    (tmp_path / "analysis.py").write_text((tmp_path / "analysis.py").read_text() + "\n# edited\n")
    spec["analysis"]["file"] = str(tmp_path / "analysis.py")
    (tmp_path / "p.json").write_text(json.dumps(spec))
    with pytest.raises(prereg.NotRegistered, match="is not the registered"):
        prereg.check(tmp_path / "p.json")


def test_registered_hypotheses_are_well_formed():
    from benchmarks import prereg
    spec = prereg.check()
    methods, sizes = set(spec["methods"]), set(spec["students"]["sizes"])
    for h in spec["hypotheses"]:
        assert all(m in methods and s in sizes for _, m, s in h["terms"]), h["id"]
        assert sum(c for c, _, _ in h["terms"]) == 0, h["id"]  # a contrast: a shared shift cancels
    assert all(len(_grid(m)) == 4 for m in spec["methods"].values())


def _grid(method):
    import itertools
    return list(itertools.product(*method["grid"].values()))


def test_the_bench_runs_the_registered_grids_in_order():
    from benchmarks import prereg, quality
    spec = prereg.check()
    assert quality.grid(spec, "dpo") == [(("lr", 1e-4), ("beta", 0.1)), (("lr", 1e-4), ("beta", 0.5)),
                                         (("lr", 5e-4), ("beta", 0.1)), (("lr", 5e-4), ("beta", 0.5))]
    assert all(len(quality.grid(spec, m)) == 4 for m in spec["methods"])
    r = quality.recipe_for(spec, quality.Run("adpa-signed", "s8", 3, (("lr", 5e-4), ("gamma", 0.3))))
    assert (r.models.student, r.models.reward_model) == ("builtin:tiny4-s8-sft:seed3", "builtin:tiny4-reward-model:seed3")
    assert (r.distill.advantage, r.distill.lr, r.distill.gamma, r.distill.seed) == ("signed", 5e-4, 0.3, 3)
    assert (r.distill.select_by, r.distill.eval_every, r.distill.epochs) == ("rm", 16, 3)
    assert r.data.eval_source == "builtin:tiny4-sort-test:seed3"


def test_the_bench_analyses_and_shows_report_seeds(tmp_path, capsys):
    """The end of make bench-quality on made-up per-prompt rewards: hypotheses over the methods only,
    tables with the reference rows, a chart."""
    from benchmarks import prereg, quality
    spec = prereg.check()
    rng = np.random.default_rng(1)
    names = list(spec["methods"]) + ["teacher-sft", "teacher-dpo", "student-sft"]
    test = {str(s): {size: {n: list(rng.uniform(0.7, 1.0, 20)) for n in names} for size in spec["students"]["sizes"]}
            for s in spec["seeds"]["report"]}
    classes = {s: ["none", "two_as_seven"] * 10 for s in test}
    out = quality.analyse(spec, test, classes)
    assert [h["id"] for h in out["hypotheses"]] == [h["id"] for h in spec["hypotheses"]]
    assert set(out["table"]["s32"]) == set(names) and set(out["per_flaw"]["s8"]["dckd"]) == {"none", "two_as_seven"}
    quality.show(out, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 0 and "H1:" in capsys.readouterr().out


def test_the_tokenizer_variant_is_registered_on_v4s_analysis_and_tuned_settings():
    """PREREG-v4p: the same analysis file (sha256), and its same-tokenizer methods at exactly the settings v4's
    tuning chose (docs/results/quality-v4.json), so that their students are v4's own (same keys)."""
    from benchmarks import prereg, quality, quality_cross
    spec = prereg.check(quality_cross.PREREG)
    assert spec["analysis"] == json.loads(prereg.PREREG.read_text())["analysis"]
    chosen = json.loads((prereg.ROOT / quality.RESULTS).read_text())["chosen"]
    for method, m in spec["methods"].items():
        if m["student"] == "same":
            for size in spec["students"]["sizes"]:
                got = quality_cross.settings(spec, quality.Run(method, size, 0, ()))
                want = chosen[size][method]["setting"] | v4_fixed(method)
                assert got == want, (method, size)
    assert {h["id"] for h in spec["hypotheses"]} == {"X1", "X2", "X3", "X4"}


def v4_fixed(method: str) -> dict:
    from benchmarks import prereg
    return json.loads(prereg.PREREG.read_text())["methods"][method].get("fixed", {})


@pytest.mark.parametrize("bench", ["quality", "quality_cross"])
def test_the_committed_results_are_the_registered_analysis_of_their_own_raw_rewards(bench):
    """docs/results/quality-v4.json and quality-v4p.json: hypotheses, tables and per-flaw figures recomputed
    from the per-prompt rewards they carry, with the registered analysis, equal what was committed (nothing
    edited by hand after the run; the report seeds and the registered hypotheses are the ones analysed)."""
    import importlib
    from benchmarks import analysis, prereg
    mod = importlib.import_module(f"benchmarks.{bench}")
    spec = prereg.check(getattr(mod, "PREREG", prereg.PREREG))
    got = json.loads((prereg.ROOT / mod.RESULTS).read_text())
    test, classes = got["test"], got["classes"]
    assert sorted(map(int, test)) == spec["seeds"]["report"]
    methods = {s: {z: {m: v for m, v in d.items() if m in spec["methods"]} for z, d in t.items()} for s, t in test.items()}
    assert analysis.hypotheses(methods, spec["hypotheses"], spec["alpha"]) == got["hypotheses"]
    assert analysis.table(test) == got["table"] and analysis.per_flaw(test, classes) == got["per_flaw"]
