"""Stage one on Ray Data (`teacher_cache.engine: ray`): a pool of workers scores blocks of rows.

Each artifact's input rows are cut into B blocks (`ray_block_rows` rows each, B <= 999), fixed by
the row count alone so that any number of workers, on any run, agrees on them. Block b is written
exactly as rank b of B would write it under torchrun (`ArtifactWriter`, shards `shard-bbb-*`, a
progress record per shard), so the store's resume rules do the fault tolerance:

* a worker killed mid-block: Ray Data restarts the actor and retries the block; the retry keeps
  the block's committed shards (re-checked by sha256) and goes on from the first row not covered;
* a driver killed mid-run: running it again reuses complete artifacts, skips finished blocks and
  resumes the others;
* at-least-once execution is safe: a block that already finished only reports itself again.

The driver publishes one manifest per artifact once every block is in (`assemble`), in block
order, so the artifact has the key, rows and row order of a local run. Two passes over the pool
(what the dataset alone gives, then the advantages of the states); a worker opens its engines
(vLLM or transformers, through the same backend interface) once per pass.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, replace

from adpa.artifacts import Store
from adpa.artifacts.writer import MAX_WRITERS, assemble
from adpa.stages.common.models import ResolvedModel
from adpa.stages.common.ranks import Ranks, silent
from adpa.stages.teacher_cache import run as local
from adpa.stages.teacher_cache.settings import Data, TeacherCache


def blocks(n_rows: int, block_rows: int) -> int:
    """How many blocks n rows make: a function of the rows and the setting only."""
    return max(1, min(MAX_WRITERS, math.ceil(n_rows / block_rows), n_rows))


@dataclass
class Spec:
    """What a worker needs to rebuild the driver's run: plain data, pickled by Ray to its workers."""

    models: dict[str, ResolvedModel]
    data: Data
    settings: TeacherCache
    store_root: str  # a folder, or a URL store and its working copy (a path on every node)
    workdir: str | None
    backend: str
    jobs: list[str]  # each teacher_topk | seq_logp:ROLE | generations:ROLE | advantage
    states_key: str | None  # advantage: the generations artifact (None: the dataset's responses)
    n_blocks: int


def _job(run: local.Run, name: str, states_key: str | None) -> local.Job:
    what, _, role = name.partition(":")
    if what == "teacher_topk":
        return local.teacher_topk_job(run)
    if what == "seq_logp":
        return local.seq_logp_job(run, role)
    if what == "generations":
        return local.generations_job(run, role)
    if what == "advantage":
        return local.advantage_job(run, states_key)
    raise ValueError(f"unknown stage-one job {name!r}")


class BlockWorker:
    """A Ray Data actor: its engines opened once, then per call one block (writer rank) of every job."""

    def __init__(self, spec: Spec):
        self.spec = spec
        settings = replace(spec.settings, backend=spec.backend)  # the driver's pick, not `auto` again
        self.run = local.setup(local.Request(spec.models, spec.data, settings), Store(spec.store_root, spec.workdir),
                               say=silent)
        self.jobs = [_job(self.run, name, spec.states_key) for name in spec.jobs]

    def __call__(self, batch: dict) -> dict:
        out = {"block": [], "job": [], "status": [], "tokens": [], "seconds": []}
        for b in batch["id"]:
            self.run.ranks = Ranks(int(b), self.spec.n_blocks)
            for name, job in zip(self.spec.jobs, self.jobs):
                w = local.write_slice(self.run, job, silent)
                for col, v in zip(out, (int(b), name, w.status, w.tokens, w.seconds)):
                    out[col].append(v)
        return out

    def __del__(self):
        if getattr(self, "run", None) is not None:
            self.run.close()


def pool_size(tc, n_blocks: int) -> int:
    """Workers in the pool: `ray_workers`, never more than blocks (each loads the models before its first)."""
    return max(1, min(tc.ray_workers, n_blocks))


