"""The training objectives of stage two: pure functions of tensors (no I/O, no state), and `LOSSES`,
the one table that declares each loss (what it reads, its settings, its terms, its formula).

Notation, per scored response position t of a sequence y (prompt tokens never count):
  q(.|s_t)      the student's distribution (softmax of its logits, full vocabulary)
  p(.|s_t)      the DPO teacher's, known on its top-k ids K_t plus one tail bin
  r(.|s_t)      the teacher's reference (its SFT model), known at the same ids K_t
Sequence means are token means per sequence, then the mean over sequences (the paper's 1/|y|).

Memory: the student's log-probs are gathered at the k ids BEFORE any float32 upcast, and the
log-normalizer is computed in float32 chunks of tokens, so no more than one [chunk, vocab]
float32 block exists at a time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

LOG_EPS = 1e-12
PAD_LOGP = -1e4  # an absent entry's log-prob: exp() is exactly 0 in float32 and float64, and it is finite


def student_logprobs(logits: torch.Tensor, ids: torch.Tensor | None, targets: torch.Tensor,
                     chunk: int = 1024, temperature: float = 1.0) -> tuple[torch.Tensor | None, torch.Tensor]:
    """log q at `ids` [N, k] (or None) and at `targets` [N], in float32, from logits [N, V]; at `ids` the
    student is read at `temperature` T (the divergence's side), at `targets` always at 1 (the SFT term's):

        log q_T(a) = z_a / T - logsumexp_v (z_v / T)
    """
    lse = _lse(logits, chunk)
    at_targets = logits.gather(1, targets[:, None])[:, 0].float() - lse
    if ids is None:
        return None, at_targets
    if temperature == 1.0:
        return logits.gather(1, ids).float() - lse[:, None], at_targets
    return logits.gather(1, ids).float() / temperature - _lse(logits, chunk, temperature)[:, None], at_targets


def _lse(logits: torch.Tensor, chunk: int, temperature: float = 1.0) -> torch.Tensor:
    """logsumexp_v (z_v / T) per row in float32, one [chunk, V] float32 block at a time."""
    if not len(logits):
        return logits.new_zeros(0, dtype=torch.float32)
    return torch.cat([torch.logsumexp(logits[i:i + chunk].float() / temperature, -1)
                      for i in range(0, len(logits), chunk)])


def sequence_mean(values: torch.Tensor, seq: torch.Tensor, n_seqs: int) -> torch.Tensor:
    """mean over sequences of (mean over each sequence's positions); `seq` [N] maps positions to sequences.

        (1/B) sum_b (1/|y_b|) sum_{t in y_b} values_t
    """
    sums = torch.zeros(n_seqs, dtype=values.dtype, device=values.device).index_add_(0, seq, values)
    counts = torch.zeros(n_seqs, dtype=values.dtype, device=values.device).index_add_(0, seq, torch.ones_like(values))
    return (sums / counts.clamp_min(1)).mean()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends."""
    x = x.clamp_max(-LOG_EPS)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def topk_bins(t_logp: torch.Tensor, t_tail: torch.Tensor, s_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's and the student's log-probs over the same k + 1 bins, [N, k + 1] each: the k stored ids
    and one tail bin. The teacher's stored bins are renormalised (quantization leaves their sum a hair off 1),
    the student's tail is log(1 - sum_k q)."""
    t_bins = torch.cat([t_logp, t_tail[:, None]], 1).to(s_logp.dtype)
    t_bins = t_bins - torch.logsumexp(t_bins, 1, keepdim=True)
    s_tail = _log1mexp(torch.logsumexp(s_logp, 1))
    return t_bins, torch.cat([s_logp, s_tail[:, None]], 1)


def forward_kl(t: torch.Tensor, s: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """KL(p || q) = sum_b p_b (log p_b - log q_b): mass-covering (the paper's DCKD and KD)."""
    return (t.exp() * (t - s)).sum(1)


def reverse_kl(t: torch.Tensor, s: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """KL(q || p) = sum_b q_b (log q_b - log p_b): mode-seeking (MiniLLM, GKD's on-policy choice)."""
    return (s.exp() * (s - t)).sum(1)


def generalised_jsd(t: torch.Tensor, s: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """JSD(beta) = beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q,  0 < beta < 1
    (GKD, Agarwal et al. 2024, as TRL's GKD trainer computes it; beta 0.5: the Jensen-Shannon divergence)."""
    m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), 0)
    return beta * (t.exp() * (t - m)).sum(1) + (1 - beta) * (s.exp() * (s - m)).sum(1)


def total_variation(t: torch.Tensor, s: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """TV(p, q) = 1/2 sum_b |p_b - q_b| (bounded by 1; its gradient does not grow with 1/q)."""
    return 0.5 * (t.exp() - s.exp()).abs().sum(1)


@dataclass(frozen=True)
class Divergence:
    """A divergence between the teacher and the student over the k + 1 bins: `fn(t_bins, s_bins, beta)`."""

    name: str
    formula: str
    fn: Callable


DIVERGENCES = {d.name: d for d in (
    Divergence("forward_kl", "KL(p || q) = sum_b p_b (log p_b - log q_b)", forward_kl),
    Divergence("reverse_kl", "KL(q || p) = sum_b q_b (log q_b - log p_b)", reverse_kl),
    Divergence("jsd", "beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q", generalised_jsd),
    Divergence("tv", "1/2 sum_b |p_b - q_b|", total_variation),
)}


def divergence_fn(name: str = "forward_kl", beta: float = 0.5) -> Callable:
    """DIVERGENCES[name] as a function of (t_bins, s_bins), its `beta` (jsd's) bound."""
    return functools.partial(DIVERGENCES[name].fn, beta=beta)


def topk_divergence(t_logp: torch.Tensor, t_tail: torch.Tensor, s_logp: torch.Tensor,
                    divergence: Callable = forward_kl) -> torch.Tensor:
    """D(p, q) per position over the k stored ids plus one tail bin (`topk_bins`), [N]; D a `divergence_fn`."""
    return divergence(*topk_bins(t_logp, t_tail, s_logp))


def topk_kl(t_logp: torch.Tensor, t_tail: torch.Tensor, s_logp: torch.Tensor) -> torch.Tensor:
    """Forward KL(p || q) per position over the k stored ids plus one tail bin, [N]:
        KL = sum_{a in K} p_a (log p_a - log q_a) + p_tail (log p_tail - log q_tail)
    """
    return topk_divergence(t_logp, t_tail, s_logp)


def masked_bins(t_logp: torch.Tensor, t_rest: torch.Tensor, s_logp: torch.Tensor, valid: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """`topk_bins` when each position has its own entries (a student of another tokenizer: the teacher's
    entries that matched one of the student's, `cross_tokenizer.py`): the valid entries and one rest bin,

        p_rest = exp(t_rest) (stored: 1 - sum_valid p),   q_rest = 1 - sum_valid q;

    an invalid entry is PAD_LOGP on both sides: probability 0, finite, so it adds 0 to every divergence and
    no NaN to any gradient."""
    pad = torch.full_like(s_logp, PAD_LOGP)
    s = torch.where(valid, s_logp, pad)
    t = torch.where(valid, t_logp.to(s_logp.dtype), pad)
    t_bins = torch.cat([t, t_rest.to(s.dtype)[:, None]], 1)
    s_bins = torch.cat([s, _log1mexp(torch.logsumexp(s, 1))[:, None]], 1)
    return t_bins - torch.logsumexp(t_bins, 1, keepdim=True), s_bins


def uld(t_sorted: torch.Tensor, s_sorted: torch.Tensor) -> torch.Tensor:
    """ULD (Boizard et al. 2024), per position, [N]: the two distributions' probabilities sorted in descending
    order and compared rank by rank, so no vocabulary entry needs a counterpart:

        ULD = sum_i | p_(i) - q_(i) |   over the first `width` ranks of the unmatched entries of each side."""
    return (t_sorted.to(s_sorted.dtype) - s_sorted).abs().sum(1)


def cross_kd_loss(part, s_logp: torch.Tensor, s_unmatched: torch.Tensor | None, n_seqs: int,
                  divergence: Callable = forward_kl, uld_weight: float = 0.0) -> torch.Tensor:
    """KD to a teacher of another tokenizer: at each student position that starts an aligned run (`part.aligned`),
    D over the matched entries plus the rest bin (`masked_bins`), plus `uld_weight` * ULD on the unmatched
    entries (`s_unmatched`: the student's sorted probabilities outside the matched ids):

        (1/B) sum_b (1/|A_b|) sum_{t in A_b} [ D(p, q)_matched+rest + w_uld ULD(p_unmatched, q_unmatched) ]"""
    a = part.aligned
    d = divergence(*masked_bins(part.topk_logp[a], part.tail_logp[a], s_logp[a], part.topk_valid[a]))
    if uld_weight and s_unmatched is not None:
        d = d + uld_weight * uld(part.unmatched_p[a], s_unmatched[a])
    return sequence_mean(d, part.pair[a], n_seqs)


def sft_loss(s_realized: torch.Tensor, seq: torch.Tensor, n_seqs: int) -> torch.Tensor:
    """L_SFT = -(1/B) sum_b (1/|y_b|) sum_t log q(y_t | x, y_<t)."""
    return -sequence_mean(s_realized, seq, n_seqs)


def kd_loss(t_logp, t_tail, s_logp, seq, n_seqs, divergence: Callable = forward_kl) -> torch.Tensor:
    """Vanilla KD: (1/B) sum_b (1/|y_b|) sum_t D_topk+tail(p, q) on chosen responses (D: forward KL unless
    `divergence`, a `divergence_fn`, says otherwise)."""
    return sequence_mean(topk_divergence(t_logp, t_tail, s_logp, divergence), seq, n_seqs)


def dckd_loss(sft: torch.Tensor, kl_chosen: torch.Tensor, kl_rejected: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """L_DCKD = L_SFT(y_w) + alpha * (KL_w + KL_l), each KL a sequence mean (kd_loss) on its side."""
    return sft + alpha * (kl_chosen + kl_rejected)


def advantages(t_logp: torch.Tensor, ref_logp: torch.Tensor, mode: str = "signed") -> torch.Tensor:
    """A(s, a) = log p(a|s) - log r(a|s) at the stored ids ("signed", the paper), or clip(A, 0, 1)
    ("clip01", what the released code's probability clamp optimises), or -A ("flipped": a diagnostic
    that must make a student worse, used by the integrity tests)."""
    a = (t_logp - ref_logp).float()
    if mode == "signed":
        return a
    if mode == "clip01":
        return a.clamp(0.0, 1.0)
    if mode == "flipped":
        return -a
    raise ValueError(f"advantage mode {mode!r} is not 'signed', 'clip01' or 'flipped'")


def adpa_loss(sft: torch.Tensor, s_logp_states: torch.Tensor, adv: torch.Tensor, seq: torch.Tensor, n_seqs: int,
              gamma: float = 1.5) -> torch.Tensor:
    """L_ADPA = L_SFT(y_w) - gamma * (1/B) sum_b (1/|y_b|) sum_t sum_{a in K_t} q(a|s_t) A(s_t, a)

    on the ADPA states y_hat (sft is computed on the chosen responses)."""
    expected = (s_logp_states.exp() * adv).sum(1)
    return sft - gamma * sequence_mean(expected, seq, n_seqs)


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float = 0.1) -> torch.Tensor:
    """L_DPO = -mean log sigmoid(beta * [(log pi(y_w) - log pi_init(y_w)) - (log pi(y_l) - log pi_init(y_l))])

    with sequence log-probs (sums over response tokens); the reference is the student's init model."""
    return -F.logsigmoid(beta * ((pi_chosen - ref_chosen) - (pi_rejected - ref_rejected))).mean()


# ---- the declarations: adding a loss = its function above + one entry below -------------------------

@dataclass(frozen=True)
class Reads:
    """One part of a pair as a loss reads it: the row of `side` in the stage-one artifact `cache`
    (teacher_topk, advantage, student_logp), and which of its columns beyond token ids it needs:
    `topk` (teacher top-k ids, log-probs, tail), `ref_topk` (the reference at those ids),
    `realized_logp` (the student init's log-probs of the realized tokens)."""

    cache: str
    side: str
    columns: tuple[str, ...] = ()


@dataclass
class Scored:
    """What a loss sees of one micro-batch: per part, the cached columns (`objective.Part`: positions,
    pair index, teacher signals), the student's log-probs at the part's top-k ids and at its realized
    tokens; `n` pairs."""

    n: int
    parts: dict
    at_ids: dict
    realized: dict
    unmatched: dict = field(default_factory=dict)  # cross-tokenizer parts: the student's sorted unmatched probs


@dataclass(frozen=True)
class Loss:
    name: str
    formula: str
    reads: dict[str, Reads] = field(default_factory=dict)  # part (chosen, rejected, state) -> what it is
    compute: Callable | None = None  # (Scored, distill settings) -> (loss, {term: tensor or float})
    terms: tuple[str, ...] = ()  # logged per step, plotted, in the model card
    uses: tuple[str, ...] = ()  # the distill settings it reads (they enter the student's key)
    lr: str = "lr"  # the setting that is its peak learning rate
    then: tuple[str, str] | None = None  # a chain: train `then[0]`, then `then[1]` on states its student generated


def _sft(b: Scored, d):
    sft = sft_loss(b.realized["chosen"], b.parts["chosen"].pair, b.n)
    return sft, {"sft": sft}


def _to_teacher(b: Scored, name: str, d) -> torch.Tensor:
    """The kd family's divergence on one part: over the teacher's top-k and tail, or, for a student of another
    tokenizer, over the matched entries and the rest (`cross_kd_loss`)."""
    p, div = b.parts[name], divergence_fn(d.divergence, d.jsd_beta)
    if p.topk_valid is None:
        return kd_loss(p.topk_logp, p.tail_logp, b.at_ids[name], p.pair, b.n, div)
    return cross_kd_loss(p, b.at_ids[name], b.unmatched.get(name), b.n, div, d.uld_weight)


def _alignment_terms(b: Scored) -> dict:
    """A student of another tokenizer: the share of its response positions that start an aligned run, and
    the teacher's mass that matched the student's vocabulary there (means over positions)."""
    cross = [p for p in b.parts.values() if p.topk_valid is not None]
    if not cross:
        return {}
    aligned = torch.cat([p.aligned for p in cross])
    matched = torch.cat([p.matched[p.aligned] for p in cross])
    return {"aligned_share": aligned.float().mean(), "matched_mass": matched.mean() if len(matched) else 0.0}


def _kd(b: Scored, d):
    c = b.parts["chosen"]
    kl = _to_teacher(b, "chosen", d)
    return kl, {"sft": sft_loss(b.realized["chosen"], c.pair, b.n), "kl_chosen": kl} | _alignment_terms(b)


def _dckd(b: Scored, d):
    sft = sft_loss(b.realized["chosen"], b.parts["chosen"].pair, b.n)
    kl_w, kl_l = _to_teacher(b, "chosen", d), _to_teacher(b, "rejected", d)
    return dckd_loss(sft, kl_w, kl_l, d.alpha), {"sft": sft, "kl_chosen": kl_w, "kl_rejected": kl_l} | \
        _alignment_terms(b)


def _adpa(b: Scored, d):
    c, s = b.parts["chosen"], b.parts["state"]
    sft = sft_loss(b.realized["chosen"], c.pair, b.n)
    adv, at_ids = advantages(s.topk_logp, s.ref_topk_logp, d.advantage), b.at_ids["state"]
    if s.topk_valid is None:
        loss = adpa_loss(sft, at_ids, adv, s.pair, b.n, d.gamma)
    else:  # another tokenizer: the matched entries of the positions that start an aligned run
        a = s.aligned
        loss = adpa_loss(sft, at_ids[a], adv[a] * s.topk_valid[a], s.pair[a], b.n, d.gamma)
    return loss, {"sft": sft, "expected_advantage": (sft - loss) / d.gamma if d.gamma else 0.0} | _alignment_terms(b)


def _dpo(b: Scored, d):
    c, r = b.parts["chosen"], b.parts["rejected"]
    pi_w = torch.zeros(b.n, device=c.pair.device).index_add(0, c.pair, b.realized["chosen"])
    pi_l = torch.zeros(b.n, device=r.pair.device).index_add(0, r.pair, b.realized["rejected"])
    margin = d.beta * ((pi_w - c.init_logp_sum) - (pi_l - r.init_logp_sum))
    return dpo_loss(pi_w, pi_l, c.init_logp_sum, r.init_logp_sum, d.beta), \
        {"dpo_margin": margin.mean(), "dpo_accuracy": (margin > 0).float().mean()}


_DIVERGENCE_SETTINGS = ("divergence", "jsd_beta", "temperature", "uld_weight")  # the kd family's; at their
# defaults, not in keys (uld_weight: only with cross_tokenizer)
_ALIGNMENT_TERMS = ("aligned_share", "matched_mass")  # logged when the student has another tokenizer
_TOPK_W, _TOPK_L = Reads("teacher_topk", "chosen", ("topk",)), Reads("teacher_topk", "rejected", ("topk",))
LOSSES = {loss.name: loss for loss in (
    Loss("sft", "L = -(1/|y_w|) sum_t log pi_theta(y_w,t | x, y_w,<t)",
         {"chosen": Reads("student_logp", "chosen")}, _sft, ("sft",), lr="sft_lr"),
    Loss("dpo", "L = -log sigmoid(beta * [(log pi_theta(y_w) - log pi_init(y_w)) - "
         "(log pi_theta(y_l) - log pi_init(y_l))])",
         {"chosen": Reads("student_logp", "chosen", ("realized_logp",)),
          "rejected": Reads("student_logp", "rejected", ("realized_logp",))}, _dpo, ("dpo_margin", "dpo_accuracy"),
         ("beta",)),
    Loss("kd", "L = (1/|y_w|) sum_t KL(pi_dpo || pi_theta) over the teacher's top-k ids + one tail bin "
         "(distill.divergence: another D of DIVERGENCES; distill.temperature: pi_theta at T)",
         {"chosen": _TOPK_W}, _kd, ("sft", "kl_chosen", *_ALIGNMENT_TERMS), _DIVERGENCE_SETTINGS),
    Loss("dckd", "L = L_SFT(y_w) + alpha * (KL_w + KL_l), forward KL to the DPO teacher on chosen and rejected "
         "(distill.divergence: another D of DIVERGENCES; distill.temperature: pi_theta at T)",
         {"chosen": _TOPK_W, "rejected": _TOPK_L}, _dckd, ("sft", "kl_chosen", "kl_rejected", *_ALIGNMENT_TERMS),
         ("alpha", *_DIVERGENCE_SETTINGS)),
    Loss("adpa", "L = L_SFT(y_w) - gamma * (1/|y_hat|) sum_t sum_{a in top-k} pi_theta(a|s_t) * A(s_t, a), "
         "A = log pi_dpo - log pi_ref",
         {"chosen": _TOPK_W, "state": Reads("advantage", "generated", ("topk", "ref_topk"))}, _adpa,
         ("sft", "expected_advantage", *_ALIGNMENT_TERMS), ("gamma", "advantage")),
    Loss("adpa+", "DCKD first, then ADPA from the DCKD student on states that student generated",
         then=("dckd", "adpa")),
)}


def caches_of(loss: str) -> list[str]:
    """The stage-one artifacts a loss reads (a chain: those of its steps)."""
    spec = LOSSES[loss]
    if spec.then:
        return sorted(set().union(*(caches_of(x) for x in spec.then)))
    return sorted({r.cache for r in spec.reads.values()})
