"""Recipes: YAML files a user copies and edits, plus `--set section.name=value` overrides.

A name means `pipeline/recipes/<name>.yaml`. Each section is a dataclass declared once with its
help text (`models` here, `data` and `teacher_cache` in stage one, `distill` in stage two);
`adpa recipe show NAME` prints a recipe with every setting and its help.

A nested section is set by its dotted path (`--set distill.lora.r=16`).

A relative data path in a recipe file (`data.source`, `eval_source`, `valid_source`) names the file
beside the recipe when one is there; on the command line it is relative to the working directory.

`per_loss:` holds `distill` settings for one loss (`per_loss: {adpa: {advantage: clip01}}`): a recipe's
tuned choice per method (a nested section given there replaces the section's whole). A chained loss's
entry (adpa+) is for its last step; its first step is that loss's plain student (its own entry). On the
command line `--set per_loss.adpa.gamma=0.3` sets one of them, and `--set distill.NAME=VALUE` sets NAME
for every loss (it replaces the per-loss values of NAME).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from adpa.pipeline import safe_yaml
from adpa.stages.common.settings import SettingError, build, check, describe, plain, quote, setting
from adpa.stages.distill.settings import Distill
from adpa.stages.teacher_cache.settings import Data, TeacherCache

RECIPES = Path(__file__).parent / "recipes"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


class RecipeError(ValueError):
    pass


@dataclass
class Models:
    teacher: str = setting(help="pi_dpo, the aligned (DPO) teacher: hub id[@revision], folder or builtin:NAME")
    reference: str = setting(help="pi_ref, the teacher's SFT model (its DPO reference)")
    student: str = setting(help="pi_init, the student before distillation (its SFT model)")
    reward_model: str | None = setting(None, "a reward model (a sequence classifier with one output: hub id[@revision] "
                                       "or folder) that scores validation answers for distill.select_by rm")


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
    per_loss: dict[str, dict] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()  # the --set items it was loaded with

    def command(self, verb: str, *args: str) -> str:
        """The `adpa` command line that makes this recipe again (its file or name, then its --set items)."""
        import shlex
        where = self.name if self.path and Path(self.path).parent == RECIPES else self.path or self.name
        return shlex.join(["adpa", verb, "-r", where, *args, *(x for o in self.overrides for x in ("--set", o))])

    def distill_for(self, loss: str) -> Distill:
        """The `distill` settings loss `loss` trains with: the section, then its `per_loss` entry."""
        d = dataclasses.replace(self.distill, loss=loss, **self.per_loss.get(loss, {}))
        check(d, f"{self.name}: per_loss.{loss}")
        return d


MAX_RECIPE_BYTES = 1 << 20


def _value(text: str, where: str):
    """A command-line value read as YAML reads it (numbers, true/false, null, lists), else the text."""
    try:
        return safe_yaml.read(text)
    except safe_yaml.YamlBoundError as e:
        raise RecipeError(f"{where}: {e}") from None
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str], where: str = "--set") -> dict:
    """`section.name=value` items applied to a raw recipe mapping (checked afterwards like the YAML)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        path, sep, text = item.partition("=")
        section, dot, name = path.partition(".")
        if not sep or not dot or not name:
            raise RecipeError(f"{where} {quote(item)}: expected SECTION.NAME=VALUE, e.g. distill.lr=1e-5")
        if section not in SECTIONS and section != "per_loss":
            raise RecipeError(f"{where} {quote(item)}: no section {quote(section)} (sections: {', '.join(SECTIONS)}, per_loss)")
        target = raw.setdefault(section, {})
        if section == "per_loss":
            loss, dot, name = name.partition(".")
            if not dot or not name:
                raise RecipeError(f"{where} {quote(item)}: expected per_loss.LOSS.NAME=VALUE, e.g. per_loss.adpa.gamma=0.3")
            target = target.setdefault(loss, {}) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            raise RecipeError(f"{where} {quote(item)}: section {section} of the recipe is not a mapping")
        *inner, last = name.split(".")  # distill.lora.r: a setting of a nested section
        for part in inner:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[last] = _value(text, f"{where} {quote(path)}")
        if section == "distill":  # one value for every loss: the per-loss ones of this setting give way
            for entry in (raw.get("per_loss") or {}).values():
                for part in inner:
                    entry = entry.get(part) if isinstance(entry, dict) else None
                if isinstance(entry, dict):
                    entry.pop(last, None)
    return raw


