"""The built-in world's task (docs/TINY_WORLD.md): sort a list of digits, graded by a program.

A mediocre policy (a program) writes the responses the world learns from: it usually makes one
systematic mistake, and sometimes a random slip. Preference pairs are two distinct samples of
that policy, the better one chosen. Everything here is a pure function of a seed; splits draw
their prompts in a fixed order and never reuse a prompt of an earlier split.
"""

from __future__ import annotations

import random

MIN_LEN, MAX_LEN = 4, 7
FLAW = 0.95  # how often the mediocre policy makes the systematic mistake where it can
SLIP = 0.3  # how often it also makes one random slip
# Splits in drawing order: prompts of a later split never repeat an earlier one's.
SPLITS = ("test", "valid", "train", "dpo", "sft")


def prompt_text(xs: list[int]) -> str:
    return "sort " + " ".join(map(str, xs))


def digits(text: str) -> list[int] | None:
    """The digits of a prompt or response, or None when it is not a list of digits."""
    words = text.split()
    if words and words[0] == "sort":
        words = words[1:]
    return [int(w) for w in words] if words and all(w.isdigit() and len(w) == 1 for w in words) else None


VERBS = ("sort", "order", "rank", "arrange", "list")  # the words a prompt may start with (v4 uses all)


def prompt_digits(prompt: str) -> list[int]:
    """The digits of a prompt: its words after the verb."""
    words = prompt.split()
    return digits(" ".join(words[1:])) or [] if words and words[0] in VERBS else digits(prompt) or []


def reward(prompt: str, response: str) -> float:
    """Graded: the fraction of the sorted list's positions the response gets right, over the longer of the
    two lengths (a missing or extra digit costs a position); 1.0 exactly when the response is sorted."""
    want = sorted(prompt_digits(prompt))
    got = digits(response) or []
    return sum(a == b for a, b in zip(want, got)) / max(len(want), len(got), 1)


def last_pair_swapped(xs: list[int]) -> list[int] | None:
    """The systematic mistake: a sort that stopped one pass early leaves its last two digits swapped.
    Possible when the two largest digits differ."""
    s = sorted(xs)
    return s[:-2] + [s[-1], s[-2]] if s[-1] != s[-2] else None


def slip(ys: list[int], rng: random.Random) -> list[int]:
    """One random mistake that keeps the length: two neighbours swapped or one digit off by one."""
    for _ in range(50):
        if rng.random() < 0.5:
            i = rng.randrange(len(ys) - 1)
            out = ys[:i] + [ys[i + 1], ys[i]] + ys[i + 2:]
        else:
            i = rng.randrange(len(ys))
            out = ys[:i] + [min(9, max(0, ys[i] + rng.choice((-1, 1))))] + ys[i + 1:]
        if out != ys:
            return out
    return ys


def mediocre(xs: list[int], rng: random.Random) -> list[int]:
    """A sample of the mediocre policy: the systematic mistake with probability FLAW where possible,
    then a random slip with probability SLIP."""
    flawed = last_pair_swapped(xs)
    ys = flawed if flawed is not None and rng.random() < FLAW else sorted(xs)
    return slip(ys, rng) if rng.random() < SLIP else ys


def _prompts(seed: int, sizes: dict[str, int]) -> dict[str, list[list[int]]]:
    """Every split's prompts, drawn in SPLITS order from one seeded stream, each prompt used once."""
    rng = random.Random(f"prompts-{seed}")
    seen, out = set(), {}
    for split in SPLITS:
        out[split] = []
        while len(out[split]) < sizes[split]:
            xs = [rng.randrange(10) for _ in range(rng.randint(MIN_LEN, MAX_LEN))]
            if tuple(xs) not in seen:
                seen.add(tuple(xs))
                out[split].append(xs)
    return out


def split_rows(seed: int, sizes: dict[str, int], split: str) -> list[dict]:
    """The rows of one split: `sft` (prompt, one response of the mediocre policy) or preference pairs
    (prompt, chosen, rejected: two distinct samples, the better chosen, a tie broken by a coin)."""
    xs_list = _prompts(seed, sizes)[split]
    rng = random.Random(f"responses-{split}-{seed}")
    rows = []
    for i, xs in enumerate(xs_list):
        p = prompt_text(xs)
        if split == "sft":
            rows.append({"id": f"sft-{i}", "prompt": p, "response": " ".join(map(str, mediocre(xs, rng)))})
            continue
        a = mediocre(xs, rng)
        b = mediocre(xs, rng)
        while b == a:  # a pair of identical answers states no preference
            b = mediocre(xs, rng)
        ra, rb = reward(p, " ".join(map(str, a))), reward(p, " ".join(map(str, b)))
        if rb > ra or (rb == ra and rng.random() < 0.5):
            a, b = b, a
        rows.append({"id": f"{split}-{i}", "prompt": p, "chosen": " ".join(map(str, a)),
                     "rejected": " ".join(map(str, b))})
    return rows
