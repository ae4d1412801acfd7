"""Real English text available offline: the Python documentation topics and license shipped with CPython,
and a multi-turn chat corpus made from them."""

from __future__ import annotations

import random
import re
import sysconfig
from pathlib import Path

from pydoc_data.topics import topics


def real_text() -> str:
    return "\n\n".join(topics[k] for k in sorted(topics))


def _sentences() -> list[str]:
    """Sentences of the documentation topics and of CPython's LICENSE.txt, whitespace collapsed."""
    text = real_text()
    lic = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    if lic.exists():
        text += "\n\n" + lic.read_text(errors="replace")
    out = []
    for para in text.split("\n\n"):
        para = " ".join(para.split())
        out += [s for s in re.split(r"(?<=[.!?])\s+", para) if 20 <= len(s) <= 400 and s[0].isalpha()]
    return out


def chat_pairs(n: int, seed: int = 0) -> list[dict]:
    """`n` preference pairs shaped like multi-turn chat data (HH-RLHF's Human/Assistant dialogues):
    HH-RLHF's transcript format, a prompt of three turns (Human, Assistant, Human) about as long as
    the chosen and rejected answers together (HH-RLHF: 374 prompt characters against 368 for both
    responses). Turns are runs of consecutive real sentences; chosen continues the dialogue's
    passage, rejected is a run from elsewhere."""
    sents, rng = _sentences(), random.Random(seed)

    def run(start: int, chars: int) -> tuple[str, int]:
        out, i = [], start
        while sum(len(s) + 1 for s in out) < chars:
            out.append(sents[i % len(sents)])
            i += 1
        return " ".join(out), i

    pairs = []
    for _ in range(n):
        at = rng.randrange(len(sents))
        question, at = run(at, rng.randint(30, 90))
        answer, at = run(at, rng.randint(40, 130))
        follow, at = run(at, rng.randint(20, 70))
        chosen, _ = run(at, rng.randint(40, 200))
        rejected, _ = run(rng.randrange(len(sents)), rng.randint(40, 200))
        prompt = f"\n\nHuman: {question} Can you explain?\n\nAssistant: {answer}\n\nHuman: {follow} And then?"
        pairs.append({"chosen": f"{prompt}\n\nAssistant: {chosen}", "rejected": f"{prompt}\n\nAssistant: {rejected}"})
    return pairs
