"""A reward model the user names (`models.reward_model`): a sequence classifier with one output, the
Bradley-Terry score of a whole conversation (as TRL's RewardTrainer and the paper's FsfairX make).
`distill.select_by: rm` selects checkpoints by its mean score of the student's greedy answers on the
validation prompts: a measure a user has, where the built-in world's ground-truth reward is an oracle.
"""

from __future__ import annotations

import numpy as np

from adpa.stages.common.models import ResolvedModel, load_model, load_tokenizer


def conversation_ids(tok, messages: list[dict]) -> list[int]:
    """The conversation as a reward model reads it: its own chat template, else the turns' text (training
    one, as the built-in world does, renders the same way)."""
    if tok.chat_template:
        return list(tok.apply_chat_template(messages, tokenize=True, return_dict=False))
    return tok("\n\n".join(m["content"] for m in messages))["input_ids"]


class RewardModel:
    def __init__(self, m: ResolvedModel, device: str):
        import torch
        self.spec, self.device, self.tok = m.spec, device, load_tokenizer(m)
        self.model = load_model(m, torch.float32, device, head="reward")
        if self.model.config.num_labels != 1:
            raise ValueError(f"{m.spec}: a reward model has one output (num_labels 1); this one has "
                             f"{self.model.config.num_labels}")

    def ids(self, messages: list[dict]) -> list[int]:
        return conversation_ids(self.tok, messages)

    def score(self, conversations: list[list[dict]]) -> np.ndarray:
        """One score per conversation (prompt turns and the answer as the last, assistant, turn)."""
        import torch
        out = []
        with torch.inference_mode():
            # One conversation per forward: the classification head reads the last token that is not padding,
            # found by the pad id, which a conversation may hold itself; an unpadded row leaves no doubt.
            for conv in conversations:
                x = torch.tensor([self.ids(conv)], device=self.device)
                out.append(float(self.model(input_ids=x).logits[0, 0]))
        return np.array(out)
