"""Stage one: what the teacher (and its reference) know about the preference data, as artifacts.

For a recipe this produces, each through the store (content-addressed, resumable, verified):

1. ``teacher-topk``: the DPO teacher's top-k log-probs, tail and realized log-probs on the chosen
   and the rejected response of every pair (DCKD and KD read it).
2. ``seq-logp`` twice: realized-token log-probs on chosen and rejected under the reference model
   and under the student's init model (DPO on the student, implicit rewards).
3. ``generations``: the ADPA states, responses generated once (greedy) by the student init or the
   teacher; skipped when the states are the dataset's own responses.
4. ``advantage``: on the states, the teacher's top-k ids and log-probs and the reference's
   log-probs at exactly those ids (one gather, no fill rule), with both realized log-probs.

Tokenizers are compared before any model is loaded; input rows that cannot be used are
dropped by reason in every artifact alike (rows in = rows used + rows dropped).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from adpa.artifacts import ArtifactReader, ArtifactSpec, ArtifactWriter, Store, WriteOptions
from adpa.artifacts.writer import assemble, producer_versions
from adpa.schemas import sequences, token_topk
from adpa.schemas.keys import artifact_key
from adpa.stages.common.device import compute_dtype, pick_device
from adpa.stages.common.lm import Sequence
from adpa.stages.common.models import ResolvedModel, load_tokenizer
from adpa.stages.common.progress import Progress
from adpa.stages.common.ranks import Ranks
from adpa.stages.common.tokenizers import compare_tokenizers, tokenizer_fingerprint
from adpa.stages.common.vocab_artifact import publish_vocab
from adpa.stages.teacher_cache import backends
from adpa.stages.teacher_cache.pairs import DataError, Drop, detect_format, is_held_out, load_rows, parse_row
from adpa.stages.teacher_cache.render import Encoded, encode_pair
from adpa.stages.teacher_cache.settings import Data, TeacherCache

BLOCK_ROWS = 64  # input rows scored together at most: token-budget batching sorts within a block
GENERATED = ("student", "teacher")  # states that are generated (the others are the dataset's responses)


@dataclass
class Result:
    kind: str
    role: str
    key: str
    status: str  # built | resumed | reused
    manifest: dict
    seconds: float = 0.0


@dataclass(frozen=True)
class Request:
    """What stage one is asked for: the three models (teacher, reference, student), the preference data
    (a file or hub id) and the scoring settings."""

    models: dict[str, ResolvedModel]
    data: Data
    settings: TeacherCache


@dataclass(frozen=True)
class Inputs:
    """What stage one's artifact keys are made of: the models' keys, the settings, and what every artifact
    shares (`key_inputs`). Planned from the data's fingerprint and first row without rendering a row."""

    models: dict[str, ResolvedModel]  # teacher, reference, student
    settings: TeacherCache
    common: dict


@dataclass
class Run:
    """Everything the producers share: models, settings, tokenizer, prepared rows, the input spec."""

    inputs: Inputs
    data: Data
    store: Store
    backend: str  # the engine picked for the tasks it serves (backends.serving)
    device: str
    dtype_name: str
    vocab_size: int
    tok: object
    prepared: list[Encoded | Drop]  # one per input row
    truncated: int
    ranks: Ranks = field(default_factory=Ranks)
    _open: dict = field(default_factory=dict)

    @property
    def models(self) -> dict[str, ResolvedModel]:
        return self.inputs.models

    @property
    def settings(self) -> TeacherCache:
        return self.inputs.settings

    def engine(self, role: str, task: str) -> backends.Backend:
        """The loaded model of `role` on the engine that serves `task` (loaded once per engine and role)."""
        name = backends.serving(self.backend, task)
        if (name, role) not in self._open:
            tc = self.settings
            self._open[name, role] = backends.engine_class(name)(backends.EngineSpec(
                self.models[role], self.tok, self.vocab_size, self.dtype_name, self.device, tc.token_budget,
                max_model_len=tc.max_length + tc.max_new_tokens, max_logprobs=tc.k, local_rank=self.ranks.local_rank,
                share_prompts=tc.share_prompts))
        return self._open[name, role]

    def backend_of(self, task: str) -> str:
        return backends.serving(self.backend, task)

    def close(self) -> None:
        for e in self._open.values():
            e.close()
        self._open.clear()


