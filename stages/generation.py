"""ADPA states: responses generated once, greedily by default, with transformers `generate`."""

from __future__ import annotations

import torch

from stages.scoring import token_budget_batches


@torch.inference_mode()
def generate(model, prompts: list[list[int]], eos_id: int, pad_id: int, max_new_tokens: int,
             token_budget: int = 4096, greedy: bool = True) -> list[tuple[list[int], str]]:
    """(response ids through the first end-of-turn token, "stop" | "length") per prompt, in input order.

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
                             do_sample=not greedy, eos_token_id=eos_id, pad_token_id=pad_id)
        for b, i in enumerate(batch):
            new = gen[b, T:].tolist()
            if eos_id in new:
                out[i] = (new[: new.index(eos_id) + 1], "stop")
            else:
                out[i] = (new, "length")
    return out
