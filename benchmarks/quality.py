"""`make bench-quality`: world v4's registered protocol (docs/PREREG-v4.md, docs/PREREG-v4.json).

Refuses to run when benchmarks/analysis.py is not the registered one. Phases, each run keyed in the
store (a rerun after a kill reuses every finished run):

0. world seed 0: the DPO teacher's grid, selected by the reward model on validation (the choice must be
   `tiny4.TUNED_DPO`); the DPO students' grid at each size; the integrity checks on the validation
   prompts. The protocol stops here when a check fails.
1. world seed 0: every other method's grid at each size (ADPA+ from the tuned DCKD student).
2. report seeds: every method at its tuned setting, at each size, measured once on the test prompts.

Writes docs/results/quality-v4.json (every figure, the prereg's commit) and docs/results-quality-v4.png,
and prints the hypotheses with Holm-adjusted p-values. v3's benchmark and results stay in git history
and docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path


import numpy as np

from benchmarks import analysis, prereg
from adpa.stages.common import kernels

DOCS = Path("docs")
OUT = Path("bench-out") / "quality-v4"
RESULTS = DOCS / "results" / "quality-v4.json"


@dataclass(frozen=True)
class Run:
    """One student of the protocol."""

    method: str
    size: str
    seed: int
    setting: tuple  # (name, value) pairs of the grid setting

    @property
    def folder(self) -> Path:
        tag = "-".join(f"{k}{v}" for k, v in self.setting)
        return OUT / f"seed{self.seed}" / self.size / f"{self.method}-{tag}"


def grid(spec: dict, method: str) -> list[tuple]:
    """The method's grid settings in registered order (the first list outermost)."""
    g = spec["methods"][method]["grid"]
    return [tuple(zip(g, values)) for values in itertools.product(*g.values())]


def recipe_for(spec: dict, run: Run):
    """The tiny4 recipe for one run: its student size, world seed, fixed and grid settings."""
    from adpa.pipeline.recipe import load_recipe
    sets = [f"models.student=builtin:tiny4-{run.size}-sft"]
    fixed = spec["methods"].get(run.method, {}).get("fixed", {})
    sets += [f"distill.{k}={v}" for k, v in {**fixed, **dict(run.setting)}.items()]
    return at_seed(load_recipe("tiny4", sets), run.seed)


def at_seed(r, seed: int):
    """The tiny4 recipe `r` in world seed `seed`: its built-in models and data of that seed, its data order."""
    if seed:
        for role in ("teacher", "reference", "student", "reward_model"):
            setattr(r.models, role, f"{getattr(r.models, role)}:seed{seed}")
        for name in ("source", "eval_source", "valid_source"):
            setattr(r.data, name, getattr(r.data, name) + f":seed{seed}")
    r.distill.seed = seed
    return r


@dataclass
class Progress:
    """Plain progress lines with an ETA: the units left at the median time of those done (a unit that
    first builds a world seed's models is an outlier the median ignores; so the ETA is a low guess)."""

    total: int
    done: int = 0
    times: list = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    def step(self, what: str, t: float) -> None:
        self.done += 1
        self.times.append(t)
        eta = float(np.median(self.times)) * (self.total - self.done)
        print(f"  [{self.done}/{self.total}] {what} ({t:.0f} s; elapsed {(time.perf_counter() - self.t0) / 60:.1f} "
              f"min, ETA {eta / 60:.0f} min)", flush=True)


def train(store, spec: dict, run: Run, init=None):
    """The run's student (a Trained), after stage one for its recipe: `init`, when given, is the DCKD
    student ADPA+ starts from, on states it generated."""
    from adpa.pipeline import orchestrate
    from adpa.stages.common.ranks import silent
    r = recipe_for(spec, run)
    if init is not None:
        r.models.student = str(init.model_dir)
    orchestrate.teacher_cache(r, store, say=silent)  # reused when made: its artifacts are keyed by their inputs
    return orchestrate.distill(r, store, spec["methods"][run.method]["loss"], run.folder, say=silent,
                               overwrite=True)[-1]


