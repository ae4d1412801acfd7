"""`builtin:NAME` in a recipe: the models and data of the built-in worlds (`pipeline/worlds/`).

They are resolved here, before any stage runs: a `builtin:` spec becomes a folder or file in the
store (built once under the store's lock), with an identity naming its artifact. Stages only ever
see hub ids, folders and files.
"""

from __future__ import annotations

import dataclasses

from adpa.artifacts import Store
from adpa.pipeline.worlds import smollm2, sorting_task, tiny, tiny_pairs
from adpa.stages.common.models import ResolvedModel, resolve
from adpa.stages.teacher_cache.settings import Data

PREFIX = "builtin:"
REWARDS = {"sorting": sorting_task.reward}  # ground-truth rewards a recipe can name (data.reward)


def resolve_model(spec: str, store: Store, say=None) -> ResolvedModel:
    if not spec.startswith(PREFIX):
        return resolve(spec)
    name = spec.removeprefix(PREFIX)
    path, manifest = tiny.build(name, store, say) if tiny.known(name) else smollm2.build(name, store)
    return ResolvedModel(spec, str(path), None, {"builtin": spec, "artifact": manifest["key"]})


def resolve_models(models, store: Store, say=None) -> dict[str, ResolvedModel]:
    """teacher, reference, student of a recipe's `models` section."""
    return {role: resolve_model(getattr(models, role), store, say) for role in ("teacher", "reference", "student")}


def resolve_source(source: str, store: Store) -> str:
    if not source.startswith(PREFIX):
        return source
    name = source.removeprefix(PREFIX)
    if name == "tiny-pairs":
        return str(tiny_pairs.build(store))
    if tiny.known(name):
        return str(tiny.build(name, store)[0])
    known = [PREFIX + n for w in tiny.WORLDS.values() for n in w.datasets()]
    raise ValueError(f"unknown built-in dataset {source!r} (known: builtin:tiny-pairs, {', '.join(known)})")


def holds_out(data: Data) -> bool:
    """Whether rows of the source are held out of both stages for evaluation (no eval_source, holdout > 0)."""
    return not data.eval_source and data.holdout > 0


def resolve_data(data: Data, store: Store) -> Data:
    """The data section stage one reads, its built-in source replaced by its file (only that split is built),
    without the rows held out for evaluation."""
    return dataclasses.replace(data, source=resolve_source(data.source, store),
                               take="kept" if holds_out(data) else "all")


def _split(data: Data, source: str, split: str, store: Store) -> Data:
    return dataclasses.replace(data, source=resolve_source(source, store), split=split, limit=None,
                               revision=data.revision if source == data.source else None)


def heldout(data: Data, store: Store) -> Data:
    """The held-out split as a data section of its own: eval_source (never limited); else the rows of the
    training split (of its first `limit`) that `holdout` keeps out of both stages; else, with holdout 0,
    the training rows themselves (take "training": evaluation says so)."""
    if data.eval_source:
        return _split(data, data.eval_source, data.eval_split, store)
    return dataclasses.replace(data, source=resolve_source(data.source, store),
                               take="held_out" if holds_out(data) else "training")


def validation(data: Data, store: Store) -> Data:
    """The validation split as a data section of its own (never limited)."""
    return _split(data, data.valid_source, data.valid_split, store)


def reward(name: str | None):
    """(name, function) of a built-in ground-truth reward, or None."""
    if name is None:
        return None
    if name not in REWARDS:
        raise ValueError(f"data.reward {name!r} is not a built-in reward (known: {', '.join(REWARDS)})")
    return name, REWARDS[name]
