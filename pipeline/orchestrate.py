"""The pipeline's flow for one recipe: built-ins resolved -> stage one -> store -> stage two -> evaluation.

Stages never call each other; this module does, passing keys and folders along:
* stage one gets resolved models, the data file and its settings;
* stage two gets the keys stage one computes for the same recipe (or keys the user names), and a
  chained loss (ADPA+) runs its steps here: the first student, stage one's states from it, the second;
* evaluation gets the models, the held-out split and the recipe's reward.
"""

from __future__ import annotations

import os
from pathlib import Path

from adpa.artifacts import Store
from adpa.pipeline import builtin
from adpa.pipeline.recipe import Recipe
from adpa.stages.common.models import load_tokenizer, resolve
from adpa.stages.common.ranks import Ranks
from adpa.stages.common.settings import quote
from adpa.stages.common.tokenizers import tokenizer_fingerprint
from adpa.stages.distill.cross_tokenizer import Conversations
from adpa.stages.distill.losses import LOSSES, caches_of
from adpa.stages.distill.distiller import Distiller, Job, Place, Trained
from adpa.stages.evaluate.run import Validator, run_eval
from adpa.stages.teacher_cache import ray_engine
from adpa.stages.teacher_cache.estimate import Estimate
from adpa.stages.teacher_cache.estimate import estimate as stage_one_estimate
from adpa.stages.teacher_cache.pairs import check_source
from adpa.stages.teacher_cache.run import Request, Result, plan, prompts_by_row, run_states, run_teacher_cache


def built_models(recipe: Recipe, store: Store, say=None) -> dict:
    """The recipe's models resolved, its reward model included; built-in ones are built when absent (`say`:
    their training runs' lines)."""
    out = builtin.resolve_models(recipe.models, store, say)
    if recipe.models.reward_model:
        out["reward_model"] = builtin.resolve_model(recipe.models.reward_model, store, say)
    return out


def check_data(recipe: Recipe) -> None:
    """Refuse a data file that is not there before any model is built or loaded (a hub id or a built-in
    name is read later)."""
    d = recipe.data
    for source in (d.source, d.eval_source, d.valid_source):
        if source and not source.startswith(builtin.PREFIX):
            check_source(source)


def teacher_cache(recipe: Recipe, store: Store, strict: bool = False, say=print,
                  ranks: Ranks | None = None) -> list[Result]:
    check_data(recipe)
    return _stage_one(builtin.resolve_models(recipe.models, store), recipe, store, say, ranks, strict=strict)


def estimate(recipe: Recipe, store: Store, probe_rows: int, say=print) -> Estimate:
    """What `teacher_cache` would do (rows, tokens, artifacts reused or built) and its cost from a probe."""
    check_data(recipe)
    req = Request(builtin.resolve_models(recipe.models, store), builtin.resolve_data(recipe.data, store),
                  recipe.teacher_cache)
    return stage_one_estimate(req, store, probe_rows, say)


def _stage_one(models, recipe: Recipe, store: Store, say, ranks: Ranks | None, strict: bool = False,
               states_only: bool = False) -> list[Result]:
    """Stage one on the recipe's engine: every artifact, or only the ADPA states and their advantages."""
    req = Request(models, builtin.resolve_data(recipe.data, store), recipe.teacher_cache)
    if _engine(req.settings, ranks) == "ray":
        return ray_engine.run_teacher_cache(req, store, strict, say, states_only=states_only)
    if states_only:
        return run_states(req, store, say, ranks)
    return run_teacher_cache(req, store, strict, say, ranks)


def _engine(tc, ranks: Ranks | None) -> str:
    """teacher_cache.engine, checked against how the process was launched."""
    world = ranks.world_size if ranks else 1
    if tc.engine == "torchrun" and world == 1 and "WORLD_SIZE" not in os.environ:
        raise ValueError("teacher_cache.engine is torchrun: launch with torchrun --nproc-per-node N "
                         "(or set teacher_cache.engine=local)")
    if tc.engine == "ray" and world > 1:
        raise ValueError(f"teacher_cache.engine is ray, but this process is rank {ranks.rank} of {world}: "
                         f"start one driver (Ray runs the workers)")
    return tc.engine


def distill(recipe: Recipe, store: Store, loss: str | None = None, output: Path | None = None, resume: bool = False,
            caches: dict[str, str] | None = None, say=print, ranks: Ranks | None = None,
            overwrite: bool = False) -> list[Trained]:
    """Train the recipe's student with `loss` (default: the recipe's). A chained loss trains its steps in
    turn; each run folder is runs/RECIPE-LOSS-KEY8 (the first 8 hex digits of its student's key: other data
    or settings, another folder) unless `output` names the last one, a chain's first step beside it
    (`overwrite`: even one that is not an earlier run of the same key)."""
    check_data(recipe)
    ranks = ranks or Ranks()
    say = ranks.speaker(say)
    loss = loss or recipe.distill.loss
    models = builtin.resolve_models(recipe.models, store)  # once: a folder's weights are hashed on each resolve
    keys = dict(caches or {})
    if not all(name in keys for name in caches_of(loss)):
        keys = planned(recipe, store, models) | keys
        _stage_one_ran(recipe, store, loss, {n: k for n, k in keys.items() if n not in (caches or {})})

    def train(step_loss: str, settings: str, init, step_caches: dict, run_dir: Path | None, label: str = "") -> Trained:
        """`settings`: the loss whose `per_loss` entry the step trains with."""
        d = recipe.distill_for(settings)
        job = Job(step_loss, init, d, step_caches, label, validator(recipe, d, store, models),
                  conversations(recipe, store, models, step_caches) if d.cross_tokenizer else None)
        place = Place(run_dir, resume, overwrite, recipe.name, recipe.command("distill", "--loss", loss), ranks, say)
        return Distiller(store, job, place).run()

    spec = LOSSES[loss]
    if spec.then and recipe.distill_for(loss).cross_tokenizer:
        raise ValueError(f"{loss} trains on states its first student generates in stage one, whose models share "
                         f"one vocabulary: with distill.cross_tokenizer train {spec.then[0]}, then {spec.then[1]} "
                         f"on stage one's states")
    final = Path(output) if output else None
    if spec.then is None:
        return [train(loss, loss, models["student"], keys, final)]
    first_loss, then_loss = spec.then
    # a chain's first step is the plain first_loss student (its own per_loss entry, so its key: reused when
    # trained), the chain's entry is for its last step; the folder is beside the chain's
    first = train(first_loss, first_loss, models["student"], keys,
                  final and final.with_name(f"{final.name}-{first_loss}"))
    say(f"{loss}: states for {then_loss} from the {first_loss} student {first.key}")
    models = models | {"student": resolve(str(first.model_dir))}
    states = _stage_one(models, recipe, store, say, ranks, states_only=True)
    second = train(then_loss, loss, models["student"], keys | {"advantage": states[-1].key}, final, label=loss)
    return [first, second]