def curve(trained) -> list[dict]:
    """The run's validation records (step, rm, reward, ...)."""
    path = Path(trained.run_dir) / "metrics.jsonl"
    return [rec for rec in map(json.loads, path.read_text().splitlines()) if rec.get("split") == "valid"]


def figures(trained) -> dict:
    """What the protocol keeps of a run: the selection and the validation curve's last and ground-truth best."""
    c = curve(trained)
    sel = trained.summary["selected"]
    return {"selected_step": sel["step"], "selected_rm": sel.get("value"),
            "valid_reward_selected": next((v["reward"] for v in c if v["step"] == sel["step"]), None),
            "valid_reward_last": c[-1]["reward"] if c else None,
            "valid_reward_best": max((v["reward"] for v in c), default=None),
            "model": trained.key}  # its store key: the results name no folder of one machine


def tune(store, spec: dict, sizes_methods: list[tuple[str, str]], progress: Progress, inits: dict) -> dict:
    """Every grid setting of each (size, method) on the tuning seed; the best selected rm wins (first on ties)."""
    seed = spec["seeds"]["tuning"][0]
    out = {}
    for size, method in sizes_methods:
        tried = []
        for setting in grid(spec, method):
            t = time.perf_counter()
            run = Run(method, size, seed, setting)
            tried.append({"setting": dict(setting), **figures(train(store, spec, run, inits.get(size)
                                                                      if method == "adpa+" else None))})
            progress.step(f"tune {size} {method} {dict(setting)}: rm {tried[-1]['selected_rm']:.4f}",
                          time.perf_counter() - t)
        best = max(range(len(tried)), key=lambda i: (tried[i]["selected_rm"], -i))
        out.setdefault(size, {})[method] = tried[best] | {"tried": tried}
    return out


def teacher_phase(store, spec: dict, progress: Progress) -> dict:
    """The DPO teacher's grid on the tuning seed, selected like the students; the choice must be the world's."""
    from adpa.pipeline.worlds import tiny4
    from adpa.stages.common.ranks import silent
    tried = []
    for setting in grid(spec, "dpo"):
        t = time.perf_counter()
        tried.append({"setting": dict(setting), **figures(tiny4.dpo_run(store, 0, dict(setting), silent))})
        progress.step(f"teacher dpo {dict(setting)}: rm {tried[-1]['selected_rm']:.4f}", time.perf_counter() - t)
    best = tried[max(range(len(tried)), key=lambda i: (tried[i]["selected_rm"], -i))]
    if best["setting"] != tiny4.TUNED_DPO:
        raise SystemExit(f"the DPO teacher's tuned setting is {best['setting']}; pipeline/worlds/tiny4.py's "
                         f"TUNED_DPO is {tiny4.TUNED_DPO}: set it, commit, and run again")
    return best | {"tried": tried}


def same_students(cached: dict[str, str], students: dict[str, str]) -> bool:
    """An evaluation's students are the same: the same names and folders, however the store was named (./store
    relative, as a command line gives it, or absolute)."""
    return {k: Path(v).resolve() for k, v in cached.items()} == {k: Path(v).resolve() for k, v in students.items()}


def evaluate(store, spec: dict, run: Run, students: dict[str, str], split: str) -> dict:
    """Per-prompt ground truth of the world's models and `students` (name -> folder) on the seed's
    `split` prompts ("valid" or "test"), with each prompt's flaw class; cached in the run folder."""
    from adpa.pipeline import orchestrate
    from adpa.pipeline.worlds import flawed_sorting
    from adpa.stages.common.ranks import silent
    d = OUT / f"seed{run.seed}" / run.size / f"eval-{split}"
    cached = d / "per_prompt.json"
    if cached.exists() and same_students(json.loads(cached.read_text())["students"], students):
        return json.loads(cached.read_text())
    r = recipe_for(spec, run)
    r.data.eval_source = r.data.valid_source if split == "valid" else r.data.eval_source
    results = orchestrate.evaluate(r, store, students, d, say=silent)
    out = {"students": students, "rewards": {}, "means": {}}  # cached beside the run (bench-out), never in docs
    for res in results:
        rows = [json.loads(ln) for ln in (d / "generations" / f"{res.name}.jsonl").read_text().splitlines()]
        out["rewards"][res.name] = [flawed_sorting.reward(x["instruction"], x["output"]) for x in rows]
        out["classes"] = [flawed_sorting.flaw_class(x["instruction"]) for x in rows]
        out["means"][res.name] = {k: v[0] for k, v in res.metrics.items()}
    cached.write_text(json.dumps(out))
    return out


