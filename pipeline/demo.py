"""`adpa demo` / `make demo`: the whole method end to end on the built-in world, one table at the end.

Builds or reuses the world (tokenizer, data, the SFT and DPO teachers, the SFT student), runs
stage one, trains one student per method from the SFT student (each reused when already in the
store), evaluates them all with the teachers as reference rows, and says where everything is.
"""

from __future__ import annotations

import time
from pathlib import Path

from adpa.pipeline import orchestrate
from adpa.pipeline.recipe import load_recipe
from adpa.stages.common.kernels import one_thread
from adpa.stages.common.ranks import silent
from adpa.stages.common.run_folder import claim
from adpa.stages.distill.losses import LOSSES
from adpa.stages.evaluate.report import table
from adpa.stages.evaluate.run import OUTPUTS as EVAL_OUTPUTS
from adpa.stages.teacher_cache.run import summary_table

DEMO_OUTPUTS = ("students", *EVAL_OUTPUTS)


def default_methods() -> tuple[str, ...]:
    """Every declared loss (sft trains on the chosen responses of the pairs)."""
    return tuple(LOSSES)


def run_demo(store, recipe="tiny4", out_dir: Path = Path("runs/demo"), methods=None, say=print,
             overwrite: bool = False) -> dict:
    """`recipe`: a name, a path or a Recipe; `methods`: the losses to train (default: all); `overwrite`: write
    into an `out_dir` that is not an earlier demo's. Torch runs on one thread: with the kernels pinned
    (`adpa demo` starts so), the table is the same on every CPU of one `kernels.cpu_class`."""
    claim(out_dir, "demo", DEMO_OUTPUTS, overwrite)  # first: a folder of the user's is refused before any work
    with one_thread():
        return _demo(store, recipe, Path(out_dir), methods, say)


def _world_lines(say):
    """The built-in world's training runs as a few lines each: what is trained, and its progress per tenth."""
    def world_say(line: str) -> None:
        if line.startswith(("student (", "distill (", "reward model:")):
            say("  " + line)
    return world_say


def _demo(store, recipe, out_dir: Path, methods, say) -> dict:
    methods = default_methods() if methods is None else methods
    t0 = time.perf_counter()
    recipe = load_recipe(recipe) if isinstance(recipe, str) else recipe
    say(f"[1/3] stage one: the world's models and the teacher cache ({recipe.name}, store {store})")
    orchestrate.check_data(recipe)  # a file that is not there: refused before a model is built
    orchestrate.built_models(recipe, store, say=_world_lines(say))  # built-in ones trained the first time: shown
    say(summary_table(orchestrate.teacher_cache(recipe, store, say=silent)))
    say("[2/3] stage two: one student per method, from the SFT student")
    students = {}
    for loss in methods:
        t = time.perf_counter()
        runs = orchestrate.distill(recipe, store, loss, Path(out_dir) / "students" / loss, say=silent,
                                   overwrite=True)  # inside the demo's folder: a student of another world replaced
        students[loss] = str(runs[-1].model_dir)
        say(f"  {loss:6} {runs[-1].status:8} {time.perf_counter() - t:6.1f} s  {runs[-1].key}")
    say(f"[3/3] evaluation on {orchestrate.eval_rows(recipe)} prompts")
    results = orchestrate.evaluate(recipe, store, students, Path(out_dir), say=silent)
    n = len(next(iter(results)).r_seq)
    say("\n" + table(results, n, orchestrate.eval_rows(recipe)))
    world = {r.name: r.weights_sha256 for r in results if r.name.startswith(("teacher-", "student-sft"))}
    say("the world's models, sha256 of their weights (equal hashes: the same world; docs/RESULTS.md): "
        + ", ".join(f"{k} {(v or '?')[:12]}" for k, v in world.items()))
    secs = time.perf_counter() - t0
    say(f"\nreport: {out_dir}/eval.json, chart: {out_dir}/eval.png, generations: {out_dir}/generations/, "
        f"students: {out_dir}/students/*/model (store keys above); {secs:.0f} s in all")
    return {"results": results, "students": students, "seconds": secs}
