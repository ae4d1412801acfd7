"""World v4 (docs/PREREG-v4.md): its constants are the prereg's, its task has the registered properties,
its reward model's loss is the Bradley-Terry likelihood."""

import collections
import json
import math
from pathlib import Path

import pytest
import torch

from adpa.pipeline.worlds import flawed_sorting as F
from adpa.pipeline.worlds import sorting_task as T
from adpa.pipeline.worlds import tiny4

PREREG = json.loads((Path(__file__).parent.parent / "docs" / "PREREG-v4.json").read_text())


def test_the_world_is_the_registered_one():
    w, reg = tiny4.WORLD, PREREG["world"]
    assert w["splits"] == reg["splits_in_drawing_order"] and tuple(reg["splits_in_drawing_order"]) == F.SPLITS
    assert w["policy"]["classes"] == reg["flaw_class_by_prompt_verb"] and set(F.CLASSES.values()) - {"none"} == set(reg["flaws"])
    assert all(reg["flaws"][k] == f"every {a} of the sorted list written as {b}" or reg["flaws"][k] == f"every {a} written as {b}"
               for k, (a, b) in F.SUBSTITUTIONS.items())
    assert (F.MIN_LEN, F.MAX_LEN) == (reg["digits"]["min_len"], reg["digits"]["max_len"])
    assert (F.FLAW, F.SLIP) == (reg["policy"]["flaw"], reg["policy"]["slip"])
    for role in ("teacher", "s8", "s32"):
        shape = reg["models"][role]
        assert w[role] == {k: shape[k] for k in ("hidden", "layers", "heads")} and shape["intermediate"] == 3 * shape["hidden"]
    sft = reg["training"]["sft"]
    assert w["sft"] == {"sft_lr": sft["lr"], "epochs": sft["epochs"], "batch_pairs": sft["batch"], "warmup": sft["warmup"]}
    assert w["rm"] == reg["training"]["reward_model"]
    t = reg["training"]["teacher_dpo"]
    assert w["dpo"] == {"epochs": t["epochs"], "batch_pairs": t["batch_pairs"], "warmup": t["warmup"],
                        "eval_every": t["eval_every"], "select_by": "rm"}
    grid = PREREG["methods"]["dpo"]["grid"]
    assert tiny4.DPO_GRID == [{"lr": lr, "beta": b} for lr in grid["lr"] for b in grid["beta"]]
    assert w["splits"]["dpo"] == 16 * w["splits"]["train"]


KINDS = ["two_as_seven", "four_as_one", "six_as_three", "eight_as_five"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_flaw_keeps_the_length_and_moves_with_the_list(kind):
    import random
    rng, positions = random.Random(kind), set()
    for _ in range(300):
        s = sorted(rng.randrange(10) for _ in range(rng.randint(F.MIN_LEN, F.MAX_LEN)))
        bad = F.flawed(kind, s)
        if bad is None:
            continue
        a, b = F.SUBSTITUTIONS[kind]
        assert len(bad) == len(s) and bad != s
        assert [i for i, (x, y) in enumerate(zip(s, bad)) if x != y] == [i for i, x in enumerate(s) if x == a]
        assert all(y == b for x, y in zip(s, bad) if x == a)
        positions.add(s.index(a))
    assert len(positions) >= 3  # not one fixed place
    assert F.flawed(kind, [d for d in range(10) if d != F.SUBSTITUTIONS[kind][0]] * 2) is None  # its digit absent
    assert F.flawed("none", [1, 2]) is None


def test_the_policy_has_each_flaw_in_10_to_20_percent_and_the_pairs_no_dominant_contrast():
    sizes = tiny4.WORLD["splits"]
    rows = F.split_rows(0, sizes, "sft")
    seen = collections.Counter()
    for r in rows:
        kind, xs = F.flaw_class(r["prompt"]), T.prompt_digits(r["prompt"])
        got, bad = T.digits(r["response"]), F.flawed(kind, sorted(xs))
        seen[kind if bad is not None and got == bad else "other"] += 1
    for kind in KINDS:
        assert 0.10 <= seen[kind] / len(rows) <= 0.20, (kind, seen)
    pairs = F.split_rows(0, sizes, "train")
    contrasts = collections.Counter(F.flaw_class(p["prompt"]) for p in pairs
                                    if (T.digits(p["rejected"]) == F.flawed(F.flaw_class(p["prompt"]), sorted(T.prompt_digits(p["prompt"]))))
                                    and T.digits(p["chosen"]) == sorted(T.prompt_digits(p["prompt"])))
    assert max(contrasts.values()) < 0.5 * sum(contrasts.values()), contrasts
    assert all(T.reward(p["prompt"], p["chosen"]) >= T.reward(p["prompt"], p["rejected"]) for p in pairs)


def test_splits_share_no_list_of_digits():
    sizes = {"test": 64, "valid": 64, "train": 64, "rm": 64, "dpo": 64, "sft": 64}
    seen = {}
    for split in F.SPLITS:
        for r in F.split_rows(3, sizes, split):
            key = tuple(T.prompt_digits(r["prompt"]))
            assert key not in seen, (split, seen.get(key))
            seen[key] = split
    assert F.split_rows(3, sizes, "valid") == F.split_rows(3, sizes, "valid")


def test_bradley_terry_against_float64_by_hand():
    from adpa.pipeline.worlds.reward_model import bradley_terry
    rc, rr = torch.tensor([1.5, -0.2, 0.3]), torch.tensor([0.5, 0.4, 0.3])
    want = sum(-math.log(1 / (1 + math.exp(-(a - b)))) for a, b in zip(rc.double().tolist(), rr.double().tolist())) / 3
    assert bradley_terry(rc, rr).item() == pytest.approx(want, rel=1e-6)
