"""What stage one would do, before it does it (`adpa teacher-cache --dry-run`).

Every row is read and rendered as the real run renders it (rows in = usable + dropped by reason, the
tokens each artifact would store), each planned artifact is looked up in the store (complete: reused;
partial: resumed; missing: built), and the cost of what is left to build comes from a measured probe:
the same stage one on the first n/8 and the first n rows (n = `probe_rows`, by default one block of
rows, batched as the real run batches), each into a throwaway store, with the same models, backend and
settings. The first run warms the process up; per artifact,

    seconds = tokens * seconds(n) / tokens(n)
    bytes   = fixed + slope * tokens,   slope = (bytes(n) - bytes(n/8)) / (tokens(n) - tokens(n/8))

(a shard's headers are the fixed part; a real run's larger shards compress better, so the bytes are an
upper bound: 3-76% high on 256 rows, docs/BENCHMARKS.md), plus the models' loading time once.
`tokens` is exact for the scored responses; for generated states (not yet generated) it is the probe's generated tokens per usable row times the usable rows.
A partial artifact is counted whole (the real run resumes it). The probe runs in this process on the
local engine: for torchrun or Ray, divide by the workers. Nothing is written to the user's store (built-in
models that are absent are built, as the real run would).
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace

from adpa.artifacts import Store
from adpa.stages.common.ranks import silent
from adpa.stages.teacher_cache.pairs import DataError, Drop
from adpa.stages.teacher_cache.render import Encoded
from adpa.stages.teacher_cache.run import BLOCK_ROWS, GENERATED, Request, planned_keys, run_teacher_cache, setup


@dataclass(frozen=True)
class Planned:
    name: str  # teacher_topk, reference_logp, student_logp, generations, advantage
    key: str
    state: str  # complete (reused) | partial (resumed) | missing (built)
    tokens: int  # the response tokens it stores
    exact: bool  # tokens counted, not extrapolated from the probe
    seconds: float  # estimated, 0 when complete
    bytes: int  # estimated when not complete, else the manifest's


@dataclass(frozen=True)
class Estimate:
    rows: int
    dropped: dict[str, int]
    prompt_tokens: int
    artifacts: list[Planned]
    probe_rows: int  # the larger probe's rows (0: nothing to build, no probe)
    load_seconds: float  # the probe's model loading, counted once when anything is left to build

    @property
    def usable(self) -> int:
        return self.rows - sum(self.dropped.values())

    @property
    def seconds(self) -> float:
        todo = [a.seconds for a in self.artifacts if a.state != "complete"]
        return sum(todo) + (self.load_seconds if todo else 0.0)


def estimate(req: Request, store: Store, probe_rows: int = BLOCK_ROWS, say=print) -> Estimate:
    """Stage one's plan for `req` against `store`, with its cost measured on `probe_rows` rows (no probe when
    every artifact is complete)."""
    run = setup(req, store, False, silent)
    keys = planned_keys(run.inputs)
    run.close()
    usable = [e for e in run.prepared if isinstance(e, Encoded)]
    dropped = Counter(e for e in run.prepared if isinstance(e, Drop))
    states = {name: store.entry(key)["state"] for name, key in keys.items()}
    todo = any(s != "complete" for s in states.values())
    probe = _probe(req, probe_rows, list(keys), say) if todo else None
    known = _exact_tokens(usable, req.settings.states)
    artifacts = []
    for name, key in keys.items():
        if states[name] == "complete":
            t = store.manifest(key)["totals"]
            artifacts.append(Planned(name, key, "complete", t["tokens"], True, 0.0, t["bytes"]))
            continue
        m = probe.large[name]["totals"]
        tokens = known.get(name, round(m["tokens"] / max(1, m["rows"]) * len(usable)))
        artifacts.append(Planned(name, key, states[name], tokens, name in known, *probe.cost(name, tokens)))
    return Estimate(len(run.prepared), dict(dropped), sum(len(e.prompt_ids) for e in usable), artifacts,
                    min(probe_rows, len(run.prepared)) if todo else 0, probe.load_seconds if todo else 0.0)


def _exact_tokens(usable: list[Encoded], states: str) -> dict[str, int]:
    """The response tokens of the artifacts whose sequences are known before any model runs."""
    both = sum(len(e.chosen_ids) + len(e.rejected_ids) for e in usable)
    out = {"teacher_topk": both, "reference_logp": both, "student_logp": both}
    if states not in GENERATED:
        out["advantage"] = sum(len(e.chosen_ids if states == "chosen" else e.rejected_ids) for e in usable)
    return out


@dataclass(frozen=True)
class Probe:
    """Stage one measured twice in this process, on the first n/8 and the first n rows. The small run warms
    the process up (first calls, allocations); the seconds come from the large one alone, at its throughput
    (n = stage one's block of rows by default, so it batches as the real run does). Bytes are a line through
    both (the shard headers are the fixed part)."""

    small: dict[str, dict]  # name -> manifest
    large: dict[str, dict]
    load_seconds: float

    def cost(self, name: str, tokens: int) -> tuple[float, int]:
        """(seconds, bytes) of `name` storing `tokens` tokens."""
        (t1, _, b1), (t2, s2, b2) = (_measured(m[name]) for m in (self.small, self.large))
        slope = (b2 - b1) / (t2 - t1) if t2 > t1 else 0.0
        fixed = max(0.0, b1 - slope * t1) if slope > 0 else 0.0
        slope = slope if slope > 0 else b2 / max(1, t2)
        return tokens * s2 / max(1, t2), round(fixed + slope * tokens)


def _measured(m: dict) -> tuple[int, float, int]:
    return m["stats"]["tokens_this_run"], m["stats"]["seconds"], m["totals"]["bytes"]


def _probe(req: Request, rows: int, names: list[str], say) -> Probe:
    """Stage one on the first `rows // 8` and `rows` rows, each in a throwaway store, in this process
    (`names`: planned_keys' order, which is stage one's); the models' loading is the time outside the
    artifacts' timed scoring."""
    out, loads = [], []
    for n in (max(1, rows // 8), rows):
        limit = min(n, req.data.limit or n)
        say(f"probe: stage one on the first {limit} rows, in a temporary store")
        with tempfile.TemporaryDirectory(prefix="adpa-probe-") as tmp:
            t0 = time.perf_counter()
            try:
                results = run_teacher_cache(replace(req, data=replace(req.data, limit=limit)), Store(tmp), say=silent)
            except DataError as e:
                raise DataError(f"the probe's first {limit} rows: {e} (raise --probe-rows)") from None
            loads.append(max(0.0, time.perf_counter() - t0 - sum(r.seconds for r in results)))
        out.append({name: r.manifest for name, r in zip(names, results)})
    return Probe(out[0], out[1], min(loads))


def table(est: Estimate, source: str) -> str:
    """The dry run's report: the data, one line per artifact, the totals."""
    drops = ", ".join(f"{k} {v}" for k, v in sorted(est.dropped.items()))
    lines = [f"data: {source}: {est.rows} rows, {est.usable} usable" + (f" (dropped: {drops})" if drops else "")
             + f"; prompts {est.prompt_tokens:,} tokens",
             f"{'artifact':15} {'state':9} {'tokens':>12} {'bytes':>12} {'seconds':>9}  key"]
    for a in est.artifacts:
        tok = f"{a.tokens:,}" + ("" if a.exact else "~")
        lines.append(f"{a.name:15} {a.state:9} {tok:>12} {a.bytes:>12,} {a.seconds:>9.1f}  {a.key}")
    todo = [a for a in est.artifacts if a.state != "complete"]
    if not todo:
        return "\n".join(lines + ["nothing to build: every artifact is complete and would be reused"])
    lines.append(f"to build: {len(todo)} of {len(est.artifacts)} artifacts, at most about {sum(a.bytes for a in todo):,} bytes"
                 f" and {est.seconds:,.0f} s (models loaded in {est.load_seconds:.1f} s; the rest at the throughput of a "
                 f"probe of {est.probe_rows} rows; ~: tokens extrapolated from the probe)")
    return "\n".join(lines)
