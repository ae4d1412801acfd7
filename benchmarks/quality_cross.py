"""`make bench-quality-cross`: world v4p's registered protocol (docs/PREREG-v4p.md, docs/PREREG-v4p.json):
students of another tokenizer (two digits a token) distilled from world v4's unchanged caches.

Refuses to run when benchmarks/analysis.py is not the registered one. Every run is keyed in the store, so a
rerun after a kill reuses every finished run. Phases:

1. world seed 0: the paired methods' grids (sft-p, dckd-x, adpa-x) at each size, selected by the reward
   model on validation; the same-tokenizer methods keep v4's tuned settings (fixed in the prereg).
2. report seeds: every method of both tokenizers at its setting, at each size, measured once on the test
   prompts (the paired students and the same-tokenizer ones each judged with their own tokenizer).

Writes docs/results/quality-v4p.json (every figure, the prereg's commit) and prints the hypotheses with
Holm-adjusted p-values.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import analysis, prereg
from benchmarks.quality import Progress, Run, at_seed, figures, grid, same_students
from adpa.stages.common import kernels

DOCS = Path("docs")
PREREG = prereg.ROOT / DOCS / "PREREG-v4p.json"
OUT = Path("bench-out") / "quality-v4p"
RESULTS = DOCS / "results" / "quality-v4p.json"
INITS = {"same": "student-sft", "paired": "student-sft-p"}  # the evaluation's baseline row of each tokenizer


@dataclass(frozen=True)
class CrossRun(Run):
    """One student of the protocol, its run folder under this benchmark's."""

    @property
    def folder(self) -> Path:
        tag = "-".join(f"{k}{v}" for k, v in self.setting)
        return OUT / f"seed{self.seed}" / self.size / f"{self.method}{'-' + tag if tag else ''}"


def paired(spec: dict, method: str) -> bool:
    return spec["methods"][method]["student"] == "paired"


def settings(spec: dict, run: Run) -> dict:
    """The run's distill settings: the method's fixed ones (per size where the prereg gives one per size),
    then its grid setting."""
    fixed = spec["methods"][run.method].get("fixed", {})
    return {k: (v[run.size] if isinstance(v, dict) else v) for k, v in fixed.items()} | dict(run.setting)


def recipe_for(spec: dict, run: Run, student: str):
    """The tiny4 recipe of one run: the student of `student` ("same" or "paired") tokenizer at the run's
    size, its world seed, its settings."""
    from adpa.pipeline.recipe import load_recipe
    suffix = "p" if student == "paired" else ""
    sets = [f"models.student=builtin:tiny4-{run.size}{suffix}-sft"]
    sets += [f"distill.{k}={v}" for k, v in settings(spec, run).items()] if run.method in spec["methods"] else []
    return at_seed(load_recipe("tiny4", sets), run.seed)


def caches(store, run: Run) -> dict[str, str]:
    """The world's stage-one caches of the run's seed and size (made for the same-tokenizer student when
    absent): every method of the size reads these keys."""
    from adpa.pipeline import orchestrate
    from adpa.stages.common.ranks import silent
    world = recipe_for({"methods": {}}, CrossRun("caches", run.size, run.seed, ()), "same")
    orchestrate.teacher_cache(world, store, say=silent)
    return orchestrate.planned(world, store)


def train(store, spec: dict, run: Run):
    from adpa.pipeline import orchestrate
    from adpa.stages.common.ranks import silent
    r = recipe_for(spec, run, spec["methods"][run.method]["student"])
    return orchestrate.distill(r, store, spec["methods"][run.method]["loss"], run.folder, caches=caches(store, run),
                               say=silent, overwrite=True)[-1]


