"""The built-in world (docs/TINY_WORLD.md): tokenizer, data and models, each an artifact built once.

Built-in names (`builtin:NAME` in a recipe):

* models `tiny-teacher-sft` (pi_ref), `tiny-teacher-dpo` (pi_dpo), `tiny-student-sft` (pi_init),
  trained from random initialisation by this project's own trainer;
* datasets (`strings` preference pairs): `tiny-sort-train` (the distillation pairs), `tiny-sort-valid`
  (checkpoint selection), `tiny-sort-test` (reported results), `tiny-sort-dpo` (the teacher's DPO).

Each name takes an optional `:seedN` (`builtin:tiny-teacher-dpo:seed1`): the same world drawn
from another seed (data, initialisations, data order), for repeated measurements.

Building a model builds what it needs first (the tokenizer, the data, the SFT teacher before its
DPO), under the store's locks, so concurrent runs build each thing once.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from artifacts import ArtifactSpec, ArtifactWriter, Store, WriteOptions
from artifacts.folders import publish_folder
from pipeline.worlds import sorting_task
from schemas import sequences
from schemas.keys import artifact_key
from stages.common.models import resolve
from stages.common.ranks import silent
from stages.common.tokenizers import tokenizer_fingerprint
from stages.distill.distiller import Distiller, Job, Place
from stages.distill.settings import Distill
from stages.teacher_cache import run as stage_one
from stages.teacher_cache.render import render_prompt, render_response
from stages.teacher_cache.settings import Data, TeacherCache

# Everything that fixes the world; part of every key built from it.
WORLD = {
    "version": 3, "splits": {"test": 256, "valid": 256, "train": 1024, "dpo": 8192, "sft": 8192},
    "policy": {"min_len": sorting_task.MIN_LEN, "max_len": sorting_task.MAX_LEN, "flaw": sorting_task.FLAW,
               "slip": sorting_task.SLIP},
    "teacher": {"hidden": 128, "layers": 3, "heads": 4}, "student": {"hidden": 64, "layers": 2, "heads": 2},
    "sft": {"sft_lr": 3e-3, "epochs": 4, "batch_pairs": 64, "warmup": 0.05},
    "dpo": {"lr": 5e-5, "epochs": 2, "batch_pairs": 128, "beta": 0.1, "warmup": 0.1},
}
MODELS = ("tiny-teacher-sft", "tiny-teacher-dpo", "tiny-student-sft")
DATASETS = {"tiny-sort-train": "train", "tiny-sort-valid": "valid", "tiny-sort-test": "test", "tiny-sort-dpo": "dpo"}
SPECIAL = ["<pad>", "<|im_start|>", "<|im_end|>"]
WORDS = ["system", "user", "assistant", "sort"] + [str(d) for d in range(10)]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MAX_LENGTH = 32


def tokenizer(store: Store) -> Path:
    """A word-level tokenizer with a ChatML template, built with the `tokenizers` library."""
    def build(d: Path):
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast
        vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
        t = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
        t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        t.add_special_tokens(SPECIAL)
        tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<|im_end|>",
                                      bos_token="<|im_start|>", unk_token="<pad>")
        tok.chat_template = CHAT_TEMPLATE
        tok.save_pretrained(d)
        return {"vocab_size": len(vocab)}
    folder, _, _ = publish_folder(store, "tokenizer", {"builtin": "tiny-sort", "special": SPECIAL, "words": WORDS,
                                                       "template": CHAT_TEMPLATE, "version": 1}, build)
    return folder


def dataset(store: Store, split: str, world_seed: int = 0) -> Path:
    """The jsonl file of a split: `sft` (prompt, response) or preference pairs (test, valid, train, dpo)."""
    def build(d: Path):
        rows = sorting_task.split_rows(world_seed, WORLD["splits"], split)
        (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"rows": len(rows)}
    folder, _, _ = publish_folder(store, "dataset", {"builtin": f"tiny-sort-{split}", "seed": world_seed,
                                                     "splits": WORLD["splits"], "policy": WORLD["policy"],
                                                     "version": WORLD["version"]}, build)
    return folder / "data.jsonl"


def _init_model(store: Store, role: str, world_seed: int) -> Path:
    """A randomly initialised Llama of the role's shape, with the world's tokenizer."""
    tok_dir = tokenizer(store)
    shape = WORLD[role]

    def build(d: Path):
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
        tok = AutoTokenizer.from_pretrained(tok_dir)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=shape["hidden"], intermediate_size=3 * shape["hidden"],
                          num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                          num_key_value_heads=shape["heads"], max_position_embeddings=64, tie_word_embeddings=True,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(2 * world_seed + (0 if role == "teacher" else 1))
        model = LlamaForCausalLM(cfg)
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(d)
        tok.save_pretrained(d)
        return {"parameters": sum(p.numel() for p in model.parameters())}
    folder, _, _ = publish_folder(store, "model", {"builtin": f"tiny-{role}-init", "shape": shape,
                                                   "tokenizer": tok_dir.name, "seed": world_seed}, build)
    return folder


def _sft_tokens(store: Store, world_seed: int) -> str:
    """The SFT data rendered with the world's chat template, as a `tokenized` artifact (one chosen row each)."""
    from transformers import AutoTokenizer

    tok_dir = tokenizer(store)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    data = dataset(store, "sft", world_seed)
    rows = [json.loads(ln) for ln in data.read_text().splitlines()]
    inputs = {"data": {"builtin": "tiny-sort-sft", "file": data.parent.name},
              "render": {"tokenizer": tokenizer_fingerprint(tok), "template_from": "student",
                         "max_length": MAX_LENGTH}}
    spec = ArtifactSpec("tokenized", inputs, sequences.Codec, {"vocab_size": len(tok), "with_logp": False}, len(rows))
    with ArtifactWriter(store, spec, options=WriteOptions(max_shard_rows=len(rows))) as w:
        if not w.reused:
            for i, r in enumerate(rows):
                msgs = [{"role": "user", "content": r["prompt"]}]
                p = render_prompt(tok, msgs)
                w.add(i, [sequences.Row(r["id"], "chosen", i, p + render_response(tok, msgs, p, r["response"]), len(p))])
            w.publish({})
        return w.key