def integrity(store, spec: dict, tuned_dpo: dict) -> dict:
    """The registered checks on the tuning seed's validation prompts."""
    from adpa.artifacts.transfer import local_copy
    valid, classes = {}, None
    for size in spec["students"]["sizes"]:
        run = Run("dpo", size, spec["seeds"]["tuning"][0], ())
        ev = evaluate(store, spec, run, {"dpo": str(local_copy(store, tuned_dpo[size]["dpo"]["model"]))}, "valid")
        valid |= {"teacher-sft": ev["rewards"]["teacher-sft"], "teacher-dpo": ev["rewards"]["teacher-dpo"],
                  f"student-sft:{size}": ev["rewards"]["student-sft"], f"dpo:{size}": ev["rewards"]["dpo"]}
        classes = ev["classes"]
    return analysis.integrity(valid, classes, {k: spec["integrity"][k] for k in ("a", "b", "c", "smallest")})


def checks_only(store, spec: dict) -> None:
    """The integrity checks at the tuned settings: the DPO teacher is the world's (`tiny4.TUNED_DPO`), each
    size's DPO student the one phase 0 chose (recorded in the committed results); exits 1 when one fails."""
    recorded = json.loads((prereg.ROOT / RESULTS).read_text())["chosen"]
    chosen = {size: {"dpo": {"model": train(store, spec, Run("dpo", size, spec["seeds"]["tuning"][0], tuple(
        recorded[size]["dpo"]["setting"].items()))).key}} for size in spec["students"]["sizes"]}
    checks = integrity(store, spec, chosen)
    print(json.dumps(checks["checks"] | {"passed": checks["passed"]}), flush=True)
    if not checks["passed"]:
        raise SystemExit("an integrity check failed")


def report(store, spec: dict, chosen: dict, progress: Progress) -> tuple[dict, dict, dict]:
    """Every method at its tuned setting on every report seed: per-prompt test rewards, flaw classes, figures."""
    test, classes, runs = {}, {}, {}
    for seed in spec["seeds"]["report"]:
        for size in spec["students"]["sizes"]:
            students, done = {}, {}
            for method in spec["methods"]:
                t = time.perf_counter()
                run = Run(method, size, seed, tuple(chosen[size][method]["setting"].items()))
                trained = train(store, spec, run, done.get("dckd") if method == "adpa+" else None)
                done[method] = trained
                students[method] = str(trained.model_dir)
                runs.setdefault(str(seed), {}).setdefault(size, {})[method] = figures(trained)
                progress.step(f"seed {seed} {size} {method}", time.perf_counter() - t)
            t = time.perf_counter()
            ev = evaluate(store, spec, Run("eval", size, seed, ()), students, "test")
            test.setdefault(str(seed), {})[size] = {m: ev["rewards"][m] for m in students} | {
                f"{n}": ev["rewards"][n] for n in ("teacher-sft", "teacher-dpo", "student-sft")}
            classes[str(seed)] = ev["classes"]
            progress.step(f"seed {seed} {size} test evaluation", time.perf_counter() - t)
    return test, classes, runs


