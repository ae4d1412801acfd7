"""The transformers backend: every task, on any model `from_pretrained` loads (exact gathers included)."""

from __future__ import annotations

import numpy as np

from adpa.artifacts.writer import package_versions
from adpa.stages.common.device import pad_id
from adpa.stages.common.lm import HFScorer, Scores, Sequence, generate
from adpa.stages.common.models import load_model
from adpa.stages.teacher_cache.backends import EngineSpec


class HFBackend:
    TASKS = frozenset({"topk", "gather", "seq_logp", "generate"})

    @staticmethod
    def available() -> bool:
        return True

    @staticmethod
    def versions() -> dict:
        return package_versions("torch", "transformers")

    def __init__(self, spec: EngineSpec):
        import torch
        self.model = load_model(spec.model, getattr(torch, spec.dtype), spec.device)
        self.eos, self.pad = spec.tok.eos_token_id, pad_id(spec.tok)
        self.token_budget = spec.token_budget
        self.scorer = HFScorer(self.model, spec.vocab_size, self.pad, spec.token_budget,
                               share_prompts=spec.share_prompts)

    def topk(self, seqs: list[Sequence], k: int) -> list[Scores]:
        return self.scorer.score(seqs, k=k)

    def gather(self, seqs: list[Sequence], ids: list[np.ndarray]) -> list[Scores]:
        return self.scorer.score(seqs, gather=ids)

    def seq_logp(self, seqs: list[Sequence]) -> list[Scores]:
        return self.scorer.score(seqs)

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[tuple[list[int], str]]:
        return generate(self.model, prompts, self.eos, self.pad, max_new_tokens, self.token_budget)

    def close(self) -> None:
        self.model = self.scorer = None