def _suffix(world_seed: int) -> str:
    return f":seed{world_seed}" if world_seed else ""


# How the world's own stage-one run renders and scores (its data: the train pairs).
SCORING = TeacherCache(backend="hf", k=8, max_length=MAX_LENGTH, max_new_tokens=12, token_budget=8192)


def _run_dir(store: Store, what: str, world_seed: int) -> Path:
    """Where a world model's training run (metrics, loss curve) goes: inside its store, so that worlds of
    two stores never share a run folder."""
    return store.root / ".world-runs" / f"tiny-world{_suffix(world_seed)}-{what}"


def _sft(store: Store, role: str, world_seed: int, say) -> Path:
    d = Distill(loss="sft", token_budget=8192, seed=world_seed, **WORLD["sft"])
    init = resolve(str(_init_model(store, role, world_seed)))
    job = Job("sft", init, d, {"student_logp": _sft_tokens(store, world_seed)})
    return _train(store, job, _run_dir(store, f"{role}-sft", world_seed), say)


def _dpo_teacher(store: Store, world_seed: int, say) -> Path:
    sft = resolve(str(build(f"tiny-teacher-sft{_suffix(world_seed)}", store, say)[0]))
    d = Distill(loss="dpo", token_budget=8192, seed=world_seed, **WORLD["dpo"])
    data = Data(source=str(dataset(store, "dpo", world_seed)), format="strings")  # the teacher's own pairs
    run = stage_one.setup(stage_one.Request({"teacher": sft, "reference": sft, "student": sft}, data, SCORING), store,
                          say=silent)
    try:
        ref = stage_one.seq_logp(run, "student", silent)
    finally:
        run.close()
    return _train(store, Job("dpo", sft, d, {"student_logp": ref.key}), _run_dir(store, "teacher-dpo", world_seed),
                  say)


def _train(store: Store, job: Job, run_dir: Path, say) -> Path:
    """A world model's training run; its folder is the world's own (overwritten), the model a store artifact."""
    return Distiller(store, job, Place(run_dir, overwrite=True, title="tiny-world", say=say or silent)).run().model_dir


@contextmanager
def _one_thread():
    """Train the world on one thread whatever OMP_NUM_THREADS says: a float sum split over threads may
    round differently (seen on CI's CPU at 2 threads, not on AVX2 here), and the world's models must be
    the same bits on every run of one machine. The student's build takes 47 s instead of 41."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def known(name: str) -> bool:
    return name.partition(":seed")[0] in MODELS + tuple(DATASETS)


def build(name: str, store: Store | None = None, say=None) -> tuple[Path, dict]:
    """Folder (or data file) and manifest of a built-in of the world, building it if needed.
    `NAME:seedN` is the same thing in the world of seed N (default 0)."""
    store = store or Store()
    base, _, seed_text = name.partition(":seed")
    if seed_text and not seed_text.isdigit():
        raise ValueError(f"built-in {name!r}: the world's seed must be a number (NAME:seed1)")
    seed = int(seed_text or 0)
    if base in DATASETS:
        path = dataset(store, DATASETS[base], seed)
    elif base in MODELS:
        # Several processes (torchrun ranks, parallel runs) may ask at once: one trains, the others wait
        # and then reuse what it published.
        with store.lock(artifact_key("world", {"model": base, "seed": seed, "world": WORLD},
                                     {"name": "lock", "version": "1"})), _one_thread():
            path = _dpo_teacher(store, seed, say) if base == "tiny-teacher-dpo" else \
                _sft(store, "teacher" if base == "tiny-teacher-sft" else "student", seed, say)
    else:
        raise ValueError(f"unknown built-in {name!r} of the tiny world (known: {', '.join(MODELS + tuple(DATASETS))})")
    folder = path if path.is_dir() else path.parent
    return path, store.manifest(folder.name)

