"""Causal-LM helpers every stage uses: teacher-forced scoring at response positions, greedy
generation, the output layer, and token-budget batching.

Only response positions reach the output layer, in chunks, so the largest float32 block alive
is [chunk, vocab] (bounded by `block_bytes`), never [batch, length, vocab]. Per chunk: the
log-normalizer, the realized token's log-prob, log-probs gathered at given ids (the reference
at the teacher's top-k, exactly), the top-k, and the tail mass beyond the top-k computed by
masking the top-k out of the log-sum-exp (precise even when the tail is tiny).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Scores:
    """What a model says about one sequence's n response positions: the realized token's log-prob; with k,
    the top-k ids and log-probs (descending) and the log-mass of the tail beyond them; with given ids
    (`gather`), the log-probs there. What every stage-one engine returns."""

    realized_logp: np.ndarray  # [n]
    topk_ids: np.ndarray | None = None  # [n, k]
    topk_logp: np.ndarray | None = None  # [n, k]
    tail_logp: np.ndarray | None = None  # [n]
    gathered_logp: np.ndarray | None = None  # [n, g]


@dataclass
class Sequence:
    ids: list[int]
    prompt_len: int  # >= 1: position prompt_len - 1 predicts the first response token

    @property
    def n(self) -> int:
        return len(self.ids) - self.prompt_len


def token_budget_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Indices grouped so that batch size x longest length <= token_budget, longest first (little padding)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[cur[0]] > token_budget:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


class OutputLayer:
    """A causal LM's output layer as a function of final hidden states: float32 logits over the shared
    vocabulary, with the model's logit scale and soft-capping when its config has them."""

    def __init__(self, model, vocab_size: int):
        self.head = model.get_output_embeddings()
        self.vocab_size = vocab_size
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.logit_scale = getattr(model.config, "logit_scale", None)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        # Rows beyond the shared vocabulary (embedding padding) are not tokens: they are cut off.
        logits = self.head(h).float()[:, : self.vocab_size]
        if self.logit_scale:
            logits = logits * self.logit_scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def base_model(model):
    """The transformer under a causal LM's head (final norm included): its last_hidden_state feeds the head."""
    return getattr(model, model.base_model_prefix)


@dataclass
class Packed:
    """Sequences that share a prompt, as one row: the prompt once, then each continuation, every
    continuation placed right after the prompt (positions restart at prompt_len) and seeing only the
    prompt and itself (a tree-shaped causal mask). Scoring it equals scoring each sequence alone."""

    ids: list[int]
    positions: list[int]
    branch: list[int]  # -1 on the prompt, j on continuation j
    members: list[int]  # the input index of each continuation's sequence
    predict: list[np.ndarray]  # per member: the row positions whose hidden states predict its response

    @property
    def shared(self) -> bool:
        return len(self.members) > 1


def pack_by_prompt(seqs: list[Sequence], share: bool = True) -> list[Packed]:
    """One Packed row per distinct prompt (in first-seen order), or one per sequence when not `share`."""
    groups: dict = {}
    for i, s in enumerate(seqs):
        groups.setdefault(tuple(s.ids[:s.prompt_len]) if share else i, []).append(i)
    out = []
    for members in groups.values():
        P = seqs[members[0]].prompt_len
        ids, positions, branch, predict = list(seqs[members[0]].ids[:P]), list(range(P)), [-1] * P, []
        for j, i in enumerate(members):
            resp = seqs[i].ids[P:]
            o = len(ids)
            # The prompt's last position predicts the first response token; the continuation's own
            # positions (all but its last) predict the rest.
            predict.append(np.concatenate([[P - 1], np.arange(o, o + len(resp) - 1)]).astype(np.int64))
            ids += resp
            positions += range(P, P + len(resp))
            branch += [j] * len(resp)
        out.append(Packed(ids, positions, branch, members, predict))
    return out


def takes_tree_mask(model) -> bool:
    """Whether the model's attention takes a custom 4D mask (sdpa, eager) and has no sliding window: what
    sharing a prompt among a row's continuations, or packing several sequences in one row, needs."""
    attn = getattr(model.config, "_attn_implementation", "eager")
    return attn in ("sdpa", "eager") and getattr(model.config, "sliding_window", None) is None


def mask_dtype(model) -> torch.dtype | None:
    """The dtype of the model's 4D masks: None (boolean) for sdpa, its parameters' dtype (additive) for eager."""
    attn = getattr(model.config, "_attn_implementation", "eager")
    return None if attn == "sdpa" else next(model.parameters()).dtype


