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


@dataclass
class Recipe:
    name: str
    models: Models
    data: Data
    teacher_cache: TeacherCache = field(default_factory=TeacherCache)
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
               teacher_cache=_section(TeacherCache, raw.get("teacher_cache", {}), f"{p.name}: teacher_cache"))
    r.teacher_cache.check()
    return r
