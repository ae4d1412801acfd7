"""One micro-batch of stage two: pairs -> rows of tokens -> the student's forward pass -> the loss.

Rows are plain (each part of each pair alone, right-padded) or packed (`distill.pack`): a pair's prompt
once, its chosen, rejected and state responses as continuations that see the prompt and themselves (a
tree-shaped mask, positions restarting after the prompt), and several pairs per row, each its own
segment of the mask, so a prompt's forward and backward are computed once and little is padding.
Both give the same losses and gradients within float rounding (tests/test_objective.py).

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

from adpa.stages.common.lm import (OutputLayer, Packed, Sequence, base_model, mask_dtype, pack_by_prompt,
                                   segment_mask, token_budget_batches)
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
    # a student of another tokenizer (`cross_tokenizer.CrossRow`): per position its own matched entries
    topk_valid: torch.Tensor | None = None  # [N, width] which of topk_ids / topk_logp are real
    aligned: torch.Tensor | None = None  # [N] the position starts an aligned run: it has a teacher distribution
    matched: torch.Tensor | None = None  # [N] the teacher's mass on the matched entries
    unmatched_p: torch.Tensor | None = None  # [N, width] the teacher's unmatched top-k probabilities, sorted


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [R, T], right-padded
    attention_mask: torch.Tensor  # [R, T]: 1 on tokens, 0 on padding
    parts: dict
    n_pairs: int
    tokens: int  # scored (response) positions
    forward_tokens: int  # tokens through the transformer, prompts included, padding not
    # packed rows (`collate(packed=True)`): positions restart in each segment and continuation; the 4D mask
    # is built from segment and branch where the model runs (`lm.segment_mask`)
    position_ids: torch.Tensor | None = None  # [R, T]
    segment: torch.Tensor | None = None  # [R, T] a pair's prompt and its continuations; padding < 0
    branch: torch.Tensor | None = None  # [R, T] -1 on a prompt, j on its continuation j

    @property
    def padded_tokens(self) -> int:
        return self.input_ids.numel()

    def to(self, device):
        move = lambda x: x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x  # noqa: E731
        fields = {f: move(getattr(self, f)) for f in self.__dataclass_fields__ if f != "parts"}
        parts = {n: Part(**{f: move(getattr(p, f)) for f in p.__dataclass_fields__}) for n, p in self.parts.items()}
        return MicroBatch(**fields, parts=parts)


def _segments(ex: Example, names: list[str]) -> list[Packed]:
    """A pair's parts as rows of its own: one per distinct prompt (normally one: the prompt once, each part
    a continuation of it)."""
    return pack_by_prompt([Sequence(list(ex.parts[n].token_ids), ex.parts[n].prompt_len) for n in names])


def _cost(ex: Example, names: list[str], packed: bool) -> int:
    """A pair's tokens in rows: packed, each distinct prompt once and every response (what `_segments`
    lays out, without building it); plain, every part padded to the pair's longest."""
    parts = [ex.parts[n] for n in names]
    if packed:
        prompts = {tuple(r.token_ids[:r.prompt_len]) for r in parts}
        return sum(map(len, prompts)) + sum(len(r.token_ids) - r.prompt_len for r in parts)
    return len(parts) * max(len(r.token_ids) for r in parts)


def pack(examples: list[Example], loss: str, token_budget: int, packed: bool = False) -> list[list[Example]]:
    """Split a rank's pairs into micro-batches of at most `token_budget` tokens in rows (a longer pair goes
    alone), longest first so that similar lengths share a batch. Plain: a pair costs its parts, each padded
    to its longest; packed: its unique tokens (each prompt once); rows are never longer than the longest."""
    names = list(LOSSES[loss].reads)
    cost = [_cost(ex, names, packed) for ex in examples]
    return [[examples[i] for i in batch] for batch in token_budget_batches(cost, token_budget)]


@dataclass
class _Rows:
    """Where a micro-batch's sequences lie: token ids [R, T], and per part, per pair, the row and the
    columns whose outputs predict its response tokens."""

    ids: np.ndarray
    real: np.ndarray  # [R, T] 1 on tokens, 0 on padding
    place: dict  # part -> [(row, cols)] per pair
    positions: np.ndarray | None = None
    segment: np.ndarray | None = None
    branch: np.ndarray | None = None


