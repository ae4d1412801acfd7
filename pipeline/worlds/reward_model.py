"""A Bradley-Terry reward model for a built-in world: a causal LM's body with a one-output head,
trained on preference pairs, rendered as `stages/evaluate/reward_model.py` reads them.

World v4 (docs/PREREG-v4.md) selects checkpoints with it (`distill.select_by: rm`), as the paper
selected with a separate reward model, instead of the world's ground truth, which no user has.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from adpa.stages.evaluate.reward_model import conversation_ids


def bradley_terry(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """mean over pairs of -log sigmoid(r_c - r_r): the negative log-likelihood of the preferences under
    the Bradley-Terry model P(chosen > rejected) = sigmoid(r_c - r_r)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def _ids(tok, row: dict, answer: str) -> list[int]:
    return conversation_ids(tok, [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": answer}])


def _scores(model, seqs: list[list[int]], pad: int) -> torch.Tensor:
    """One score per sequence, in one right-padded batch (the head reads the last token that is not
    padding; the world's texts never hold the pad token)."""
    width = max(map(len, seqs))
    x = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    return model(input_ids=x, attention_mask=(x != pad).long()).logits[:, 0]


def _schedule(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over `warmup` of the steps, then cosine to 0."""
    w = max(1, round(warmup * total))
    return (step + 1) / w if step < w else 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def train(init: Path, rows: list[dict], settings: dict, seed: int, say):
    """(model, tokenizer): `init`'s body and a new one-output head, trained with the Bradley-Terry loss on
    `rows` (prompt, chosen, rejected) for settings' epochs at its lr and batch_pairs."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    tok = AutoTokenizer.from_pretrained(init)
    torch.manual_seed(seed)  # the new head's initialisation
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: score.weight" is the point here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(init, num_labels=1, pad_token_id=tok.pad_token_id)
    finally:
        hf_logging.set_verbosity(verbosity)
    pairs = [(_ids(tok, r, r["chosen"]), _ids(tok, r, r["rejected"])) for r in rows]
    b = settings["batch_pairs"]
    total = settings["epochs"] * math.ceil(len(pairs) / b)
    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, total, settings["warmup"]))
    rng, step = random.Random(f"rm-{seed}"), 0
    model.train()
    for _ in range(settings["epochs"]):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for i in range(0, len(order), b):
            batch = [pairs[j] for j in order[i:i + b]]
            r = _scores(model, [c for c, _ in batch] + [rj for _, rj in batch], tok.pad_token_id)
            loss = bradley_terry(r[:len(batch)], r[len(batch):])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            if step % max(1, total // 5) == 0 or step == total:
                say(f"reward model: step {step}/{total}, Bradley-Terry loss {loss.item():.4f}")
    return model.eval(), tok


def accuracy(model, tok, rows: list[dict]) -> float:
    """How often the model scores the chosen answer above the rejected one (ties count half)."""
    hits = 0.0
    with torch.inference_mode():
        for i in range(0, len(rows), 64):
            batch = rows[i:i + 64]
            r = _scores(model, [_ids(tok, x, x["chosen"]) for x in batch] + [_ids(tok, x, x["rejected"]) for x in batch],
                        tok.pad_token_id)
            d = r[:len(batch)] - r[len(batch):]
            hits += float((d > 0).sum() + 0.5 * (d == 0).sum())
    return hits / len(rows)