def main():
    kernels.run_pinned("benchmarks.quality")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=None, help="default: $ADPA_STORE or ./store")
    ap.add_argument("--until", choices=("integrity", "tuning", "report"), default="report",
                    help="stop after this phase (its figures are written)")
    ap.add_argument("--checks-only", action="store_true",
                    help="the integrity checks alone, without the grids: the DPO students at the settings "
                         f"{RESULTS} records (what make test runs); prints them, writes nothing in docs/")
    a = ap.parse_args()
    spec = prereg.check()
    import torch
    torch.set_num_threads(1)  # the prereg's: one thread for everything, so the same bits on every machine
    from adpa.artifacts import Store
    store = Store(a.store)
    if a.checks_only:
        return checks_only(store, spec)
    sizes, methods = spec["students"]["sizes"], list(spec["methods"])
    seeds = spec["seeds"]["report"]
    progress = Progress(4 + 4 * len(sizes) * len(methods) + len(seeds) * len(sizes) * (len(methods) + 1))
    print(f"world v4, prereg {prereg.first_commit(prereg.PREREG)[:12]}: phase 0 (teacher, dpo, integrity)", flush=True)
    teacher = teacher_phase(store, spec, progress)
    chosen = tune(store, spec, [(s, "dpo") for s in sizes], progress, {})
    checks = integrity(store, spec, chosen)
    print(json.dumps(checks["checks"], indent=1), flush=True)
    results = {"prereg_commit": prereg.first_commit(prereg.PREREG), "analysis_sha256": spec["analysis"]["sha256"],
               "teacher_dpo": teacher, "integrity": checks}
    if not checks["passed"]:
        write(results | {"stopped": "an integrity check failed"})
        raise SystemExit("an integrity check failed: the protocol stops before any other method (docs/PREREG-v4.md)")
    if a.until == "integrity":
        return write(results)
    print("phase 1: tuning every other method on world seed 0", flush=True)
    others = [(s, m) for s in sizes for m in methods if m not in ("dpo", "adpa+")]
    for size, got in tune(store, spec, others, progress, {}).items():
        chosen[size] |= got
    # the tuned DCKD students ADPA+ starts from: reused from the store, where the tuning above made them
    inits = {s: train(store, spec, Run("dckd", s, 0, tuple(chosen[s]["dckd"]["setting"].items()))) for s in sizes}
    for size, got in tune(store, spec, [(s, "adpa+") for s in sizes], progress, inits).items():
        chosen[size] |= got
    if a.until == "tuning":
        return write(results | {"chosen": chosen})
    print(f"phase 2: report seeds {seeds}", flush=True)
    test, classes, runs = report(store, spec, chosen, progress)
    results |= {"chosen": chosen, "runs": runs, **analyse(spec, test, classes),
                "minutes": round((time.perf_counter() - progress.t0) / 60, 1)}
    write(results)
    show(results, DOCS / "results-quality-v4.png")


def analyse(spec: dict, test: dict, classes: dict) -> dict:
    """The registered analysis of the report seeds' per-prompt test rewards (the teachers' and SFT
    students' rows are in the tables, never in a hypothesis)."""
    methods_only = {s: {sz: {m: v for m, v in d.items() if m in spec["methods"]} for sz, d in t.items()}
                    for s, t in test.items()}
    return {"test": test, "classes": classes,
            "hypotheses": analysis.hypotheses(methods_only, spec["hypotheses"], spec["alpha"]),
            "table": analysis.table(test), "per_flaw": analysis.per_flaw(test, classes)}


def write(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results) + "\n")  # one line: 12 seeds' per-prompt rewards; json.tool reads it
    print(f"wrote {RESULTS}", flush=True)


def show(results: dict, png: Path) -> None:
    for h in results["hypotheses"]:
        print(f"{h['id']}: {h['text']}: {h['mean']:+.4f} ± {h['se_seeds']:.4f} (se over seeds), p {h['p']:.4f}, "
              f"Holm {h['p_holm']:.4f}: {'supported' if h['supported'] else 'not supported'}")
    for size, rows in results["table"].items():
        print(f"\n{size}: test reward, mean ± sd over report seeds")
        for m, v in sorted(rows.items(), key=lambda kv: -kv[1]["reward"]):
            print(f"  {m:12} {v['reward']:.4f} ± {v['sd_seeds']:.4f}")
    plot(results, png)


def plot(results: dict, path: Path) -> None:
    from adpa.stages.evaluate.report import bar_chart
    panels = []
    for size, rows in results["table"].items():
        names = list(rows)
        panels.append((f"{size}: test reward (± sd over seeds)", [rows[n]["reward"] for n in names],
                       [rows[n]["sd_seeds"] for n in names]))
    bar_chart(list(next(iter(results["table"].values()))), panels, "world v4, tuned settings, report seeds", path)


if __name__ == "__main__":
    main()