def data_format(data: Data, first: dict) -> str:
    return data.format if data.format != "auto" else detect_format(first)


def prepare(data: Data, tc: TeacherCache, tok, strict: bool) -> tuple[list, dict, str]:
    """(Encoded-or-reason per input row, data fingerprint, format). `data.source` is a file or a hub id."""
    parsed_rows, fp, fmt = _parsed(data)
    prepared = []
    for i, parsed in enumerate(parsed_rows):
        enc = parsed if isinstance(parsed, Drop) else encode_pair(tok, parsed, tc.max_length)
        if strict and isinstance(enc, Drop):
            raise DataError(f"{data.source} row {i}: {enc.replace('_', ' ')} (--strict stops at the first unusable row)")
        prepared.append(enc)
    if all(isinstance(e, Drop) for e in prepared):  # nothing would be learnt from empty artifacts
        drops = ", ".join(f"{r} {n}" for r, n in sorted(Counter(prepared).items()))
        raise DataError(f"{data.source}: no usable row of {len(prepared)} (dropped: {drops}); "
                        f"teacher_cache.max_length is {tc.max_length}")
    return prepared, fp, fmt


def prompts_by_row(data: Data) -> tuple[dict[int, list[dict]], dict]:
    """Each usable input row's prompt messages by its index, as `prepare` parses them but not rendered, and
    the data's part of the artifacts' keys (what a cache's `inputs.data` must equal for these to be its rows)."""
    parsed, fp, fmt = _parsed(data)
    return {i: p.prompt for i, p in enumerate(parsed) if not isinstance(p, Drop)}, _data_key(data, fp, fmt)


def _parsed(data: Data) -> tuple[list, dict, str]:
    """(a Pair or drop reason per input row, the data's fingerprint, its format): what `prepare` renders."""
    rows, fp = load_rows(data.source, data.split, data.revision, data.limit)
    fmt = data_format(data, rows[0])
    return [_taken(parse_row(i, row, fmt), data) for i, row in enumerate(rows)], fp, fmt


def _data_key(data: Data, fp: dict, fmt: str) -> dict:
    """The data's part of the artifacts' keys: its fingerprint and format, the limit, and the held-out fraction
    when rows are held out."""
    held = {"take": data.take, "holdout": data.holdout} if data.take in ("kept", "held_out") else {}
    return fp | {"format": fmt, "limit": data.limit} | held


def _taken(parsed, data: Data):
    """A parsed row, or why this section does not read it (`data.take`: the rows held out for evaluation
    by `data.holdout`, or the others)."""
    if isinstance(parsed, Drop) or data.take in ("all", "training"):
        return parsed
    held = is_held_out(parsed, data.holdout)
    if data.take == "kept":
        return Drop.held_out if held else parsed
    return parsed if held else Drop.not_held_out


def key_inputs(data: Data, tc: TeacherCache, seen: tuple[dict, str], tok, dtype: str) -> dict:
    """What every stage-one artifact's key shares: the data (`seen`: its fingerprint and format; the limit;
    the held-out fraction when rows are held out), the rendering (the chat template's tokenizer, by its saved
    files; max_length) and the compute dtype."""
    fp, fmt = seen
    return {"data": _data_key(data, fp, fmt),
            "render": {"tokenizer": tokenizer_fingerprint(tok), "template_from": tc.chat_template,
                       "max_length": tc.max_length},
            "dtype": dtype}


def setup(req: Request, store: Store, strict: bool = False, say=print, ranks: Ranks | None = None) -> Run:
    """Tokenizers compared (before any model work), rows rendered, backend, device and dtype chosen."""
    models, data, tc = req.models, req.data, req.settings
    ranks = ranks or Ranks()
    toks = {r: load_tokenizer(m) for r, m in models.items()}
    vocab = compare_tokenizers(toks)
    backend = backends.pick(tc.backend, say)
    tok = toks[tc.chat_template]
    prepared, data_fp, fmt = prepare(data, tc, tok, strict)
    device = pick_device(ranks.local_rank)
    dtype = compute_dtype(tc.dtype, device)
    inputs = Inputs(models, tc, key_inputs(data, tc, (data_fp, fmt), tok, dtype))
    truncated = sum(e.truncated for e in prepared if isinstance(e, Encoded))
    return Run(inputs, data, store, backend, device, dtype, vocab, tok, prepared, truncated, ranks)


