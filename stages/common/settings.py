"""How a setting is declared: once, as a dataclass field with its help text and its rules.

A recipe section is a dataclass whose fields are made by `setting(...)`. The YAML recipe, the
`--set section.name=value` overrides, the few typed CLI flags (their help comes from here) and
`adpa recipe show` (every setting with its help) all read these declarations; `check` validates a
section against them, so a value from YAML and one from the command line pass the same rules.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable


class SettingError(ValueError):
    """A setting with a value its declaration does not allow; the message names the setting."""


QUOTE_CHARS = 200


def quote(value) -> str:
    """`repr(value)` cut to ~200 characters: an error names a value without printing megabytes of it."""
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else f"{text[:QUOTE_CHARS]}... ({len(text):,} characters)"


def setting(default=dataclasses.MISSING, help: str = "", *, choices: tuple | Callable[[], tuple] | None = None,
            minimum: float | None = None, below: float | None = None, in_key: bool = True):
    """A recipe field. `choices` may be a function (a table declared elsewhere, read when checked);
    `minimum` / `below` bound numbers; `in_key=False` marks settings that change speed or memory
    only, never what is computed, so they stay out of artifact keys."""
    meta = {"help": help, "choices": choices, "minimum": minimum, "below": below, "in_key": in_key}
    return dataclasses.field(default=default, metadata=meta)


def help_of(cls, name: str, with_choices: bool = True) -> str:
    """A setting's help as a sentence for a command-line flag, with its choices when they are a fixed list."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    text = f.metadata.get("help", "")
    choices = f.metadata.get("choices")
    if with_choices and choices and not callable(choices):
        text += f" ({' | '.join(map(str, choices))})"
    return text[:1].upper() + text[1:] + "."


def choices_of(f: dataclasses.Field) -> tuple | None:
    c = f.metadata.get("choices")
    return c() if callable(c) else c


def in_key(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("in_key", True)]


def _types(cls) -> dict:
    return typing.get_type_hints(cls)


def _coerce(value, typ, where: str):
    """`value` as the declared type, or SettingError. Optional types accept None."""
    args = typing.get_args(typ)
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        typ = next(a for a in args if a is not type(None))
    if typ is bool:
        if not isinstance(value, bool):
            raise SettingError(f"{where} must be true or false, got {quote(value)}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingError(f"{where} must be an integer, got {quote(value)}")
        return value
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-7 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingError(f"{where} must be a number, got {quote(value)}")
        if not math.isfinite(value):  # NaN passes every bound check (NaN < x is False); inf is no setting
            raise SettingError(f"{where} must be a finite number, got {quote(value)}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise SettingError(f"{where} must be a string, got {quote(value)}")
        return value
    if typing.get_origin(typ) is tuple:  # a list of strings; one string is a list of one
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise SettingError(f"{where} must be a list of strings, got {quote(value)}")
        return tuple(items)
    if dataclasses.is_dataclass(typ):  # a nested section, e.g. distill.lora
        if isinstance(value, typ):
            check(value, where)
            return value
        return build(typ, value, where)
    raise TypeError(f"{where}: settings of type {typ} are not supported")


def check(section, name: str) -> None:
    """Validate (and normalise, e.g. '5e-7' -> 5e-7) every field of a section in place."""
    hints = _types(type(section))
    for f in dataclasses.fields(section):
        where = f"{name}.{f.name}"
        v = _coerce(getattr(section, f.name), hints[f.name], where)
        choices = choices_of(f)
        for item in (v if isinstance(v, tuple) else (v,)):
            if item is not None and choices is not None and item not in choices:
                raise SettingError(f"{where} is {quote(item)}; expected one of {', '.join(map(str, choices))}")
        lo, hi = f.metadata.get("minimum"), f.metadata.get("below")
        if v is not None and lo is not None and v < lo:
            raise SettingError(f"{where} must be >= {lo}, got {quote(v)}")
        if v is not None and hi is not None and v >= hi:
            raise SettingError(f"{where} must be below {hi}, got {quote(v)}")
        setattr(section, f.name, v)


def build(cls, raw, name: str):
    """A checked section from a YAML mapping; unknown keys are refused, naming the known ones."""
    if not isinstance(raw, dict):
        raise SettingError(f"{name} must be a mapping, got {type(raw).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(map(str, raw)) - set(known))
    if unknown:
        raise SettingError(f"{name} has unknown keys {unknown} (known: {', '.join(known)})")
    missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and f.name not in raw]
    if missing:
        raise SettingError(f"{name} needs {', '.join(missing)}")
    section = cls(**raw)
    check(section, name)
    return section


def plain(value):
    """A setting's value as JSON and YAML hold it: nested sections as mappings, lists of strings as lists."""
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return list(value) if isinstance(value, tuple) else value


def describe(section, name: str, indent: str = "") -> list[str]:
    """YAML lines for a section: each setting, its value and its help as a comment."""
    import yaml

    lines = [f"{indent}{name}:"]
    for f in dataclasses.fields(section):
        v = getattr(section, f.name)
        extra = f" ({' | '.join(map(str, choices_of(f)))})" if choices_of(f) else ""
        help = f"  # {f.metadata.get('help', '')}{extra}"
        if dataclasses.is_dataclass(v):
            lines += [f"{indent}  {f.name}:".ljust(40) + help] + describe(v, f.name, indent + "  ")[1:]
            continue
        value = yaml.safe_dump(plain(v), default_flow_style=True).strip().removesuffix("\n...")
        lines.append(f"{indent}  {f.name}: {value}".ljust(40) + help)
    return lines