def _per_loss(raw, distill: Distill, where: str) -> dict[str, dict]:
    """`per_loss:` checked: known losses, known distill settings, each loss's settings valid together."""
    if raw is None:
        return {}
    from adpa.stages.distill.losses import LOSSES  # torch: only for a recipe that has per-loss settings
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: per_loss must be a mapping of loss -> distill settings, got {type(raw).__name__}")
    known = [f.name for f in dataclasses.fields(Distill) if f.name != "loss"]
    out = {}
    for loss, entry in raw.items():
        if loss not in LOSSES:
            raise RecipeError(f"{where}: per_loss.{loss}: no loss {quote(loss)} (losses: {', '.join(LOSSES)})")
        if not isinstance(entry, dict):
            raise RecipeError(f"{where}: per_loss.{loss} must be a mapping of distill settings, got {quote(entry)}")
        unknown = sorted(set(map(str, entry)) - set(known))
        if unknown:
            raise RecipeError(f"{where}: per_loss.{loss} has unknown keys {unknown} (known: {', '.join(known)})")
        try:
            d = dataclasses.replace(distill, **entry)
            check(d, f"{where}: per_loss.{loss}")
        except SettingError as e:
            raise RecipeError(str(e)) from None
        out[loss] = {k: getattr(d, k) for k in entry}  # normalised, e.g. '5e-7' -> 5e-7
    return out


DATA_PATHS = ("source", "eval_source", "valid_source")


def _beside(raw: dict, folder: Path) -> dict:
    """A data file the recipe names by a relative path is the one beside the recipe file, when there is one
    there (so a copied recipe and its data travel together); a hub id or a path from `--set` is kept as given."""
    data = raw.get("data")
    if not isinstance(data, dict):
        return raw
    for name in DATA_PATHS:
        value = data.get(name)
        if isinstance(value, str) and value and not Path(value).is_absolute() and (folder / value).is_file():
            data[name] = str((folder / value).resolve())
    return raw


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):  # a name (names may hold dots: danube2-1.8b)
        p = RECIPES / f"{name_or_path}.yaml"
    if not p.is_file():
        known = ", ".join(sorted(q.stem for q in RECIPES.glob("*.yaml")))
        raise RecipeError(f"no recipe {quote(name_or_path)} (built-in: {known}; or a path to a .yaml file)")
    if p.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{p}: {p.stat().st_size:,} bytes; a recipe is at most {MAX_RECIPE_BYTES:,}")
    try:
        raw = safe_yaml.read(p.read_text())
    except safe_yaml.YamlBoundError as e:
        raise RecipeError(f"{p}: {e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RecipeError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{p}: a recipe is a mapping")
    unknown = set(raw) - {"name", "description", "per_loss"} - set(SECTIONS)
    if unknown:
        raise RecipeError(f"{p.name} has unknown sections {sorted(map(str, unknown))}")
    raw = apply_overrides(_beside(raw, p.parent), overrides or [])
    name = raw.get("name", p.stem)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise RecipeError(f"{p.name}: name must be a short word (letters, digits, . _ + -), got {quote(name)}")
    try:
        sections = {s: build(cls, raw.get(s, {} if s in ("teacher_cache", "distill") else None), f"{p.name}: {s}")
                    for s, cls in SECTIONS.items()}
    except SettingError as e:
        raise RecipeError(str(e)) from None
    per_loss = _per_loss(raw.get("per_loss"), sections["distill"], p.name)
    return Recipe(name=name, description=str(raw.get("description", "")), path=str(p), per_loss=per_loss,
                  overrides=tuple(overrides or ()), **sections)


def show(recipe: Recipe) -> str:
    """The recipe as YAML with every setting, its value and its help."""
    lines = [f"name: {recipe.name}", f"# from {recipe.path}"]
    for s in SECTIONS:
        lines += [""] + describe(getattr(recipe, s), s)
    lines += ["", "per_loss:" + ("" if recipe.per_loss else " {}") + "  # distill settings of one loss, over the above"]
    lines += [f"  {loss}: {yaml.safe_dump({k: plain(v) for k, v in entry.items()}, default_flow_style=True).strip()}"
              for loss, entry in recipe.per_loss.items()]
    return "\n".join(lines)