def plan(req: Request) -> dict[str, str]:
    """The keys of the artifacts stage one produces for these inputs (`planned_keys`), as `setup` makes
    them but from the data's fingerprint and first row and the chat template's tokenizer alone: no other
    row is parsed, none rendered, no model loaded."""
    models, data, tc = req.models, req.data, req.settings
    first, fp = load_rows(data.source, data.split, data.revision, limit=1)
    tok = load_tokenizer(models[tc.chat_template])
    dtype = compute_dtype(tc.dtype, pick_device())
    return planned_keys(Inputs(models, tc, key_inputs(data, tc, (fp, data_format(data, first[0])), tok, dtype)))


@dataclass
class Job:
    """One artifact to produce: what keys it, and per input row what to score (or a drop reason).
    `engines`: the (role, task) pairs it runs, loaded only when there is work; the first names the backend."""

    kind: str
    role: str
    inputs: dict
    codec: object
    layout: dict
    items: list
    make_rows: Callable[[list], dict]
    engines: tuple[tuple[str, str], ...]
    extra_stats: dict = field(default_factory=dict)

    @property
    def spec(self) -> ArtifactSpec:
        return ArtifactSpec(self.kind, self.inputs, self.codec, self.layout, len(self.items))


def job_producer(job: Job, backend: str) -> dict:
    """The manifest's `producer` of the job's artifact when `backend` was picked."""
    return producer_versions(backends.producer(backend, tuple(task for _, task in job.engines)))


@dataclass
class Written:
    """What one writer (a torchrun rank, a Ray block) did: status, tokens scored and seconds."""

    key: str
    status: str  # built | resumed | reused (complete, or this slice already done)
    tokens: int = 0
    seconds: float = 0.0
    manifest: dict | None = None  # when the whole artifact was already complete