def segment_mask(segment: torch.Tensor, branch: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """[B, 1, T, T] attention mask of rows of segments [B, T] (a segment: a prompt and its continuations;
    padding: a negative segment of its own per position): causal, within a segment, and a key on a
    continuation (`branch` >= 0) only for queries of the same continuation (-1: the segment's prompt, seen
    by all of them). Boolean (True attends) when `dtype` is None (sdpa), else additive (0 / dtype min;
    eager). Every query sees at least itself, so no softmax row is empty (an empty one is NaN)."""
    T = segment.shape[1]
    causal = torch.ones((T, T), dtype=torch.bool, device=segment.device).tril()
    allowed = causal & (segment[:, :, None] == segment[:, None, :]) & (
        (branch[:, None, :] == -1) | (branch[:, :, None] == branch[:, None, :]))
    allowed = allowed[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segment.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def tree_mask(rows: list[Packed], T: int, dtype: torch.dtype | None) -> torch.Tensor:
    """`segment_mask` of packed rows, one segment per row, right-padded to T."""
    segment = -1 - torch.arange(T).repeat(len(rows), 1)  # padding: each position its own segment
    branch = torch.full((len(rows), T), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        segment[b, : len(r.ids)] = 0
        branch[b, : len(r.ids)] = torch.as_tensor(r.branch)
    return segment_mask(segment, branch, dtype)


class HFScorer:
    """Teacher-forced log-probs of a transformers causal LM at the response positions of sequences.

    With `share_prompts` (the default), sequences with the same prompt (a pair's chosen and rejected)
    run as one packed row with a tree-shaped mask: each prompt token is computed once per call
    (`pack_by_prompt`). Models whose attention takes no custom 4D mask (flash attention) or that use
    a sliding window run each sequence alone.
    """

    def __init__(self, model, vocab_size: int, pad_id: int, token_budget: int = 4096, block_bytes: int = 256 << 20,
                 share_prompts: bool = True):
        self.model = model
        self.device = next(model.parameters()).device
        self.base = base_model(model)
        self._logits = OutputLayer(model, vocab_size)
        self.vocab_size = vocab_size
        self.token_budget = token_budget
        self.chunk = max(1, block_bytes // (4 * vocab_size))
        self.pad_id = pad_id  # right padding, masked: it never changes a value
        self._mask_dtype = mask_dtype(model)
        self.share_prompts = share_prompts and takes_tree_mask(model)

    @torch.inference_mode()
    def score(self, seqs: list[Sequence], k: int | None = None, gather: list[np.ndarray] | None = None) -> list[Scores]:
        """Per sequence (in input order): realized_logp [n]; with k: topk_ids, topk_logp [n,k], tail_logp [n];
        with gather (per sequence [n, g] ids): gathered_logp [n, g]."""
        for s in seqs:
            if s.prompt_len < 1 or s.n < 1:
                raise ValueError(f"a sequence needs a prompt and a response (prompt {s.prompt_len}, response {s.n})")
        out: list[Scores | None] = [None] * len(seqs)
        rows = pack_by_prompt(seqs, self.share_prompts)
        for batch in token_budget_batches([len(r.ids) for r in rows], self.token_budget):
            part = [rows[b] for b in batch]
            members = [i for r in part for i in r.members]
            res = self._score_rows(part, [seqs[i].n for i in members], k,
                                   [gather[i] for i in members] if gather is not None else None)
            for i, r in zip(members, res):
                out[i] = r
        return out

    def hidden(self, rows: list[Packed]) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states at the positions that predict response tokens [N, d] and those tokens [N],
        member after member of each row in order."""
        T = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        pos = torch.zeros((len(rows), T), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r.ids)] = torch.as_tensor(r.ids)
            pos[b, : len(r.ids)] = torch.as_tensor(r.positions)
        if any(r.shared for r in rows):
            mask = tree_mask(rows, T, self._mask_dtype)
            hidden = self.base(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                               position_ids=pos.to(self.device)).last_hidden_state
        else:  # plain rows: the 2D padding mask keeps the engines' fused causal kernels
            mask = (torch.arange(T)[None, :] < torch.tensor([len(r.ids) for r in rows])[:, None]).long()
            hidden = self.base(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
        b_idx = torch.cat([torch.full((len(p),), b, dtype=torch.long) for b, r in enumerate(rows) for p in r.predict])
        cols = torch.cat([torch.as_tensor(p) for r in rows for p in r.predict])
        targets = torch.cat([torch.as_tensor(_targets(r, j), dtype=torch.long) for r in rows
                             for j in range(len(r.members))])
        return hidden[b_idx.to(self.device), cols.to(self.device)], targets.to(self.device)

    def response_hidden(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        """`hidden` of the sequences as given (input order, no sharing): what two models compare row by row."""
        return self.hidden(pack_by_prompt(seqs, share=False))

    def _score_rows(self, rows, ns, k, gather):
        h, targets = self.hidden(rows)
        g = torch.as_tensor(np.concatenate(gather), dtype=torch.long, device=self.device) if gather else None
        parts = {"realized_logp": [], "topk_ids": [], "topk_logp": [], "tail_logp": [], "gathered_logp": []}
        for c in range(0, len(h), self.chunk):
            logits = self._logits(h[c:c + self.chunk])
            lse = torch.logsumexp(logits, -1, keepdim=True)
            parts["realized_logp"].append(logits.gather(1, targets[c:c + self.chunk, None])[:, 0] - lse[:, 0])
            if g is not None:
                parts["gathered_logp"].append(logits.gather(1, g[c:c + self.chunk]) - lse)
            if k:
                top = logits.topk(k, dim=-1)
                parts["topk_ids"].append(top.indices)
                parts["topk_logp"].append(top.values - lse)
                logits.scatter_(1, top.indices, float("-inf"))
                parts["tail_logp"].append(torch.logsumexp(logits, -1) - lse[:, 0])
        flat = {name: torch.cat(v).cpu().numpy() for name, v in parts.items() if v}
        bounds = np.cumsum([0] + list(ns))
        return [Scores(**{name: v[bounds[b]:bounds[b + 1]] for name, v in flat.items()}) for b in range(len(ns))]

    @torch.inference_mode()
    def kl_to(self, other: "HFScorer", seqs: list[Sequence]) -> list[np.ndarray]:
        """Per sequence, KL(self || other) over the full shared vocabulary at each response position (nats):
            KL_t = sum_v p(v|s_t) (log p(v|s_t) - log q(v|s_t)),  p = this model, q = `other`."""
        out: list = [None] * len(seqs)
        for batch in token_budget_batches([len(s.ids) for s in seqs], self.token_budget):
            part = [seqs[i] for i in batch]
            hp, _ = self.response_hidden(part)
            hq, _ = other.response_hidden(part)
            kl = []
            for c in range(0, len(hp), self.chunk):
                lp = torch.log_softmax(self._logits(hp[c:c + self.chunk]), -1)
                lq = torch.log_softmax(other._logits(hq[c:c + self.chunk]), -1)
                kl.append((lp.exp() * (lp - lq)).sum(-1))
            flat = torch.cat(kl).cpu().numpy()
            bounds = np.cumsum([0] + [s.n for s in part])
            for j, i in enumerate(batch):
                out[i] = flat[bounds[j]:bounds[j + 1]]
        return out


def _targets(row: Packed, j: int) -> list[int]:
    """The response tokens of member j of a packed row."""
    br = row.branch
    return [t for t, b in zip(row.ids, br) if b == j]


@torch.inference_mode()
def generate(model, prompts: list[list[int]], eos_id: int, pad_id: int, max_new_tokens: int,
             token_budget: int = 4096) -> list[tuple[list[int], str]]:
    """Greedy decoding: (response ids through the first end-of-turn token, "stop" | "length") per prompt,
    in input order.

    Prompts are left-padded in batches of similar length; padding can flip a greedy choice where
    two tokens are within float rounding of each other.
    """
    device = next(model.parameters()).device
    out: list = [None] * len(prompts)
    lengths = [len(p) + max_new_tokens for p in prompts]
    for batch in token_budget_batches(lengths, token_budget):
        T = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), T), dtype=torch.long)
        for b, i in enumerate(batch):
            ids[b, T - len(prompts[i]):] = torch.as_tensor(prompts[i])
            mask[b, T - len(prompts[i]):] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos_id, pad_token_id=pad_id)
        for b, i in enumerate(batch):
            new = gen[b, T:].tolist()
            if eos_id in new:
                out[i] = (new[: new.index(eos_id) + 1], "stop")
            else:
                out[i] = (new, "length")
    return out
