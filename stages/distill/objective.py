"""One micro-batch of stage two: pairs -> padded tensors -> the student's forward pass -> the loss.

Only response positions reach the output layer. Its float32 logits exist one chunk of positions
at a time: with more than one chunk, each chunk runs under activation checkpointing, so the
backward pass recomputes it instead of keeping every chunk's [chunk, vocab] block alive.
What each part carries and how the loss combines the parts is read from `losses.LOSSES`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from adpa.stages.common.lm import OutputLayer, base_model, token_budget_batches
from adpa.stages.distill.losses import LOSSES, Scored, student_logprobs
from adpa.stages.distill.pair_stream import Example

BLOCK_BYTES = 256 << 20  # the largest float32 logits block: [chunk, vocab]


@dataclass
class Part:
    """One part (chosen / rejected / state) of every pair in a micro-batch, flattened over response positions."""

    rows: torch.Tensor  # [N] sequence in the padded batch
    cols: torch.Tensor  # [N] position whose output predicts the target
    targets: torch.Tensor  # [N] the realized next token
    pair: torch.Tensor  # [N] pair within the micro-batch
    topk_ids: torch.Tensor | None = None  # [N, k]
    topk_logp: torch.Tensor | None = None  # [N, k] teacher
    tail_logp: torch.Tensor | None = None  # [N]
    ref_topk_logp: torch.Tensor | None = None  # [N, k] the teacher's reference at the same ids
    init_logp_sum: torch.Tensor | None = None  # [pairs] the student init's sequence log-prob (DPO)


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [S, T], right-padded
    attention_mask: torch.Tensor
    parts: dict
    n_pairs: int
    tokens: int  # scored (response) positions
    forward_tokens: int  # tokens through the transformer, prompts included, padding not

    def to(self, device):
        move = lambda x: x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x  # noqa: E731
        parts = {n: Part(**{f: move(getattr(p, f)) for f in p.__dataclass_fields__}) for n, p in self.parts.items()}
        return MicroBatch(move(self.input_ids), move(self.attention_mask), parts, self.n_pairs, self.tokens,
                          self.forward_tokens)


def pack(examples: list[Example], token_budget: int) -> list[list[Example]]:
    """Split a rank's pairs into micro-batches of at most `token_budget` padded tokens (a longer pair
    goes alone), longest first so that similar lengths share a batch."""
    cost = [len(ex.parts) * max(len(r.token_ids) for r in ex.parts.values()) for ex in examples]
    return [[examples[i] for i in batch] for batch in token_budget_batches(cost, token_budget)]


def _cat(rows: list, field: str) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([getattr(r, field) for r in rows]))


def collate(examples: list[Example], loss: str, pad_id: int) -> MicroBatch:
    """Right-padded token ids of every part of every pair, and per part the flat response positions
    with the cached columns the loss reads there."""
    reads = LOSSES[loss].reads
    names = list(reads)
    seqs = [ex.parts[n] for n in names for ex in examples]
    T = max(len(r.token_ids) for r in seqs)
    ids = np.full((len(seqs), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), T), dtype=np.int64)
    for s, r in enumerate(seqs):
        ids[s, : len(r.token_ids)] = r.token_ids
        mask[s, : len(r.token_ids)] = 1
    parts, tokens = {}, 0
    for j, name in enumerate(names):
        rows = [ex.parts[name] for ex in examples]
        base = j * len(examples)
        n = [r.tokens for r in rows]
        cols = np.concatenate([np.arange(r.prompt_len - 1, len(r.token_ids) - 1) for r in rows])
        srow = np.concatenate([np.full(m, base + b) for b, m in enumerate(n)])
        p = Part(rows=torch.from_numpy(srow), cols=torch.from_numpy(cols),
                 targets=torch.from_numpy(ids[srow, cols + 1]),
                 pair=torch.from_numpy(np.concatenate([np.full(m, b) for b, m in enumerate(n)])))
        columns = reads[name].columns
        if "topk" in columns:
            p.topk_ids = _cat(rows, "topk_ids").long()
            p.topk_logp, p.tail_logp = _cat(rows, "topk_logp"), _cat(rows, "tail_logp")
        if "ref_topk" in columns:
            p.ref_topk_logp = _cat(rows, "ref_topk_logp")
        if "realized_logp" in columns:
            p.init_logp_sum = torch.tensor([float(np.sum(r.realized_logp, dtype=np.float64)) for r in rows])
        parts[name] = p
        tokens += int(sum(n))
    return MicroBatch(torch.from_numpy(ids), torch.from_numpy(mask), parts, len(examples), tokens, int(mask.sum()))


def head_logprobs(out: OutputLayer, h: torch.Tensor, ids: torch.Tensor | None, targets: torch.Tensor,
                  chunk: int, temperature: float = 1.0) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The student's log-probs at `ids` [N, k] (or None; at `temperature`) and at `targets` [N], one logits
    chunk at a time."""
    def one(h_c, ids_c, t_c):
        return student_logprobs(out(h_c), ids_c, t_c, chunk=len(h_c), temperature=temperature)

    if len(h) <= chunk:
        return one(h, ids, targets)
    parts = [checkpoint(one, h[c:c + chunk], None if ids is None else ids[c:c + chunk], targets[c:c + chunk],
                        use_reentrant=False) for c in range(0, len(h), chunk)]
    at_ids = torch.cat([p[0] for p in parts]) if ids is not None else None
    return at_ids, torch.cat([p[1] for p in parts])


def micro_loss(model, out: OutputLayer, mb: MicroBatch, loss: str, settings) -> tuple[torch.Tensor, dict]:
    """The loss of one micro-batch (a mean over its pairs) and its terms (floats, means over its pairs);
    `settings`: the distill section (the loss reads its coefficients there)."""
    hidden = base_model(model)(input_ids=mb.input_ids, attention_mask=mb.attention_mask).last_hidden_state
    chunk = max(1, BLOCK_BYTES // (4 * out.vocab_size))
    at_ids, realized = {}, {}
    temperature = settings.temperature if "temperature" in LOSSES[loss].uses else 1.0  # the kd family's alone
    for name, p in mb.parts.items():
        at_ids[name], realized[name] = head_logprobs(out, hidden[p.rows, p.cols], p.topk_ids, p.targets, chunk,
                                                     temperature)
    value, terms = LOSSES[loss].compute(Scored(mb.n_pairs, mb.parts, at_ids, realized), settings)
    terms = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()} | {"loss": value.item()}
    return value, terms
