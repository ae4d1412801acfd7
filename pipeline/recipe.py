"""Recipes: YAML files a user copies and edits. A name means `pipeline/recipes/<name>.yaml`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

RECIPES = Path(__file__).parent / "recipes"


class RecipeError(ValueError):
    pass


@dataclass
class Models:
    teacher: str
    reference: str
    student: str


@dataclass
class Data:
    source: str
    split: str = "train"
    format: str = "auto"
    limit: int | None = None
    eval_source: str | None = None  # held-out pairs for `adpa eval` (default: source)
    eval_split: str = "test"
    reward: str | None = None  # a built-in ground-truth reward for `adpa eval`: sorting


@dataclass
class TeacherCache:
    backend: str = "auto"
    k: int = 50
    max_length: int = 1024
    chat_template: str = "student"
    states: str = "student"
    advantage_reference: str = "reference"
    max_new_tokens: int = 256
    dtype: str = "auto"
    token_budget: int = 8192
    shard_rows: int = 1024  # rows per shard: the unit a killed run resumes from

    def check(self):
        allowed = {"backend": ("auto", "hf", "vllm"), "chat_template": ("student", "teacher"),
                   "states": ("student", "teacher", "chosen", "rejected"),
                   "advantage_reference": ("reference", "student"),
                   "dtype": ("auto", "float32", "bfloat16", "float16")}
        for name, values in allowed.items():
            if getattr(self, name) not in values:
                raise RecipeError(f"teacher_cache.{name} is {getattr(self, name)!r}; expected one of {', '.join(values)}")
        for name in ("k", "max_length", "max_new_tokens", "token_budget", "shard_rows"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise RecipeError(f"teacher_cache.{name} must be a positive integer, got {getattr(self, name)!r}")


LOSSES = ("sft", "kd", "dckd", "adpa", "adpa+", "dpo")


@dataclass
class Distill:
    """Stage two. Defaults are the paper's (DCKD/ADPA: lr 5e-7, 1 epoch, cosine with 10% warm-up,
    effective batch 128, AdamW); an `sft` run uses `sft_lr` (the paper's SFT stages: 2e-5)."""

    loss: str = "dckd"
    lr: float = 5e-7
    sft_lr: float = 2e-5
    epochs: int = 1
    batch_pairs: int = 128  # effective (global) batch in preference pairs, over all ranks and micro-batches
    token_budget: int = 8192  # padded tokens per micro-batch (per rank)
    warmup: float = 0.1  # fraction of the optimizer steps
    schedule: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    alpha: float = 0.1  # DCKD: weight of each KL term
    gamma: float = 1.5  # ADPA: weight of the expected advantage
    advantage: str = "signed"  # signed (the paper) | clip01 (the released code) | flipped (a diagnostic: -A)
    beta: float = 0.1  # DPO on the student
    seed: int = 0
    shuffle_buffer: int = 1024  # pairs held for the seeded streaming shuffle
    save_every: int = 0  # optimizer steps between checkpoints; 0: only the last
    gradient_checkpointing: bool = False
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, float32 on CPU

    def check(self):
        allowed = {"loss": LOSSES, "schedule": ("cosine", "linear", "constant"),
                   "advantage": ("signed", "clip01", "flipped"), "dtype": ("auto", "float32", "bfloat16")}
        for name, values in allowed.items():
            if getattr(self, name) not in values:
                raise RecipeError(f"distill.{name} is {getattr(self, name)!r}; expected one of {', '.join(values)}")
        for name in ("epochs", "batch_pairs", "token_budget", "shuffle_buffer"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise RecipeError(f"distill.{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("lr", "sft_lr", "weight_decay", "max_grad_norm", "alpha", "gamma", "beta", "warmup"):
            v = getattr(self, name)
            if isinstance(v, str):  # YAML 1.1 reads 5e-7 (no dot) as a string
                try:
                    v = float(v)
                    setattr(self, name, v)
                except ValueError:
                    pass
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise RecipeError(f"distill.{name} must be a number >= 0, got {v!r}")
        if self.warmup >= 1:
            raise RecipeError(f"distill.warmup is a fraction of the steps, below 1; got {self.warmup}")
        if not isinstance(self.save_every, int) or self.save_every < 0:
            raise RecipeError(f"distill.save_every must be an integer >= 0, got {self.save_every!r}")


@dataclass
class Recipe:
    name: str
    models: Models
    data: Data
    teacher_cache: TeacherCache = field(default_factory=TeacherCache)
    distill: Distill = field(default_factory=Distill)
    description: str = ""
    path: str = ""


def _section(cls, raw, where: str):
    if not isinstance(raw, dict):
        raise RecipeError(f"{where} must be a mapping")
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise RecipeError(f"{where} has unknown keys {sorted(unknown)} (known: {sorted(known)})")
    try:
        return cls(**raw)
    except TypeError as e:
        raise RecipeError(f"{where}: {e}") from None


def load_recipe(name_or_path: str) -> Recipe:
    p = Path(name_or_path)
    if not p.suffix:
        p = RECIPES / f"{name_or_path}.yaml"
    if not p.is_file():
        known = ", ".join(sorted(q.stem for q in RECIPES.glob("*.yaml")))
        raise RecipeError(f"no recipe {name_or_path!r} (built-in: {known}; or a path to a .yaml file)")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{p}: a recipe is a mapping")
    r = Recipe(name=str(raw.get("name", p.stem)), description=str(raw.get("description", "")), path=str(p),
               models=_section(Models, raw.get("models"), f"{p.name}: models"),
               data=_section(Data, raw.get("data"), f"{p.name}: data"),
               teacher_cache=_section(TeacherCache, raw.get("teacher_cache", {}), f"{p.name}: teacher_cache"),
               distill=_section(Distill, raw.get("distill", {}), f"{p.name}: distill"))
    unknown = set(raw) - {"name", "description", "models", "data", "teacher_cache", "distill"}
    if unknown:
        raise RecipeError(f"{p.name} has unknown sections {sorted(unknown)}")
    r.teacher_cache.check()
    r.distill.check()
    return r
