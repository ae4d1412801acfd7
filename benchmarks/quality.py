"""`make bench-quality`: the demo's comparison of methods repeated over 3 worlds (seeds 0, 1, 2).

Each seed draws its own data, initialisations and data order (`builtin:NAME:seedN`); the teachers
and the SFT student are trained again for it; every method then runs as in `make demo`. Prints
and writes (bench-out/quality.json, bench-out/quality.png) the mean and standard deviation over
seeds of each metric, per method.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np

OUT = Path("bench-out")
METRICS = [("reward", "reward"), ("implicit_reward", "r(y) seq"), ("implicit_reward_per_token", "r(y)/tok"),
           ("win_rate_vs_student-sft", "win vs sft student"), ("preference_accuracy", "pref acc")]


def seeded(recipe, seed: int):
    r = copy.deepcopy(recipe)
    if seed:
        for role in ("teacher", "reference", "student"):
            setattr(r.models, role, f"{getattr(r.models, role)}:seed{seed}")
        r.data.source += f":seed{seed}"
        r.data.eval_source += f":seed{seed}"
    r.distill.seed = seed
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--store", default=None, help="default: $ADPA_STORE or ./store")
    a = ap.parse_args()
    from artifacts import Store
    from pipeline.demo import run_demo
    from pipeline.recipe import load_recipe
    store = Store(a.store)
    per_seed = {}
    for seed in a.seeds:
        print(f"=== world seed {seed}", flush=True)
        out = run_demo(store, seeded(load_recipe("tiny"), seed), OUT / f"quality-seed{seed}")
        per_seed[seed] = {r.name: {k: v[0] for k, v in r.metrics.items()} for r in out["results"]}
    names = list(per_seed[a.seeds[0]])
    summary = {n: {k: {"mean": float(np.mean([per_seed[s][n][k] for s in a.seeds])),
                       "std": float(np.std([per_seed[s][n][k] for s in a.seeds], ddof=1)) if len(a.seeds) > 1 else 0.0}
                   for k, _ in METRICS} for n in names}
    print(f"\nmean ± standard deviation over seeds {a.seeds}")
    print(f"{'model':14}" + "".join(f"{t:>22}" for _, t in METRICS))
    for n in names:
        print(f"{n:14}" + "".join(f"{summary[n][k]['mean']:>13.3f} ± {summary[n][k]['std']:.3f}" for k, _ in METRICS))
    OUT.mkdir(exist_ok=True)
    (OUT / "quality.json").write_text(json.dumps({"seeds": a.seeds, "per_seed": per_seed, "summary": summary}, indent=1))
    plot(summary, names, a.seeds, OUT / "quality.png")


def plot(summary, names, seeds, path):
    from stages.evaluate.report import bar_chart
    panels = [(title, [summary[n][k]["mean"] for n in names], [summary[n][k]["std"] for n in names])
              for k, title in METRICS]
    bar_chart(names, panels, f"tiny world, held-out prompts: mean ± std over seeds {seeds}", path)


if __name__ == "__main__":
    main()