def write_slice(run: Run, job: Job, say) -> Written:
    """Write `run.ranks`' slice of the job's artifact (all of it for one process); never publishes."""
    rk = run.ranks
    options = WriteOptions(max_shard_rows=run.settings.shard_rows, max_shard_bytes=64 << 20,
                           verify_reuse=run.settings.verify_reuse)
    with ArtifactWriter(run.store, job.spec, rank=rk.rank, world_size=rk.world_size, options=options) as w:
        if w.reused:
            return Written(w.key, "reused", manifest=w.manifest)
        if w.done:
            say(f"{job.kind} ({job.role}): {w.key} was produced by another process; publishing it")
            return Written(w.key, "reused")
        for role_, task in job.engines:  # loaded only when there is work, outside the timing
            run.engine(role_, task)
        t0 = time.perf_counter()
        status = "resumed" if w.resume_from > w.start else "built"
        if w.start < w.resume_from < w.end:
            say(f"{job.kind} ({job.role}): resuming {w.key} at input row {w.resume_from}")
        tokens, items, codec = 0, job.items, job.codec
        # A block never spans more than one shard (2 sequences per input row at most), so a killed
        # run loses at most one shard of work.
        block = max(1, min(BLOCK_ROWS, run.settings.shard_rows // 2))
        bar = Progress(w.end - w.start, f"{job.kind} ({job.role})", "row", say, w.resume_from - w.start,
                       active=rk.rank == 0)
        for start in range(w.resume_from, w.end, block):
            idx = range(start, min(w.end, start + block))
            rows = job.make_rows([(i, items[i]) for i in idx if not isinstance(items[i], Drop)])
            for i in idx:
                if isinstance(items[i], Drop):
                    w.drop(i, items[i])
                else:
                    w.add(i, rows[i])
                    tokens += sum(codec.row_tokens(r) for r in rows[i])
            bar.postfix(f"{tokens / (time.perf_counter() - t0):,.0f} tok/s")
            bar.update(len(idx))
        bar.close()
        secs = time.perf_counter() - t0
        w.finish({"seconds": round(secs, 3), "tokens_per_s": round(tokens / secs, 1) if secs else None,
                  "tokens_this_run": tokens, "device": run.device, "truncated_responses": run.truncated}
                 | job.extra_stats)
    return Written(w.key, status, tokens, secs)


def _produce(run: Run, job: Job, say) -> Result:
    """Write one artifact: this process's slice, then (rank 0, once every rank is done) the manifest."""
    w = write_slice(run, job, say)
    if w.manifest is not None:
        say(f"{job.kind} ({job.role}): complete artifact {w.key} reused")
        return Result(job.kind, job.role, w.key, "reused", w.manifest)
    rk = run.ranks
    rk.barrier()  # every rank's slice is done
    if rk.rank == 0:
        assemble(run.store, job.spec, job_producer(job, run.backend))
    rk.barrier()  # the manifest is published
    return Result(job.kind, job.role, w.key, w.status, run.store.manifest(w.key), w.seconds)


def _sides(enc: Encoded):
    return (("chosen", enc.chosen_ids), ("rejected", enc.rejected_ids))


def topk_inputs(ins: Inputs) -> dict:
    return ins.common | {"model": ins.models["teacher"].identity, "role": "teacher", "k": ins.settings.k,
                         "sides": ["chosen", "rejected"]}


def seq_logp_inputs(ins: Inputs, role: str) -> dict:
    return ins.common | {"model": ins.models[role].identity, "role": role, "sides": ["chosen", "rejected"]}


def generations_inputs(ins: Inputs, role: str) -> dict:
    return ins.common | {"model": ins.models[role].identity, "role": role, "decoding": "greedy",
                         "max_new_tokens": ins.settings.max_new_tokens}


def advantage_inputs(ins: Inputs, states_key: str | None) -> dict:
    tc = ins.settings
    return ins.common | {
        "teacher": ins.models["teacher"].identity, "reference": ins.models[tc.advantage_reference].identity,
        "reference_role": "teacher-sft" if tc.advantage_reference == "reference" else "student-init",
        "reference_gather": "exact", "k": tc.k, "states": tc.states, "states_artifact": states_key}


def planned_keys(ins: Inputs) -> dict[str, str]:
    """The keys of the artifacts these inputs make (or reuse), computed without any model:
    teacher_topk, reference_logp, student_logp, generations (generated states only), advantage."""
    tc = ins.settings
    key = lambda kind, inputs, codec: artifact_key(kind, inputs, {"name": codec.name, "version": codec.version})  # noqa: E731
    out = {"teacher_topk": key("teacher-topk", topk_inputs(ins), token_topk.Codec),
           "reference_logp": key("seq-logp", seq_logp_inputs(ins, "reference"), sequences.Codec),
           "student_logp": key("seq-logp", seq_logp_inputs(ins, "student"), sequences.Codec)}
    if tc.states in GENERATED:
        out["generations"] = key("generations", generations_inputs(ins, tc.states), sequences.Codec)
    out["advantage"] = key("advantage", advantage_inputs(ins, out.get("generations")), token_topk.Codec)
    return out


def _responses(items: list[tuple[int, Encoded]]) -> list[tuple[int, str, str, Sequence]]:
    """(input row, pair id, side, prompt + response) of both responses of every pair."""
    return [(i, enc.pair.pair_id, side, Sequence(enc.prompt_ids + resp, len(enc.prompt_ids))) for i, enc in items
            for side, resp in _sides(enc)]


def teacher_topk_job(run: Run) -> Job:
    k = run.settings.k

    def rows(items):
        meta = _responses(items)
        scored = run.engine("teacher", "topk").topk([m[3] for m in meta], k)
        out = defaultdict(list)
        for (i, pid, side, s), r in zip(meta, scored):
            out[i].append(token_topk.Row(pid, side, i, s.ids, s.prompt_len, r.topk_ids, r.topk_logp, r.realized_logp,
                                         tail_logp=r.tail_logp))
        return out

    return Job("teacher-topk", "teacher", topk_inputs(run.inputs), token_topk.Codec,
               {"k": k, "vocab_size": run.vocab_size, "with_ref": False}, run.prepared, rows, (("teacher", "topk"),))


def teacher_topk(run: Run, say) -> Result:
    return _produce(run, teacher_topk_job(run), say)


def seq_logp_job(run: Run, role: str) -> Job:
    def rows(items):
        meta = _responses(items)
        scored = run.engine(role, "seq_logp").seq_logp([m[3] for m in meta])
        out = defaultdict(list)
        for (i, pid, side, s), r in zip(meta, scored):
            out[i].append(sequences.Row(pid, side, i, s.ids, s.prompt_len, realized_logp=r.realized_logp))
        return out

    return Job("seq-logp", role, seq_logp_inputs(run.inputs, role), sequences.Codec,
               {"vocab_size": run.vocab_size, "with_logp": True}, run.prepared, rows, ((role, "seq_logp"),))


def seq_logp(run: Run, role: str, say) -> Result:
    return _produce(run, seq_logp_job(run, role), say)


def generations_job(run: Run, role: str) -> Job:
    tc = run.settings

    def rows(items):
        outs = run.engine(role, "generate").generate([enc.prompt_ids for _, enc in items], tc.max_new_tokens)
        out = {}
        for (i, enc), (resp, finish) in zip(items, outs):
            room = tc.max_length - len(enc.prompt_ids)
            if len(resp) > room:
                resp, finish = resp[:room], "length"
            out[i] = [sequences.Row(enc.pair.pair_id, "generated", i, enc.prompt_ids + resp, len(enc.prompt_ids),
                                    finish)]
        return out

    return Job("generations", role, generations_inputs(run.inputs, role), sequences.Codec,
               {"vocab_size": run.vocab_size, "with_logp": False}, run.prepared, rows, ((role, "generate"),))


def generations(run: Run, role: str, say) -> Result:
    return _produce(run, generations_job(run, role), say)


def _states(run: Run, gen_key: str | None) -> list[sequences.Row | Drop]:
    """Per input row: its ADPA state (a dataset response, or the generated one), or its drop reason."""
    states = run.settings.states
    if gen_key is None:
        return [e if isinstance(e, Drop) else
                sequences.Row(e.pair.pair_id, states, i, e.prompt_ids + (e.chosen_ids if states == "chosen"
                                                                          else e.rejected_ids), len(e.prompt_ids))
                for i, e in enumerate(run.prepared)]
    by_index = {r.input_index: r for r in ArtifactReader(run.store.location(gen_key))}
    return [e if isinstance(e, Drop) else by_index[i] for i, e in enumerate(run.prepared)]


def advantage_job(run: Run, gen_key: str | None) -> Job:
    tc = run.settings
    k, ref_role = tc.k, tc.advantage_reference

    def rows(items):
        seqs = [Sequence(list(map(int, st.token_ids)), st.prompt_len) for _, st in items]
        t = run.engine("teacher", "topk").topk(seqs, k)
        ref = run.engine(ref_role, "gather").gather(seqs, [r.topk_ids for r in t])
        return {i: [token_topk.Row(st.pair_id, st.side, i, s.ids, s.prompt_len, tr.topk_ids, tr.topk_logp,
                                   tr.realized_logp, tail_logp=tr.tail_logp, ref_topk_logp=rr.gathered_logp,
                                   ref_realized_logp=rr.realized_logp)]
                for (i, st), s, tr, rr in zip(items, seqs, t, ref)}

    return Job("advantage", f"states={tc.states}, reference={ref_role}", advantage_inputs(run.inputs, gen_key),
               token_topk.Codec, {"k": k, "vocab_size": run.vocab_size, "with_ref": True}, _states(run, gen_key), rows,
               (("teacher", "topk"), (ref_role, "gather")),
               # The reference is gathered at exactly the teacher's ids on every backend: no fill rule.
               {"reference_exact_mass_fraction": 1.0, "reference_gather_by": run.backend_of("gather")})


def advantage(run: Run, gen: Result | None, say) -> Result:
    return _produce(run, advantage_job(run, gen.key if gen else None), say)


def run_teacher_cache(req: Request, store: Store, strict: bool = False, say=print,
                      ranks: Ranks | None = None) -> list[Result]:
    """Every artifact of stage one for these models, data and settings (each built, resumed or reused)."""
    ranks = ranks or Ranks()
    say = ranks.speaker(say)
    run = setup(req, store, strict, say, ranks)
    tc = req.settings
    dropped = Counter(e for e in run.prepared if isinstance(e, Drop))
    if ranks.world_size > 1:
        say(f"{ranks.world_size} ranks, each scoring its own slice of the rows")
    say(f"data: {len(run.prepared)} rows, {len(run.prepared) - sum(dropped.values())} usable"
        + (f", dropped {dict(dropped)}" if dropped else "") + f"; vocabulary {run.vocab_size} shared by all models;"
        f" {run.device} {run.dtype_name}")
    overall = Overall(5 if tc.states in GENERATED else 4, say)
    try:
        vocabulary_table(run, say)
        results = [overall(lambda: teacher_topk(run, say), "teacher-topk (teacher)")]
        results += [overall(lambda r=role: seq_logp(run, r, say), f"seq-logp ({role})") for role in ("reference", "student")]
        gen = overall(lambda: generations(run, tc.states, say), f"generations ({tc.states})") \
            if tc.states in GENERATED else None
        results += [r for r in (gen, overall(lambda: advantage(run, gen, say), "advantage")) if r is not None]
    finally:
        run.close()
    return results


def vocabulary_table(run: Run, say) -> None:
    """The vocabulary table of the tokenizer that renders the artifacts, once per tokenizer in the store: what
    a student of another tokenizer reads (a run whose artifacts all exist adds it when it is missing)."""
    key, reused = publish_vocab(run.store, run.tok, run.inputs.common["render"]["tokenizer"])
    say(f"vocabulary table {key} ({'reused' if reused else 'built'}): what a student of another tokenizer reads")


class Overall:
    """Stage one's progress over its artifacts: "stage one [i/n] WHAT (S s so far)" before each."""

    def __init__(self, n: int, say):
        self.n, self.say, self.i, self.t0 = n, say, 0, time.perf_counter()

    def __call__(self, make: Callable[[], Result], what: str) -> Result:
        self.i += 1
        self.say(f"stage one [{self.i}/{self.n}] {what} ({time.perf_counter() - self.t0:,.0f} s so far)")
        return make()


def run_states(req: Request, store: Store, say=print, ranks: Ranks | None = None) -> list[Result]:
    """Only the ADPA states and their advantages (ADPA+: states generated by a distilled student)."""
    ranks = ranks or Ranks()
    say = ranks.speaker(say)
    run = setup(req, store, False, say, ranks)
    states = req.settings.states
    try:
        gen = generations(run, states, say) if states in GENERATED else None
        return [r for r in (gen, advantage(run, gen, say)) if r is not None]
    finally:
        run.close()


def summary_table(results: list[Result]) -> str:
    """One line per artifact, then the dropped input rows by reason (the same in every artifact)."""
    lines = [f"{'artifact':13} {'role':36} {'status':8} {'backend':7} {'rows':>6} {'tokens':>8} {'dropped':>7}"
             f" {'B/token':>8} {'tok/s':>8}  key"]
    for r in results:
        m, t = r.manifest, r.manifest["totals"]
        bpt = f"{t['bytes'] / t['tokens']:.1f}" if t["tokens"] else "-"
        tps = m["stats"].get("tokens_per_s")
        lines.append(f"{r.kind:13} {r.role:36} {r.status:8} {m['producer'].get('backend', '-'):7} {t['rows']:>6} "
                     f"{t['tokens']:>8} {sum(m['dropped'].values()):>7} {bpt:>8} {tps if tps is not None else '-':>8}"
                     f"  {r.key}")
    drops = results[0].manifest["dropped"] if results else {}
    if drops:
        lines.append("dropped input rows by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    return "\n".join(lines)