def run_pass(ray, run: local.Run, spec: Spec, say) -> list[local.Result]:
    """The jobs of one stage over the pool, every block of each; each artifact published by the driver
    once all its blocks are in. Complete artifacts are reused and not run."""
    jobs = {name: _job(run, name, spec.states_key) for name in spec.jobs}
    results, todo = {}, []
    for name, job in jobs.items():
        key = job.spec.key
        if (m := run.store.manifest(key)) is not None:
            say(f"{job.kind} ({job.role}): complete artifact {key} reused")
            results[name] = local.Result(job.kind, job.role, key, "reused", m)
        else:
            todo.append(name)
    if todo:
        tc = spec.settings
        gpus = tc.ray_gpus_per_worker
        if gpus is None:  # one GPU per worker on a cluster that has them
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        t0 = time.perf_counter()
        # Block ids from memory, not `ray.data.range`: its read task would wait for a CPU the pool holds.
        ds = ray.data.from_items([{"id": b} for b in range(spec.n_blocks)], override_num_blocks=spec.n_blocks)
        try:
            # Ray Data restarts dead actors without end; a block's retries are bounded.
            pool = ray.data.ActorPoolStrategy(size=pool_size(tc, spec.n_blocks))
            with warnings.catch_warnings():
                # Ray 2.60 has no named parameter for a bounded per-block retry count yet: max_task_retries
                # still goes through **ray_remote_args, which warns that it is deprecated.
                warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
                mapped = ds.map_batches(BlockWorker, fn_constructor_kwargs={"spec": replace(spec, jobs=todo)},
                                        batch_size=1, compute=pool, num_cpus=tc.ray_cpus_per_worker,
                                        num_gpus=gpus, max_task_retries=tc.ray_retries)
            reports = mapped.take_all()
        except ray.exceptions.RayError as e:
            first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise RuntimeError(f"{', '.join(todo)}: a block failed after {tc.ray_retries} retries ({first[:300]}); "
                               f"worker logs: /tmp/ray/session_latest/logs; run the command again to resume") from None
        secs = time.perf_counter() - t0
        for name in todo:
            job, mine = jobs[name], [r for r in reports if r["job"] == name]
            missing = sorted(set(range(spec.n_blocks)) - {r["block"] for r in mine})
            if missing:
                raise RuntimeError(f"{job.kind} ({job.role}): blocks {missing} did not report")
            m = assemble(run.store, job.spec, local.job_producer(job, spec.backend))
            statuses = [r["status"] for r in mine]
            tokens = sum(r["tokens"] for r in mine)
            say(f"{job.kind} ({job.role}): {spec.n_blocks} blocks on {pool_size(tc, spec.n_blocks)} workers, "
                f"{tokens:,} tokens; blocks {_count(statuses)}")
            results[name] = local.Result(job.kind, job.role, m["key"], "built" if set(statuses) == {"built"}
                                         else "resumed", m, secs)
        say(f"ray: {', '.join(todo)}: {len(run.prepared)} rows in {secs:,.1f} s "
            f"({len(run.prepared) / secs:,.2f} rows/s, engine start-up included)")
    return [results[name] for name in spec.jobs]


def _count(statuses: list[str]) -> str:
    return ", ".join(f"{s} {statuses.count(s)}" for s in sorted(set(statuses)))


def run_teacher_cache(req: local.Request, store: Store, strict: bool = False, say=print,
                      states_only: bool = False) -> list[local.Result]:
    """Every artifact of stage one (or only the ADPA states and their advantages) on a Ray cluster:
    the one `ray.init()` finds (RAY_ADDRESS, `ray job submit`) or a local one it starts."""
    import ray
    import ray.data
    import ray.exceptions  # noqa: F401  (run_pass catches its errors)

    models, data, tc = req.models, req.data, req.settings
    run = local.setup(req, store, strict, say)
    if not states_only:
        local.vocabulary_table(run, say)
    n = len(run.prepared)
    nb = blocks(n, tc.ray_block_rows)
    if not ray.is_initialized():
        ray.init(address=tc.ray_address, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = True  # bars on a terminal
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its INFO lines (plans, progress as log lines)
    res = ray.cluster_resources()
    say(f"ray: {n} rows in {nb} blocks, {pool_size(tc, nb)} workers; the cluster has {res.get('CPU', 0):g} CPUs, "
        f"{res.get('GPU', 0):g} GPUs")

    def spec(jobs: list[str], states_key: str | None = None) -> Spec:
        return Spec(models, data, tc, store.url or str(store.root.resolve()),
                    str(store.root.resolve()) if store.url else None, run.backend, jobs, states_key, nb)

    generated = tc.states in local.GENERATED
    try:
        # Two passes: everything read from the dataset alone, then the advantages of the states.
        first = ([] if states_only else ["teacher_topk", "seq_logp:reference", "seq_logp:student"]) \
            + ([f"generations:{tc.states}"] if generated else [])
        results = run_pass(ray, run, spec(first), say) if first else []
        gen = results[-1] if generated else None
        results += run_pass(ray, run, spec(["advantage"], gen.key if gen else None), say)
    finally:
        run.close()
    return results