def _padded_rows(examples: list[Example], names: list[str], pad_id: int) -> _Rows:
    """Each part of each pair alone in a row, right-padded."""
    seqs = [ex.parts[n] for n in names for ex in examples]
    ids = np.full((len(seqs), max(len(r.token_ids) for r in seqs)), pad_id, dtype=np.int64)
    real = np.zeros(ids.shape, dtype=np.int64)
    for s, r in enumerate(seqs):
        ids[s, : len(r.token_ids)], real[s, : len(r.token_ids)] = r.token_ids, 1
    place = {n: [(j * len(examples) + b, np.arange(r.prompt_len - 1, len(r.token_ids) - 1))
                 for b, r in enumerate(ex.parts[n] for ex in examples)] for j, n in enumerate(names)}
    return _Rows(ids, real, place)


def _packed_rows(examples: list[Example], names: list[str], pad_id: int) -> _Rows:
    """Each pair's segments (`_segments`) first-fit, longest first, into rows as long as the longest one."""
    segs = [(b, seg) for b, ex in enumerate(examples) for seg in _segments(ex, names)]
    segs.sort(key=lambda x: -len(x[1].ids))
    T = len(segs[0][1].ids)
    free, where = [], []  # per row: tokens left; per segment: (row, offset)
    for _, seg in segs:
        row = next((i for i, f in enumerate(free) if f >= len(seg.ids)), len(free))
        if row == len(free):
            free.append(T)
        where.append((row, T - free[row]))
        free[row] -= len(seg.ids)
    R = len(free)
    ids, positions = np.full((R, T), pad_id, dtype=np.int64), np.zeros((R, T), dtype=np.int64)
    segment, branch = np.tile(-1 - np.arange(T), (R, 1)), np.full((R, T), -1, dtype=np.int64)
    place = {n: [None] * len(examples) for n in names}
    for s, ((b, seg), (row, o)) in enumerate(zip(segs, where)):
        span = slice(o, o + len(seg.ids))
        ids[row, span], positions[row, span], branch[row, span] = seg.ids, seg.positions, seg.branch
        segment[row, span] = s
        for j, member in enumerate(seg.members):
            place[names[member]][b] = (row, o + seg.predict[j])
    return _Rows(ids, (segment >= 0).astype(np.int64), place, positions, segment, branch)


def _cat(rows: list, field: str) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([getattr(r, field) for r in rows]))


def _part(rows: list, place: list, columns: tuple) -> Part:
    """One part's flat response positions (rows, cols, targets, pair) and the cached columns it reads."""
    n = [len(c) for _, c in place]
    p = Part(rows=torch.from_numpy(np.concatenate([np.full(m, row) for m, (row, _) in zip(n, place)])),
             cols=torch.from_numpy(np.concatenate([c for _, c in place]).astype(np.int64)),
             targets=torch.from_numpy(np.concatenate([r.token_ids[r.prompt_len:] for r in rows]).astype(np.int64)),
             pair=torch.from_numpy(np.concatenate([np.full(m, b) for b, m in enumerate(n)])))
    if "topk" in columns:
        p.topk_ids = _cat(rows, "topk_ids").long()
        p.topk_logp, p.tail_logp = _cat(rows, "topk_logp"), _cat(rows, "tail_logp")
    if "topk" in columns and hasattr(rows[0], "topk_valid"):
        p.topk_valid, p.aligned = _cat(rows, "topk_valid"), _cat(rows, "aligned")
        p.matched, p.unmatched_p = _cat(rows, "matched"), _cat(rows, "unmatched_p")
    if "ref_topk" in columns:
        p.ref_topk_logp = _cat(rows, "ref_topk_logp")
    if "realized_logp" in columns:
        p.init_logp_sum = torch.tensor([float(np.sum(r.realized_logp, dtype=np.float64)) for r in rows])
    return p


