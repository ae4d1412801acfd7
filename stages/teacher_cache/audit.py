"""`adpa cache audit`: re-score sampled rows of a stage-one artifact with the models its manifest names.

A signature says who produced an artifact; it does not say the values are the teacher's. The audit
checks the content itself, without trusting the producer: N rows drawn at random are scored again
(transformers, the manifest's dtype) and each stored log-prob is compared with the recomputed one
at the same token ids. The largest difference is reported against the artifact's stated fidelity
(top-k codes: LOGP_STEP / 2; float32 values: exact) plus a slack for engines and batch shapes
(vLLM vs transformers, other kernels): beyond it the artifact is not what it claims (exit 1).

Models are loaded from what the manifest names: a built-in (its store artifact, verified first), a
hub id at its revision, or a local folder the auditor names with --model ROLE=PATH, whose weights
must hash to the manifest's sha256.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adpa.artifacts import ArtifactReader, Store, verify_artifact
from adpa.artifacts.transfer import local_copy
from adpa.schemas import token_topk
from adpa.stages.common.device import pad_id
from adpa.stages.common.lm import HFScorer, Sequence
from adpa.stages.common.models import ResolvedModel, load_model, load_tokenizer, resolve

SLACK = 0.01  # nats: transformers vs vLLM, bf16 kernels, batch composition (tests/test_vllm_parity.py)
# What is compared, per kind: (model role in the manifest's inputs, stored column, how).
# "rank": the stored ids are the model's top k (the k-th recomputed log-prob is not above the lowest
# recomputed log-prob at a stored id, up to the slack; ties allowed).
CHECKS = {
    "teacher-topk": (("model", "topk_ids", "rank"), ("model", "topk_logp", "gather"),
                     ("model", "realized_logp", "realized")),
    "seq-logp": (("model", "realized_logp", "realized"),),
    "advantage": (("teacher", "topk_ids", "rank"), ("teacher", "topk_logp", "gather"),
                  ("teacher", "realized_logp", "realized"), ("reference", "ref_topk_logp", "gather"),
                  ("reference", "ref_realized_logp", "realized")),
}


class AuditError(ValueError):
    """An artifact or a model that cannot be audited; one line naming it."""


@dataclass
class Finding:
    role: str
    column: str
    bound: float
    max_diff: float
    where: str  # the row and position of the largest difference

    @property
    def ok(self) -> bool:
        return self.max_diff <= self.bound


def model_for(identity: dict, role: str, store: Store, given: dict[str, str]) -> ResolvedModel:
    """A loadable model that is the one `identity` names (a given folder must hash to it)."""
    if role in given:
        m = resolve(given[role])
        if "weights_sha256" in identity and m.identity.get("weights_sha256") != identity["weights_sha256"]:
            raise AuditError(f"--model {role}={given[role]}: its weights do not hash to the manifest's "
                             f"{identity['weights_sha256'][:16]}…: not the model the artifact names")
        return m
    if "artifact" in identity:  # a built-in world's model: its store artifact, verified before use
        d = local_copy(store, identity["artifact"])  # a URL store's copy is pulled to load it
        if not d.is_dir():
            raise AuditError(f"the {role} ({identity.get('builtin', identity['artifact'])}) is not in store "
                             f"{store}: build or pull {identity['artifact']}, or name it with --model {role}=PATH")
        verify_artifact(d)
        return resolve(str(d))
    if "hub_id" in identity:
        return resolve(f"{identity['hub_id']}@{identity['revision']}")
    raise AuditError(f"the {role} was a local folder ({identity.get('folder')}): name your copy with "
                     f"--model {role}=PATH (its weights must hash to {identity.get('weights_sha256', '?')[:16]}…)")


@dataclass(frozen=True)
class Sample:
    """Which rows are scored again (`rows` of them, drawn with `seed`) and how close they must come: the
    stated fidelity plus `slack` nats for other engines and kernels."""

    rows: int
    seed: int = 0
    slack: float = SLACK


def audit(store: Store, key: str, drawn: Sample, given: dict[str, str] | None = None, device: str = "cpu",
          say=print) -> tuple[list[Finding], int]:
    """(findings per stored column, rows audited). The artifact is verified first (sizes, sha256s)."""
    import torch

    sample, seed, slack = drawn.rows, drawn.seed, drawn.slack
    d = store.location(key)
    m = verify_artifact(d)
    if m["kind"] not in CHECKS:
        raise AuditError(f"{key}: a {m['kind']} artifact holds no scores to audit (kinds: {', '.join(CHECKS)})")
    if sample < 1:
        raise AuditError(f"--sample must be >= 1, got {sample}")
    inputs, given = m["inputs"], given or {}
    n_rows = m["totals"]["rows"]
    picked = set(np.random.default_rng(seed).choice(n_rows, size=min(sample, n_rows), replace=False).tolist())
    rows = [r for i, r in enumerate(ArtifactReader(d)) if i in picked]
    seqs = [Sequence(r.token_ids.tolist(), r.prompt_len) for r in rows]
    dtype = getattr(torch, inputs.get("dtype", "float32"))
    vocab = m["shard_schema"]["layout"]["vocab_size"]
    fidelity = token_topk.LOGP_STEP / 2 + 1e-6  # the codes' rounding
    findings = []
    for role in dict.fromkeys(r for r, _, _ in CHECKS[m["kind"]]):
        model = model_for(inputs[role], role, store, given)
        say(f"audit {key}: {len(rows)} of {n_rows} rows re-scored by the {role} ({model.spec}), "
            f"{inputs.get('dtype', 'float32')}")
        tok = load_tokenizer(model)
        if len(tok) > vocab:
            raise AuditError(f"{model.spec}: vocabulary of {len(tok)} ids, the artifact's has {vocab}")
        lm = load_model(model, dtype, device)
        checks = [(c, how) for r_, c, how in CHECKS[m["kind"]] if r_ == role]
        k = rows[0].topk_ids.shape[1] if getattr(rows[0], "topk_ids", None) is not None else None
        scored = HFScorer(lm, vocab, pad_id(tok)).score(
            seqs, k=k if any(how == "rank" for _, how in checks) else None,
            gather=[r.topk_ids for r in rows] if k else None)
        for column, how in checks:
            bound = (fidelity if how == "gather" else 0.0 if how == "rank" else token_topk.REALIZED_STEP / 2 + 1e-6) + slack
            if how == "rank":  # how far the k-th recomputed log-prob lies above the worst stored id's
                diffs = [np.maximum(0.0, sc.topk_logp[:, -1].astype(np.float64) - sc.gathered_logp.min(1))
                         for sc in scored]
            else:
                new = [sc.gathered_logp if how == "gather" else sc.realized_logp for sc in scored]
                diffs = [np.abs(np.asarray(a, np.float64) - np.asarray(getattr(r, column), np.float64))
                         for a, r in zip(new, rows)]
            if how == "gather":  # the stated fidelity holds above the clamp; far-tail values are not compared
                diffs = [np.where(np.asarray(getattr(r, column)) > -10, x, 0.0) for x, r in zip(diffs, rows)]
            worst = max(range(len(rows)), key=lambda i: diffs[i].max())
            pos = np.unravel_index(int(np.argmax(diffs[worst])), diffs[worst].shape)
            findings.append(Finding(role, column, bound, float(diffs[worst].max()),
                                    f"{rows[worst].pair_id} {rows[worst].side} position {pos[0]}"))
        del lm
    return findings, len(rows)


def report(key: str, findings: list[Finding], n: int) -> str:
    lines = [f"audit of {key} on {n} sampled rows (largest |stored - recomputed| log-prob, nats):"]
    for f in findings:
        lines.append(f"  {f.role:9} {f.column:18} {f.max_diff:10.6f}  bound {f.bound:.4f}  "
                     f"{'ok' if f.ok else 'BEYOND THE STATED FIDELITY'}  (at {f.where})")
    bad = [f for f in findings if not f.ok]
    lines.append("the stored values are the named models' own, within the stated fidelity" if not bad else
                 f"NOT the named models' values: {len(bad)} column(s) beyond the stated fidelity; do not train on it")
    return "\n".join(lines)


def parse_models(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        role, sep, path = item.partition("=")
        if not sep or not role or not path:
            raise AuditError(f"--model {item!r}: expected ROLE=PATH (ROLE: model, teacher or reference)")
        if not Path(path).exists():
            raise AuditError(f"--model {item!r}: {path}: no such folder")
        out[role] = path
    return out
