"""World v4's task (docs/PREREG-v4.md): sort 16 to 22 digits; a policy with four flaw types.

Which flaw a prompt admits is set by its verb (`CLASSES`), so a model of any size can learn where the
policy errs; each flaw keeps the answer's length and sits where the list puts it. The ground truth
is v3's graded reward (`sorting_task.reward`). Everything is a pure function of a seed; splits draw
their prompts in a fixed order and never reuse a prompt of an earlier split.
"""

from __future__ import annotations

import random

from adpa.pipeline.worlds.sorting_task import prompt_digits, reward, slip

MIN_LEN, MAX_LEN = 16, 22
FLAW = 0.9  # how often the policy makes its prompt's flaw where it can
SLIP = 0.2  # how often it also makes one random slip
# The prompt's verb, drawn uniformly, sets the flaw its answers may carry ("sort": none).
CLASSES = {"sort": "none", "order": "two_as_seven", "rank": "four_as_one", "arrange": "six_as_three",
           "list": "eight_as_five"}
# Each flaw writes every copy of one digit as another (amendment 2): easy to imitate at any size, and it
# lands wherever the sorted list puts that digit.
SUBSTITUTIONS = {"two_as_seven": (2, 7), "four_as_one": (4, 1), "six_as_three": (6, 3), "eight_as_five": (8, 5)}
# Splits in drawing order: prompts of a later split never repeat an earlier one's.
SPLITS = ("test", "valid", "train", "rm", "dpo", "sft")


def flaw_class(prompt: str) -> str:
    """The flaw type a prompt admits ("none" for the flaw-free prompts): set by its verb."""
    return CLASSES[prompt.split()[0]]


def flawed(kind: str, s: list[int]) -> list[int] | None:
    """The sorted list `s` with flaw `kind`, or None where the flaw cannot occur (its digit is absent)."""
    if kind == "none":
        return None
    if kind not in SUBSTITUTIONS:
        raise ValueError(f"unknown flaw {kind!r}")
    a, b = SUBSTITUTIONS[kind]
    return [b if d == a else d for d in s] if a in s else None


def sample(prompt: str, rng: random.Random) -> list[int]:
    """One answer of the policy: its prompt's flaw with probability FLAW where possible, then a random
    slip with probability SLIP."""
    xs = prompt_digits(prompt)
    bad = flawed(flaw_class(prompt), sorted(xs))
    ys = bad if bad is not None and rng.random() < FLAW else sorted(xs)
    return slip(ys, rng) if rng.random() < SLIP else ys


def _prompts(seed: int, sizes: dict[str, int]) -> dict[str, list[str]]:
    """Every split's prompts (a verb, then the digits), drawn in SPLITS order from one seeded stream, each
    list of digits used once."""
    rng = random.Random(f"v4-prompts-{seed}")
    seen, out = set(), {}
    verbs = list(CLASSES)
    for split in SPLITS:
        out[split] = []
        while len(out[split]) < sizes[split]:
            verb = verbs[rng.randrange(len(verbs))]
            xs = [rng.randrange(10) for _ in range(rng.randint(MIN_LEN, MAX_LEN))]
            if tuple(xs) not in seen:
                seen.add(tuple(xs))
                out[split].append(f"{verb} {_words(xs)}")
    return out


def _words(ys: list[int]) -> str:
    return " ".join(map(str, ys))


def split_rows(seed: int, sizes: dict[str, int], split: str) -> list[dict]:
    """The rows of one split: `sft` (prompt, one answer of the policy) or preference pairs (prompt,
    chosen, rejected: two distinct answers, the better chosen, a tie broken by a coin)."""
    rng = random.Random(f"v4-responses-{split}-{seed}")
    rows = []
    for i, p in enumerate(_prompts(seed, sizes)[split]):
        if split == "sft":
            rows.append({"id": f"sft-{i}", "prompt": p, "response": _words(sample(p, rng))})
            continue
        a, b = sample(p, rng), sample(p, rng)
        while b == a:  # a pair of identical answers states no preference
            b = sample(p, rng)
        ra, rb = reward(p, _words(a)), reward(p, _words(b))
        if rb > ra or (rb == ra and rng.random() < 0.5):
            a, b = b, a
        rows.append({"id": f"{split}-{i}", "prompt": p, "chosen": _words(a), "rejected": _words(b)})
    return rows