def collate(examples: list[Example], loss: str, pad_id: int, packed: bool = False) -> MicroBatch:
    """The token rows of a micro-batch's pairs and per part the flat response positions with the cached
    columns the loss reads there. Plain: every part of every pair alone in a right-padded row. Packed: each
    pair's prompt once with its parts as continuations (a tree-shaped mask), several pairs per row."""
    reads = LOSSES[loss].reads
    names = list(reads)
    rows = (_packed_rows if packed else _padded_rows)(examples, names, pad_id)
    parts = {n: _part([ex.parts[n] for ex in examples], rows.place[n], reads[n].columns) for n in names}
    tensor = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
    return MicroBatch(torch.from_numpy(rows.ids), torch.from_numpy(rows.real), parts, len(examples),
                      sum(len(p.cols) for p in parts.values()), int(rows.real.sum()), tensor(rows.positions),
                      tensor(rows.segment), tensor(rows.branch))


@dataclass(frozen=True)
class Head:
    """What the output layer is read at for one part: `ids` [N, k] (or None) at `temperature`, the realized
    `targets` [N]; with `exclude` ([N, k] bool over `ids`, a student of another tokenizer with ULD on), also
    the sorted probabilities (at `temperature`) of the k most likely ids outside the valid `ids`."""

    ids: torch.Tensor | None
    targets: torch.Tensor
    temperature: float = 1.0
    exclude: torch.Tensor | None = None


def _read_head(logits: torch.Tensor, ids, targets, exclude, temperature: float) -> tuple:
    at_ids, realized = student_logprobs(logits, ids, targets, chunk=len(logits), temperature=temperature)
    if exclude is None:
        return at_ids, realized
    # -inf added at the matched ids (padding adds 0): what is left is the student's unmatched distribution, at
    # the divergence's temperature
    rest = (logits.float() / temperature).log_softmax(-1).scatter_add(1, ids, torch.where(exclude, float("-inf"), 0.0))
    return at_ids, realized, rest.topk(ids.shape[1], dim=1).values.exp()


def head_logprobs(out: OutputLayer, h: torch.Tensor, head: Head, chunk: int) -> tuple:
    """The student's log-probs at `head.ids` and at `head.targets` (and the sorted unmatched probabilities with
    `head.exclude`), one logits chunk at a time."""
    def one(h_c, *cols):
        ids_c, t_c, ex_c = cols if len(cols) == 3 else (*cols, None)
        return _read_head(out(h_c), ids_c, t_c, ex_c, head.temperature)

    cols = [head.ids, head.targets] + ([head.exclude] if head.exclude is not None else [])
    if len(h) <= chunk:
        return one(h, *cols)
    parts = [checkpoint(one, h[c:c + chunk], *[None if x is None else x[c:c + chunk] for x in cols],
                        use_reentrant=False) for c in range(0, len(h), chunk)]
    return tuple(torch.cat([p[i] for p in parts]) if parts[0][i] is not None else None
                 for i in range(len(parts[0])))


def forward(model, mb: MicroBatch) -> torch.Tensor:
    """The student's final hidden states [R, T, d] of a micro-batch's rows (packed: with their tree mask)."""
    if mb.segment is None:  # plain rows: the 2D padding mask keeps the engines' fused causal kernels
        return base_model(model)(input_ids=mb.input_ids, attention_mask=mb.attention_mask).last_hidden_state
    mask = segment_mask(mb.segment, mb.branch, mask_dtype(model))
    return base_model(model)(input_ids=mb.input_ids, attention_mask=mask, position_ids=mb.position_ids).last_hidden_state


def micro_loss(model, out: OutputLayer, mb: MicroBatch, loss: str, settings) -> tuple[torch.Tensor, dict]:
    """The loss of one micro-batch (a mean over its pairs) and its terms (floats, means over its pairs);
    `settings`: the distill section (the loss reads its coefficients there)."""
    hidden = forward(model, mb)
    chunk = max(1, BLOCK_BYTES // (4 * out.vocab_size))
    at_ids, realized, unmatched = {}, {}, {}
    temperature = settings.temperature if "temperature" in LOSSES[loss].uses else 1.0  # the kd family's alone
    for name, p in mb.parts.items():
        uld = p.topk_valid is not None and settings.uld_weight > 0
        read = head_logprobs(out, hidden[p.rows, p.cols], Head(p.topk_ids, p.targets, temperature,
                                                               p.topk_valid if uld else None), chunk)
        at_ids[name], realized[name] = read[:2]
        if uld:
            unmatched[name] = read[2]
    value, terms = LOSSES[loss].compute(Scored(mb.n_pairs, mb.parts, at_ids, realized, unmatched), settings)
    terms = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()} | {"loss": value.item()}
    return value, terms
