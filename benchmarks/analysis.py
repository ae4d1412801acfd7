"""The registered analysis of `make bench-quality` (docs/PREREG-v4.md): pure functions over the
benchmark's raw figures, fixed before any student was trained on world v4.

`make bench-quality` refuses to run when this file's sha256 differs from the one in
docs/PREREG-v4.json: a change here is a new version of the protocol with its own prereg.

Inputs (all plain JSON from the benchmark):
- `test[seed][size][method]`: the per-prompt ground-truth reward of one student on its seed's test
  prompts (the same prompts, in the same order, for every student of that seed: paired);
- `classes[seed]`: each test prompt's flaw class (the flaw type its prompt admits, or "none");
- `valid[name]`: per-prompt ground-truth reward on the tuning seed's validation prompts, for the
  integrity checks, with `valid_classes` the validation prompts' classes.

The test of each hypothesis is an exact paired sign-flip permutation test over report seeds: the
statistic is the mean over seeds of the per-seed contrast (each seed's contrast is a fixed linear
combination of students' mean test rewards); under the null hypothesis each seed's contrast is
symmetric about 0, so its sign is flipped in all 2^n ways; the one-sided p-value is the share of
flips whose mean is at least the observed one. p-values are Holm-adjusted over the registered family.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def sign_flip_p(values: list[float]) -> float:
    """One-sided exact p-value of mean(values) > 0 under sign symmetry: the share of the 2^n sign
    assignments s whose mean(s * |values|) is at least the observed mean (ties count; floats
    compared with a relative tolerance of 1e-12 so that equal sums in another order tie)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0 or len(v) > 20:
        raise ValueError(f"sign-flip test over {len(v)} seeds: needs 1 to 20")
    observed = v.mean()
    mags = np.abs(v)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(v))))
    means = signs @ mags / len(v)
    tol = 1e-12 * max(1.0, float(mags.sum()))
    return float(np.mean(means >= observed - tol))


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment: sort ascending, multiply the i-th smallest (0-based) by (m - i),
    keep the running maximum, cap at 1."""
    order = sorted(pvalues, key=lambda k: (pvalues[k], k))
    m, running, out = len(order), 0.0, {}
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[k]))
        out[k] = running
    return out


def contrast(test: dict, terms: list, seed: str) -> float:
    """sum(coef * mean test reward of (method, size)) in one seed."""
    return float(sum(c * np.mean(test[seed][size][method]) for c, method, size in terms))


def hypothesis(test: dict, terms: list) -> dict:
    """One contrast over every report seed: its per-seed values, mean, standard error over seeds and
    the one-sided sign-flip p-value of mean > 0."""
    seeds = sorted(test, key=int)
    per_seed = [contrast(test, terms, s) for s in seeds]
    se = float(np.std(per_seed, ddof=1) / math.sqrt(len(per_seed))) if len(per_seed) > 1 else float("nan")
    return {"per_seed": dict(zip(seeds, per_seed)), "mean": float(np.mean(per_seed)), "se_seeds": se,
            "p": sign_flip_p(per_seed)}


def hypotheses(test: dict, registered: list[dict], alpha: float) -> list[dict]:
    """Every registered hypothesis, with Holm-adjusted p-values over the whole family and the verdict
    at `alpha` (supported when the adjusted p-value is below it)."""
    out = [{"id": h["id"], "text": h["text"], "terms": h["terms"], **hypothesis(test, h["terms"])}
           for h in registered]
    adjusted = holm({h["id"]: h["p"] for h in out})
    for h in out:
        h["p_holm"] = adjusted[h["id"]]
        h["supported"] = h["p_holm"] < alpha
    return out


def table(test: dict) -> dict:
    """Per size and method: test reward mean and sd over seeds, and the paired difference against
    every other method of that size (mean and standard error over seeds)."""
    seeds = sorted(test, key=int)
    out = {}
    for size in test[seeds[0]]:
        methods = list(test[seeds[0]][size])
        means = {m: [float(np.mean(test[s][size][m])) for s in seeds] for m in methods}
        out[size] = {m: {"reward": float(np.mean(means[m])),
                         "sd_seeds": float(np.std(means[m], ddof=1)) if len(seeds) > 1 else 0.0,
                         "minus": {o: _diff(means[m], means[o]) for o in methods if o != m}} for m in methods}
    return out


def _diff(a: list[float], b: list[float]) -> dict:
    d = np.subtract(a, b)
    return {"mean": float(d.mean()), "se_seeds": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0}


def per_flaw(test: dict, classes: dict) -> dict:
    """Mean test reward per size, method and flaw class (the prompts that admit that flaw type, and
    "none"), averaged first within a seed, then over seeds."""
    seeds = sorted(test, key=int)
    kinds = sorted({c for s in seeds for c in classes[s]})
    out = {}
    for size in test[seeds[0]]:
        out[size] = {}
        for method in test[seeds[0]][size]:
            out[size][method] = {k: _class_mean(test, classes, seeds, (size, method), k) for k in kinds}
    return out


def _class_mean(test, classes, seeds, who, kind) -> float:
    size, method = who
    per = [np.mean([r for r, c in zip(test[s][size][method], classes[s]) if c == kind])
           for s in seeds if kind in classes[s]]
    return float(np.mean(per))


def integrity(valid: dict, valid_classes: list[str], limits: dict) -> dict:
    """The registered checks on the tuning seed's validation prompts, before any method is compared:
    (a) the DPO teacher beats DPO on each student size (tuned, selected) by at least limits["a"];
    (b) on prompts that admit no flaw, the DPO teacher is at most limits["b"] below its SFT model;
    (c) the smallest SFT student is at least limits["c"] below the SFT teacher.
    `valid` maps "teacher-sft", "teacher-dpo", "student-sft:SIZE" and "dpo:SIZE" to per-prompt rewards."""
    mean = {k: float(np.mean(v)) for k, v in valid.items()}
    clean = {k: float(np.mean([r for r, c in zip(v, valid_classes) if c == "none"])) for k, v in valid.items()}
    sizes = sorted(k.split(":")[1] for k in valid if k.startswith("dpo:"))
    smallest = limits["smallest"]
    checks = {f"a:{size}": {"value": mean["teacher-dpo"] - mean[f"dpo:{size}"], "at_least": limits["a"]}
              for size in sizes}
    checks["b"] = {"value": clean["teacher-dpo"] - clean["teacher-sft"], "at_least": -limits["b"]}
    checks["c"] = {"value": mean["teacher-sft"] - mean[f"student-sft:{smallest}"], "at_least": limits["c"]}
    for c in checks.values():
        c["passed"] = c["value"] >= c["at_least"]
    return {"checks": checks, "passed": all(c["passed"] for c in checks.values()), "means": mean,
            "means_flaw_free": clean}
