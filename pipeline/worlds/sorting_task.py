"""The built-in world's task: sort a list of digits, with a ground-truth reward and systematic mistakes.

Pure functions of a seed (docs/TINY_WORLD.md has the design and why).
"""

from __future__ import annotations

import random

MIN_LEN, MAX_LEN = 3, 6
FLAW_SHARE = 0.6  # of SFT responses and of rejected responses where the systematic flaw can occur


def prompt_text(xs: list[int]) -> str:
    return "sort " + " ".join(map(str, xs))


def digits(text: str) -> list[int] | None:
    """The digits of a prompt or response, or None when it is not a list of digits."""
    words = text.split()
    if words and words[0] == "sort":
        words = words[1:]
    return [int(w) for w in words] if words and all(w.isdigit() and len(w) == 1 for w in words) else None


def reward(prompt: str, response: str) -> float:
    """1.0 when the response is exactly the prompt's digits in ascending order, else 0.0."""
    xs = digits(prompt)
    return float(xs is not None and digits(response) == sorted(xs))


def last_pair_swapped(xs: list[int]) -> list[int] | None:
    """The systematic flaw: a sort that stopped one pass early leaves its last two digits swapped.
    Possible when the list has at least 4 digits and its two largest differ."""
    s = sorted(xs)
    return s[:-2] + [s[-1], s[-2]] if len(s) >= 4 and s[-1] != s[-2] else None


def mistake(xs: list[int], rng: random.Random) -> tuple[list[int], str]:
    """A wrong answer of the same length as the right one, carrying one mistake, and its name."""
    s = sorted(xs)
    flawed = last_pair_swapped(xs)
    if flawed is not None and rng.random() < FLAW_SHARE:
        return flawed, "last_pair_swapped"
    for _ in range(50):
        if rng.random() < 0.5:
            i = rng.randrange(len(s) - 1)
            out, name = s[:i] + [s[i + 1], s[i]] + s[i + 2:], "adjacent_swap"
        else:
            i = rng.randrange(len(s))
            out, name = s[:i] + [min(9, max(0, s[i] + rng.choice((-1, 1))))] + s[i + 1:], "off_by_one"
        if out != s:
            return out, name
    return [(d + 1) % 10 for d in s], "all_shifted"  # only for lists like 0 0 0


def _draw(rng: random.Random) -> list[int]:
    return [rng.randrange(10) for _ in range(rng.randint(MIN_LEN, MAX_LEN))]


def sft_examples(seed: int, n: int) -> list[dict]:
    """The flawed instruction data both SFT models learn from: prompt and one response."""
    rng = random.Random(f"sft-{seed}")
    out = []
    for i in range(n):
        xs = _draw(rng)
        wrong = last_pair_swapped(xs)
        flawed = wrong is not None and rng.random() < FLAW_SHARE
        resp = wrong if flawed else sorted(xs)
        out.append({"id": f"sft-{i}", "prompt": prompt_text(xs), "response": " ".join(map(str, resp)),
                    "flawed": flawed})
    return out


def preference_pairs(seed: int, n: int, split: str) -> list[dict]:
    """Pairs in the `strings` input format: chosen correct, rejected with a mistake (named)."""
    rng = random.Random(f"pairs-{split}-{seed}")
    out = []
    for i in range(n):
        xs = _draw(rng)
        wrong, name = mistake(xs, rng)
        out.append({"id": f"{split}-{i}", "prompt": prompt_text(xs), "chosen": " ".join(map(str, sorted(xs))),
                    "rejected": " ".join(map(str, wrong)), "mistake": name})
    return out
