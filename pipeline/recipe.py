"""Recipes: YAML files a user copies and edits, plus `--set section.name=value` overrides.

A name means `pipeline/recipes/<name>.yaml`. Each section is a dataclass declared once with its
help text (`models` here, `data` and `teacher_cache` in stage one, `distill` in stage two);
`adpa recipe show NAME` prints a recipe with every setting and its help.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stages.common.settings import SettingError, build, describe, setting
from stages.distill.settings import Distill
from stages.teacher_cache.settings import Data, TeacherCache

RECIPES = Path(__file__).parent / "recipes"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


class RecipeError(ValueError):
    pass


@dataclass
class Models:
    teacher: str = setting(help="pi_dpo, the aligned (DPO) teacher: hub id[@revision], folder or builtin:NAME")
    reference: str = setting(help="pi_ref, the teacher's SFT model (its DPO reference)")
    student: str = setting(help="pi_init, the student before distillation (its SFT model)")


SECTIONS = {"models": Models, "data": Data, "teacher_cache": TeacherCache, "distill": Distill}


@dataclass
class Recipe:
    name: str
    models: Models
    data: Data
    teacher_cache: TeacherCache = field(default_factory=TeacherCache)
    distill: Distill = field(default_factory=Distill)
    description: str = ""
    path: str = ""


def _value(text: str):
    """A command-line value read as YAML reads it (numbers, true/false, null, lists), else the text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str], where: str = "--set") -> dict:
    """`section.name=value` items applied to a raw recipe mapping (checked afterwards like the YAML)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        path, sep, text = item.partition("=")
        section, dot, name = path.partition(".")
        if not sep or not dot or not name:
            raise RecipeError(f"{where} {item!r}: expected SECTION.NAME=VALUE, e.g. distill.lr=1e-5")
        if section not in SECTIONS:
            raise RecipeError(f"{where} {item!r}: no section {section!r} (sections: {', '.join(SECTIONS)})")
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise RecipeError(f"{where} {item!r}: section {section} of the recipe is not a mapping")
        target[name] = _value(text)
    return raw


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
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
    unknown = set(raw) - {"name", "description"} - set(SECTIONS)
    if unknown:
        raise RecipeError(f"{p.name} has unknown sections {sorted(map(str, unknown))}")
    raw = apply_overrides(raw, overrides or [])
    name = raw.get("name", p.stem)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise RecipeError(f"{p.name}: name must be a short word (letters, digits, . _ + -), got {name!r}")
    try:
        sections = {s: build(cls, raw.get(s, {} if s in ("teacher_cache", "distill") else None), f"{p.name}: {s}")
                    for s, cls in SECTIONS.items()}
    except SettingError as e:
        raise RecipeError(str(e)) from None
    return Recipe(name=name, description=str(raw.get("description", "")), path=str(p), **sections)


def show(recipe: Recipe) -> str:
    """The recipe as YAML with every setting, its value and its help."""
    lines = [f"name: {recipe.name}", f"# from {recipe.path}"]
    for s in SECTIONS:
        lines += [""] + describe(getattr(recipe, s), s)
    return "\n".join(lines)
