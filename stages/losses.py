"""The training objectives of stage two, as pure functions of tensors (no I/O, no state).

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

import torch
import torch.nn.functional as F

LOG_EPS = 1e-12


def student_logprobs(logits: torch.Tensor, ids: torch.Tensor | None, targets: torch.Tensor,
                     chunk: int = 1024) -> tuple[torch.Tensor | None, torch.Tensor]:
    """log q at `ids` [N, k] (or None) and at `targets` [N], in float32, from logits [N, V].

        log q(a) = z_a - logsumexp_v z_v
    """
    lse = torch.cat([torch.logsumexp(logits[i:i + chunk].float(), -1) for i in range(0, len(logits), chunk)]) \
        if len(logits) else logits.new_zeros(0, dtype=torch.float32)
    at_targets = logits.gather(1, targets[:, None])[:, 0].float() - lse
    at_ids = logits.gather(1, ids).float() - lse[:, None] if ids is not None else None
    return at_ids, at_targets


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


def topk_kl(t_logp: torch.Tensor, t_tail: torch.Tensor, s_logp: torch.Tensor) -> torch.Tensor:
    """Forward KL(p || q) per position over the k stored ids plus one tail bin, [N].

    Both sides are normalised over the same k + 1 bins: the teacher's stored bins are renormalised
    (quantization leaves their sum a hair off 1), the student's tail is 1 - sum_k q:
        KL = sum_{a in K} p_a (log p_a - log q_a) + p_tail (log p_tail - log q_tail)
    """
    t_bins = torch.cat([t_logp, t_tail[:, None]], 1).to(s_logp.dtype)
    t_bins = t_bins - torch.logsumexp(t_bins, 1, keepdim=True)
    s_tail = _log1mexp(torch.logsumexp(s_logp, 1))
    s_bins = torch.cat([s_logp, s_tail[:, None]], 1)
    p = t_bins.exp()
    return (p * (t_bins - s_bins)).sum(1)


def sft_loss(s_realized: torch.Tensor, seq: torch.Tensor, n_seqs: int) -> torch.Tensor:
    """L_SFT = -(1/B) sum_b (1/|y_b|) sum_t log q(y_t | x, y_<t)."""
    return -sequence_mean(s_realized, seq, n_seqs)


def kd_loss(t_logp, t_tail, s_logp, seq, n_seqs) -> torch.Tensor:
    """Vanilla KD: (1/B) sum_b (1/|y_b|) sum_t KL_topk+tail(p || q) on chosen responses."""
    return sequence_mean(topk_kl(t_logp, t_tail, s_logp), seq, n_seqs)


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
