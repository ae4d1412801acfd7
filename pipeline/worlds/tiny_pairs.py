"""`builtin:tiny-pairs`: arithmetic preference pairs generated from a seed, stored as a jsonl artifact.

Chosen answers are correct; rejected ones are off by a small amount. Some prompts carry an
earlier exchange, so multi-turn histories go through the whole pipeline.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from adpa.artifacts import Store
from adpa.artifacts.folders import publish_folder

FILE = "pairs.jsonl"


def make_pairs(n: int = 64, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        op = rng.choice("+-")
        c = a + b if op == "+" else a - b
        wrong = c + rng.choice([-2, -1, 1, 2, 10])
        history = []
        if i % 4 == 3:
            x, y = rng.randint(2, 9), rng.randint(2, 9)
            history = [{"role": "user", "content": f"What is {x} + {y}?"},
                       {"role": "assistant", "content": f"{x} + {y} = {x + y}."}]
        prompt = history + [{"role": "user", "content": f"What is {a} {op} {b}?"}]
        rows.append({"id": f"tiny-{i:04d}",
                     "chosen": prompt + [{"role": "assistant", "content": f"{a} {op} {b} = {c}."}],
                     "rejected": prompt + [{"role": "assistant", "content": f"{a} {op} {b} = {wrong}."}]})
    return rows


def build(store: Store, n: int = 64, seed: int = 0) -> Path:
    """Path of the jsonl file, written once into the store."""
    def write(d: Path):
        with open(d / FILE, "w") as f:
            for r in make_pairs(n, seed):
                f.write(json.dumps(r) + "\n")
        return {"rows": n}
    folder, _, _ = publish_folder(store, "dataset", {"builtin": "tiny-pairs", "n": n, "seed": seed, "version": 1}, write)
    return folder / FILE
