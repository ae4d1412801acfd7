"""A toy engine, added as a contributor would add a real one: this file plus one line in `ENGINES`.

It serves one task, `seq_logp`, under a uniform model over the vocabulary (every token has log-prob
-log V); the tasks it does not serve run on the transformers backend.
"""

import math

import numpy as np

from adpa.stages.common.lm import Scores


class UniformBackend:
    TASKS = frozenset({"seq_logp"})

    @staticmethod
    def available() -> bool:
        return True

    @staticmethod
    def versions() -> dict:
        return {"uniform-engine": "0.1"}

    def __init__(self, spec):  # a backends.EngineSpec
        self.logp = -math.log(spec.vocab_size)

    def seq_logp(self, seqs) -> list[Scores]:
        return [Scores(realized_logp=np.full(s.n, self.logp)) for s in seqs]

    def close(self) -> None:
        pass