def alignment(trained) -> dict:
    """The run's mean aligned_share and matched_mass over its training steps (paired runs)."""
    recs = [json.loads(ln) for ln in (Path(trained.run_dir) / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "matched_mass" in r]
    return {k: float(np.mean([r[k] for r in recs])) for k in ("aligned_share", "matched_mass")} if recs else {}


def measured(trained) -> dict:
    return figures(trained) | alignment(trained)


def tune(store, spec: dict, progress: Progress) -> dict:
    """The paired methods' grids on the tuning seed (best selected rm wins, first on ties); the same-tokenizer
    methods at their fixed settings."""
    seed, out = spec["seeds"]["tuning"][0], {}
    for size in spec["students"]["sizes"]:
        for method in spec["methods"]:
            if not paired(spec, method):
                out.setdefault(size, {})[method] = {"setting": {}}
                continue
            tried = []
            for setting in grid(spec, method):
                t = time.perf_counter()
                run = CrossRun(method, size, seed, setting)
                tried.append({"setting": dict(setting), **measured(train(store, spec, run))})
                progress.step(f"tune {size} {method} {dict(setting)}: rm {tried[-1]['selected_rm']:.4f}",
                              time.perf_counter() - t)
            best = max(range(len(tried)), key=lambda i: (tried[i]["selected_rm"], -i))
            out.setdefault(size, {})[method] = tried[best] | {"tried": tried}
    return out


def evaluate(store, spec: dict, run: Run, students: dict[str, str], student: str) -> dict:
    """Per-prompt test ground truth of the world's teachers, the `student` tokenizer's SFT init and `students`
    (name -> folder, all of that tokenizer), each prompt's flaw class; cached in the bench folder."""
    from adpa.pipeline import orchestrate
    from adpa.pipeline.worlds import flawed_sorting
    from adpa.stages.common.ranks import silent
    d = OUT / f"seed{run.seed}" / run.size / f"eval-test-{student}"
    cached = d / "per_prompt.json"
    if cached.exists() and same_students(json.loads(cached.read_text())["students"], students):
        return json.loads(cached.read_text())
    results = orchestrate.evaluate(recipe_for(spec, run, student), store, students, d, say=silent)
    out = {"students": students, "rewards": {}}
    for res in results:
        rows = [json.loads(ln) for ln in (d / "generations" / f"{res.name}.jsonl").read_text().splitlines()]
        name = INITS[student] if res.name == "student-sft" else res.name
        out["rewards"][name] = [flawed_sorting.reward(x["instruction"], x["output"]) for x in rows]
        out["classes"] = [flawed_sorting.flaw_class(x["instruction"]) for x in rows]
    cached.write_text(json.dumps(out))
    return out


def report(store, spec: dict, chosen: dict, progress: Progress, seeds: list[int]) -> tuple[dict, dict, dict]:
    """Every method at its setting on `seeds`: per-prompt test rewards, flaw classes, figures."""
    test, classes, runs = {}, {}, {}
    for seed in seeds:
        for size in spec["students"]["sizes"]:
            students = {"same": {}, "paired": {}}
            for method in spec["methods"]:
                t = time.perf_counter()
                run = CrossRun(method, size, seed, tuple(chosen[size][method]["setting"].items()))
                trained = train(store, spec, run)
                students[spec["methods"][method]["student"]][method] = str(trained.model_dir)
                runs.setdefault(str(seed), {}).setdefault(size, {})[method] = measured(trained)
                progress.step(f"seed {seed} {size} {method}", time.perf_counter() - t)
            t = time.perf_counter()
            row = {}
            for student, named in students.items():
                ev = evaluate(store, spec, CrossRun("eval", size, seed, ()), named, student)
                row |= {k: v for k, v in ev["rewards"].items() if k not in row}  # the teachers' rows: the first's
                classes[str(seed)] = ev["classes"]
            test.setdefault(str(seed), {})[size] = row
            progress.step(f"seed {seed} {size} test evaluation", time.perf_counter() - t)
    return test, classes, runs


def main():
    kernels.run_pinned("benchmarks.quality_cross")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=None, help="default: $ADPA_STORE or ./store")
    ap.add_argument("--until", choices=("tuning", "report"), default="report",
                    help="stop after this phase (its figures are written)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="only these report seeds (a second process on another core: its runs are keyed in the "
                         "store, so the full run reuses them); writes nothing in docs/")
    a = ap.parse_args()
    spec = prereg.check(PREREG)
    import torch
    torch.set_num_threads(1)  # the prereg's: one thread for everything, so the same bits on every machine
    from adpa.artifacts import Store
    store = Store(a.store)
    sizes, methods, seeds = spec["students"]["sizes"], list(spec["methods"]), spec["seeds"]["report"]
    n_paired = sum(paired(spec, m) for m in methods)
    progress = Progress(4 * len(sizes) * n_paired + len(seeds) * len(sizes) * (len(methods) + 1))
    results = {"prereg_commit": prereg.first_commit(PREREG), "analysis_sha256": spec["analysis"]["sha256"]}
    print(f"world v4p, prereg {results['prereg_commit'][:12]}: phase 1 (tuning the paired methods)", flush=True)
    chosen = tune(store, spec, progress)
    results["chosen"] = chosen
    if a.until == "tuning":
        return write(results)
    if a.seeds:
        if not set(a.seeds) <= set(seeds):
            raise SystemExit(f"--seeds {a.seeds}: the registered report seeds are {seeds}")
        print(f"phase 2, seeds {a.seeds} only: their runs and evaluations, nothing written in docs/", flush=True)
        report(store, spec, chosen, progress, a.seeds)
        return
    print(f"phase 2: report seeds {seeds}", flush=True)
    test, classes, runs = report(store, spec, chosen, progress, seeds)
    methods_only = {s: {sz: {m: v for m, v in d.items() if m in spec["methods"]} for sz, d in t.items()}
                    for s, t in test.items()}
    results |= {"runs": runs, "test": test, "classes": classes, "table": analysis.table(test),
                "per_flaw": analysis.per_flaw(test, classes),
                "hypotheses": analysis.hypotheses(methods_only, spec["hypotheses"], spec["alpha"]),
                "minutes": round((time.perf_counter() - progress.t0) / 60, 1)}
    write(results)
    for h in results["hypotheses"]:
        print(f"{h['id']}: {h['text']}: {h['mean']:+.4f} ± {h['se_seeds']:.4f} (se over seeds), p {h['p']:.4f}, "
              f"Holm {h['p_holm']:.4f}: {'supported' if h['supported'] else 'not supported'}")


def write(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results) + "\n")
    print(f"wrote {RESULTS}", flush=True)


if __name__ == "__main__":
    main()