def _stage_one_ran(recipe: Recipe, store: Store, loss: str, keys: dict[str, str]) -> None:
    """Refuse, naming the data, when stage one has not made an artifact the loss reads from the recipe's
    data (a chain: those of its first step; the second's come from its first student)."""
    spec = LOSSES[loss]
    needed = caches_of(spec.then[0] if spec.then else loss)
    missing = [n for n in needed if n in keys and store.manifest(keys[n]) is None]
    if missing:
        d = recipe.data
        data = f"data {quote(d.source)}" + (f" (first {d.limit} rows)" if d.limit else "")
        raise ValueError(f"stage one has not run on {data} for recipe {recipe.name}: no {missing[0]} artifact "
                         f"{keys[missing[0]]} in store {store}; run: {recipe.command('teacher-cache')}")


def planned(recipe: Recipe, store: Store, models: dict | None = None) -> dict[str, str]:
    """The keys of the recipe's stage-one artifacts by name (teacher_topk, ..., advantage), planned without
    rendering a row (`models`: the recipe's, when already resolved; built-in ones are built when absent)."""
    models = models or builtin.resolve_models(recipe.models, store)
    return plan(Request(models, builtin.resolve_data(recipe.data, store), recipe.teacher_cache))


def conversations(recipe: Recipe, store: Store, models: dict, caches: dict[str, str]) -> Conversations | None:
    """For a student of another tokenizer whose chat template is not the one its caches were rendered with:
    each input row's prompt messages, parsed from the recipe's data as stage one parsed them (the data must be
    the caches'); None when the templates agree, or when no cache is there yet (stage two names it)."""
    made = next((m["inputs"] for k in caches.values() if (m := store.manifest(k)) and "render" in m["inputs"]), None)
    student = load_tokenizer(models["student"])
    if made is None or tokenizer_fingerprint(student)["chat_template_sha256"] == \
            made["render"]["tokenizer"]["chat_template_sha256"]:
        return None
    data = builtin.resolve_data(recipe.data, store)
    prompts, data_key = prompts_by_row(data)
    if data_key != made["data"]:
        ours, theirs = data_key, made["data"]
        differ = ", ".join(f"{k} {quote(str(ours.get(k))[:16])} vs the caches' {quote(str(theirs.get(k))[:16])}"
                           for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k))
        raise ValueError(f"the caches were rendered with another chat template than the student's; re-rendering "
                         f"reads their messages from the recipe's data, which is not theirs ({data.source}: {differ})")
    return Conversations(prompts)


def validator(recipe: Recipe, d, store: Store, models: dict | None = None) -> Validator | None:
    """Checkpoint selection's measure on the recipe's validation pairs, when `d` (the distill settings of
    one loss) asks for one with eval_every (`models`: the recipe's, when already resolved)."""
    if not d.eval_every:
        return None
    if not recipe.data.valid_source:
        raise ValueError("distill.eval_every > 0 needs validation pairs: set data.valid_source")
    if d.select_by == "reward" and not recipe.data.reward:
        raise ValueError("distill.select_by reward needs a ground-truth reward: set data.reward")
    if d.select_by == "rm" and not recipe.models.reward_model:
        raise ValueError("distill.select_by rm needs a reward model: set models.reward_model")
    valid = builtin.validation(recipe.data, store)
    rm = builtin.resolve_model(recipe.models.reward_model, store) if recipe.models.reward_model else None
    return Validator(models or builtin.resolve_models(recipe.models, store), valid, recipe.teacher_cache,
                     builtin.reward(recipe.data.reward), rm)


def evaluate(recipe: Recipe, store: Store, students: dict[str, str], out_dir: Path, say=print):
    """The recipe's teachers and student init plus `students` (name -> folder) on its held-out pairs."""
    check_data(recipe)
    models = builtin.resolve_models(recipe.models, store)
    rm = builtin.resolve_model(recipe.models.reward_model, store) if recipe.models.reward_model else None
    return run_eval(Request(models, builtin.heldout(recipe.data, store), recipe.teacher_cache), students, out_dir,
                    builtin.reward(recipe.data.reward), say, rm)


def eval_rows(recipe: Recipe) -> str:
    """What `evaluate` scores: "held-out" rows (eval_source, or those data.holdout keeps out of both stages),
    or "training" rows (no eval_source and holdout 0)."""
    return "held-out" if recipe.data.eval_source or builtin.holds_out(recipe.data) else "training"
