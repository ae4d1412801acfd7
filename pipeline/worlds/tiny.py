"""The built-in worlds (docs/TINY_WORLD.md, docs/PREREG-v4.md): tokenizer, data and models, each an
artifact built once.

A `World` names its builtins `NAME-...`: version 3 is `tiny` (`V3`, here), version 4 `tiny4`
(`pipeline/worlds/tiny4.py`). Built-in names (`builtin:NAME` in a recipe), for a world `W`:

* models `W-teacher-sft` (pi_ref), `W-teacher-dpo` (pi_dpo), `W-ROLE-sft` (pi_init of each student
  role: `tiny-student-sft`; `tiny4-s8-sft`, `tiny4-s32-sft`), trained from random initialisation by
  this project's own trainer, and the world's own extras (`tiny4-reward-model`);
* datasets (`strings` preference pairs) `W-sort-SPLIT` of every split but `sft`: `train` (the
  distillation pairs), `valid` (checkpoint selection), `test` (reported results), `dpo` (the
  teacher's DPO), and v4's `rm` (the reward model's pairs).

Each name takes an optional `:seedN` (`builtin:tiny-teacher-dpo:seed1`): the same world drawn
from another seed (data, initialisations, data order), for repeated measurements.

Building a model builds what it needs first (the tokenizer, the data, the SFT teacher before its
DPO), under the store's locks, so concurrent runs build each thing once.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

from adpa.artifacts import ArtifactSpec, ArtifactWriter, Store, WriteOptions
from adpa.artifacts.folders import publish_folder
from adpa.pipeline.worlds import sorting_task
from adpa.schemas import sequences
from adpa.schemas.keys import artifact_key
from adpa.stages.common.kernels import one_thread
from adpa.stages.common.models import resolve
from adpa.stages.common.ranks import silent
from adpa.stages.common.tokenizers import tokenizer_fingerprint
from adpa.stages.distill.distiller import Distiller, Job, Place, Trained
from adpa.stages.distill.settings import Distill
from adpa.stages.teacher_cache import run as stage_one
from adpa.stages.common.chat import render_prompt, render_response
from adpa.stages.teacher_cache.settings import Data, TeacherCache


@dataclass(frozen=True)
class World:
    """One version of the built-in world: what fixes it and how its models are made."""

    name: str  # the builtins' prefix
    constants: dict  # everything that fixes the world: its data and shapes enter every key built from it
    task: ModuleType  # split_rows(seed, sizes, split): the rows of a split
    roles: tuple[str, ...]  # the model shapes in `constants`, in the order their initialisation seeds take
    words: tuple[str, ...]  # the tokenizer's words besides its special tokens
    scoring: TeacherCache  # how the world's own stage-one runs render and score (max_length: of SFT data too)
    dpo_teacher: Callable  # (store, world, seed, say) -> folder of the DPO teacher
    extras: dict[str, Callable] = field(default_factory=dict)  # other built-in models: name -> (store, world, seed, say)

    def models(self) -> tuple[str, ...]:
        return (f"{self.name}-teacher-sft", f"{self.name}-teacher-dpo",
                *(f"{self.name}-{r}-sft" for r in self.roles if r != "teacher"),
                *(f"{self.name}-{e}" for e in self.extras))

    def datasets(self) -> dict[str, str]:
        return {f"{self.name}-sort-{s}": s for s in self.constants["splits"] if s != "sft"}

    def suffix(self, seed: int) -> str:
        return f":seed{seed}" if seed else ""


SPECIAL = ["<pad>", "<|im_start|>", "<|im_end|>"]
WORDS = ["system", "user", "assistant", "sort"] + [str(d) for d in range(10)]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


PAIRED = [f"{a} {b}" for a in range(10) for b in range(10)]  # a tokenizer that reads two digits at once


def tokenizer(store: Store, words: tuple[str, ...] | list[str] = WORDS, paired: bool = False) -> Path:
    """A word-level tokenizer of `words` with a ChatML template, built with the `tokenizers` library; `paired`:
    one that also has a token for each two digits ("3 1"), read left to right, so that it splits an answer
    otherwise than the world's (its students learn from the world's caches with distill.cross_tokenizer)."""
    def build(d: Path):
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast
        vocab = {t: i for i, t in enumerate(SPECIAL + list(words) + (PAIRED if paired else []))}
        t = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
        t.pre_tokenizer = pre_tokenizers.Sequence([  # two digits one space apart, or a word; whitespace dropped
            pre_tokenizers.Split(Regex(r"\d \d|\S+"), behavior="isolated"),
            pre_tokenizers.Split(Regex(r"^\s+$"), behavior="removed")]) if paired else pre_tokenizers.WhitespaceSplit()
        t.add_special_tokens(SPECIAL)
        tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<|im_end|>",
                                      bos_token="<|im_start|>", unk_token="<pad>")
        tok.chat_template = CHAT_TEMPLATE
        tok.save_pretrained(d)
        return {"vocab_size": len(vocab)}
    folder, _, _ = publish_folder(store, "tokenizer", {"builtin": "tiny-sort", "special": SPECIAL, "words": list(words),
                                                       "template": CHAT_TEMPLATE, "version": 1}
                                  | ({"paired": PAIRED} if paired else {}), build)
    return folder


def dataset(store: Store, world: World, split: str, seed: int = 0) -> Path:
    """The jsonl file of a split: `sft` (prompt, response) or preference pairs (every other split)."""
    c = world.constants

    def build(d: Path):
        rows = world.task.split_rows(seed, c["splits"], split)
        (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"rows": len(rows)}
    folder, _, _ = publish_folder(store, "dataset", {"builtin": f"{world.name}-sort-{split}", "seed": seed,
                                                     "splits": c["splits"], "policy": c["policy"],
                                                     "version": c["version"]}, build)
    return folder / "data.jsonl"


def init_model(store: Store, world: World, role: str, seed: int, paired: bool = False) -> Path:
    """A randomly initialised Llama of the role's shape, with the world's tokenizer (`paired`: its two-digit one)."""
    tok_dir = tokenizer(store, world.words, paired)
    shape = world.constants[role]

    def build(d: Path):
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
        tok = AutoTokenizer.from_pretrained(tok_dir)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=shape["hidden"], intermediate_size=3 * shape["hidden"],
                          num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                          num_key_value_heads=shape["heads"], max_position_embeddings=64, tie_word_embeddings=True,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(len(world.roles) * seed + world.roles.index(role))
        model = LlamaForCausalLM(cfg)
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(d)
        tok.save_pretrained(d)
        return {"parameters": sum(p.numel() for p in model.parameters())}
    folder, _, _ = publish_folder(store, "model", {"builtin": f"{world.name}-{role}-init", "shape": shape,
                                                   "tokenizer": tok_dir.name, "seed": seed}, build)
    return folder


def _sft_tokens(store: Store, world: World, seed: int, paired: bool = False) -> str:
    """The SFT data rendered with the world's chat template, as a `tokenized` artifact (one chosen row each), by
    the world's tokenizer or its two-digit one (`paired`)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer(store, world.words, paired))
    data = dataset(store, world, "sft", seed)
    rows = [json.loads(ln) for ln in data.read_text().splitlines()]
    inputs = {"data": {"builtin": f"{world.name}-sort-sft", "file": data.parent.name},
              "render": {"tokenizer": tokenizer_fingerprint(tok), "template_from": "student",
                         "max_length": world.scoring.max_length}}
    spec = ArtifactSpec("tokenized", inputs, sequences.Codec, {"vocab_size": len(tok), "with_logp": False}, len(rows))
    with ArtifactWriter(store, spec, options=WriteOptions(max_shard_rows=len(rows))) as w:
        if not w.reused:
            for i, r in enumerate(rows):
                msgs = [{"role": "user", "content": r["prompt"]}]
                p = render_prompt(tok, msgs)
                w.add(i, [sequences.Row(r["id"], "chosen", i, p + render_response(tok, msgs, p, r["response"]), len(p))])
            w.publish({})
        return w.key


def run_dir(store: Store, world: World, what: str, seed: int) -> Path:
    """Where a world model's training run (metrics, loss curve) goes: inside its store, so that worlds of
    two stores never share a run folder."""
    return store.root / ".world-runs" / f"{world.name}-world{world.suffix(seed)}-{what}"


def sft(store: Store, world: World, role: str, seed: int, say, paired: bool = False) -> Path:
    """A model of the role's shape after SFT on the world's sft split (`paired`: with the two-digit tokenizer)."""
    d = Distill(loss="sft", token_budget=8192, pack=False, seed=seed, **world.constants["sft"])
    init = resolve(str(init_model(store, world, role, seed, paired)))
    job = Job("sft", init, d, {"student_logp": _sft_tokens(store, world, seed, paired)})
    return train(store, job, run_dir(store, world, f"{role}{'p' if paired else ''}-sft", seed), say)


def reference_logp(store: Store, world: World, sft_dir: Path, seed: int) -> str:
    """Key of the SFT teacher's sequence log-probs of the world's dpo pairs (DPO's reference)."""
    sft_model = resolve(str(sft_dir))
    data = Data(source=str(dataset(store, world, "dpo", seed)), format="strings")  # the teacher's own pairs
    run = stage_one.setup(stage_one.Request({"teacher": sft_model, "reference": sft_model, "student": sft_model},
                                            data, world.scoring), store, say=silent)
    try:
        return stage_one.seq_logp(run, "student", silent).key
    finally:
        run.close()


def plain_dpo_teacher(store: Store, world: World, seed: int, say) -> Path:
    """The DPO teacher at the world's fixed DPO settings, without selection (v3)."""
    sft_dir = build(f"{world.name}-teacher-sft{world.suffix(seed)}", store, say)[0]
    d = Distill(loss="dpo", token_budget=8192, pack=False, seed=seed, **world.constants["dpo"])
    job = Job("dpo", resolve(str(sft_dir)), d, {"student_logp": reference_logp(store, world, sft_dir, seed)})
    return train(store, job, run_dir(store, world, "teacher-dpo", seed), say)


def train(store: Store, job: Job, folder: Path, say) -> Path:
    """A world model's training run; its folder is the world's own (overwritten), the model a store artifact."""
    return trained(store, job, folder, say).model_dir


def trained(store: Store, job: Job, folder: Path, say) -> Trained:
    return Distiller(store, job, Place(folder, overwrite=True, title="tiny-world", say=say or silent)).run()


# Version 3: everything that fixes it; its data and shapes are part of every key built from it.
WORLD = {
    "version": 3, "splits": {"test": 256, "valid": 256, "train": 1024, "dpo": 8192, "sft": 8192},
    "policy": {"min_len": sorting_task.MIN_LEN, "max_len": sorting_task.MAX_LEN, "flaw": sorting_task.FLAW,
               "slip": sorting_task.SLIP},
    "teacher": {"hidden": 128, "layers": 3, "heads": 4}, "student": {"hidden": 64, "layers": 2, "heads": 2},
    "sft": {"sft_lr": 3e-3, "epochs": 4, "batch_pairs": 64, "warmup": 0.05},
    "dpo": {"lr": 5e-5, "epochs": 2, "batch_pairs": 128, "beta": 0.1, "warmup": 0.1},
}
V3 = World("tiny", WORLD, sorting_task, ("teacher", "student"), tuple(WORDS),
           TeacherCache(backend="hf", k=8, max_length=32, max_new_tokens=12, token_budget=8192), plain_dpo_teacher)
WORLDS: dict[str, World] = {"tiny": V3}  # by name; tiny4 registers itself on import


def find(name: str) -> tuple[World, str, int] | None:
    """(world, base name, seed) of a built-in name of any world (`NAME:seedN`), or None."""
    importlib.import_module("adpa.pipeline.worlds.tiny4")  # registers v4
    base, _, seed_text = name.partition(":seed")
    world = next((w for w in WORLDS.values() if base in w.models() or base in w.datasets()), None)
    if world is None:
        return None
    if seed_text and not seed_text.isdigit():
        raise ValueError(f"built-in {name!r}: the world's seed must be a number (NAME:seed1)")
    return world, base, int(seed_text or 0)


def known(name: str) -> bool:
    return find(name) is not None


def build(name: str, store: Store | None = None, say=None) -> tuple[Path, dict]:
    """Folder (or data file) and manifest of a built-in of a world, building it if needed.
    `NAME:seedN` is the same thing in the world of seed N (default 0)."""
    store = store or Store()
    found = find(name)
    if found is None:
        names = [n for w in WORLDS.values() for n in (*w.models(), *w.datasets())]
        raise ValueError(f"unknown built-in {name!r} of the tiny worlds (known: {', '.join(names)})")
    world, base, seed = found
    if base in world.datasets():
        path = dataset(store, world, world.datasets()[base], seed)
    else:
        # Several processes (torchrun ranks, parallel runs) may ask at once: one trains, the others wait
        # and then reuse what it published.
        with store.lock(artifact_key("world", {"model": base, "seed": seed, "world": world.constants},
                                     {"name": "lock", "version": "1"})), one_thread():
            path = _model(store, world, base, seed, say)
    folder = path if path.is_dir() else path.parent
    return path, store.manifest(folder.name)


def _model(store: Store, world: World, base: str, seed: int, say) -> Path:
    what = base.removeprefix(f"{world.name}-")
    if what == "teacher-dpo":
        return world.dpo_teacher(store, world, seed, say)
    if what in world.extras:
        return world.extras[what](store, world, seed, say)
    return sft(store, world, what.removesuffix("-sft"), seed, say)
