"""The `adpa` command line: the two stages, evaluation, the demo, and the artifact store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from adpa.pipeline import cache_cli
from adpa.pipeline.options import StoreOpt, fail, one_line, setting_option, with_choices
from adpa.stages.common.settings import help_of
from adpa.stages.distill.settings import Distill
from adpa.stages.teacher_cache.settings import Data, TeacherCache

app = typer.Typer(help="ADPA / DCKD distillation: cache teacher signals once, train students on them many times.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(cache_cli.app, name="cache")


RecipeOpt = typer.Option("tiny", "--recipe", "-r", help="Recipe name (pipeline/recipes/NAME.yaml) or YAML path.")
SetOpt = typer.Option(None, "--set", metavar="SECTION.NAME=VALUE",
                      help="Override any recipe setting, typed and checked like the YAML (distill.lr=1e-5, "
                      "teacher_cache.k=20, data.limit=100); repeatable. `adpa recipe show` lists them all.")


DataOpt = typer.Option(None, "--data", help=help_of(Data, "source"))
FormatOpt = setting_option(Data, "format", " Default: the recipe's data.format.", "--format")
LimitOpt = typer.Option(None, "--limit", help=help_of(Data, "limit"))


def _data(data: str | None, data_format: str | None, limit: int | None) -> dict[str, object]:
    """The data flags every command has, as recipe settings (None: the recipe's)."""
    return {"data.source": data, "data.format": data_format, "data.limit": limit}


def _recipe(name: str, overrides: list[str] | None, flags: dict[str, object] | None = None):
    """The recipe with --set overrides, then the typed flags (SECTION.NAME -> value, None: not given)."""
    from adpa.pipeline.recipe import load_recipe
    given = [f"{k}={_yaml(v)}" for k, v in (flags or {}).items() if v is not None]
    return load_recipe(name, list(overrides or []) + given)


def _yaml(v) -> str:
    import json
    return v if isinstance(v, str) else json.dumps(v)


@app.command("teacher-cache")
def teacher_cache(
    recipe: str = RecipeOpt,
    store: StoreOpt = None,
    backend: str = setting_option(TeacherCache, "backend"),
    engine: str = setting_option(TeacherCache, "engine"),
    data: str = DataOpt,
    data_format: str = FormatOpt,
    limit: int = LimitOpt,
    overrides: list[str] = SetOpt,
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unusable row, naming it."),
    verify_reuse: bool = typer.Option(None, "--verify-reuse", help=help_of(TeacherCache, "verify_reuse")),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build nothing: print the rows, the tokens each "
                                 "artifact would store, which artifacts are reused or built, and the bytes and "
                                 "time of what is left, measured on --probe-rows rows in a temporary store "
                                 "(this process, the local engine)."),
    probe_rows: int = typer.Option(64, "--probe-rows", min=1, help="With --dry-run: the rows the probe scores "
                                   "(after a warm-up on an eighth of them); 64 batches as stage one does."),
):
    """Stage one: score preference data with the DPO teacher and its reference into shards."""
    from adpa.artifacts import Store
    from adpa.pipeline import orchestrate
    from adpa.stages.common.ranks import from_env
    from adpa.stages.teacher_cache.run import summary_table

    r = _recipe(recipe, overrides, {"teacher_cache.backend": backend, "teacher_cache.engine": engine,
                                    "teacher_cache.verify_reuse": verify_reuse} | _data(data, data_format, limit))
    st = Store(store)
    ranks = from_env()
    say = ranks.speaker(typer.echo)
    say(f"recipe {r.name} ({r.path}); store {st.url or st.root.resolve()}")
    if dry_run:
        from adpa.stages.teacher_cache.estimate import table
        say(table(orchestrate.estimate(r, st, probe_rows, say), r.data.source))
        return
    try:
        results = orchestrate.teacher_cache(r, st, strict=strict, say=say, ranks=ranks)
    finally:
        ranks.close()
    say(summary_table(results))


@app.command()
def distill(
    recipe: str = typer.Option("tiny", "--recipe", "-r", help="Recipe name (pipeline/recipes/NAME.yaml) or YAML path; "
                               "a student's recipe, e.g. danube3-500m."),
    store: StoreOpt = None,
    loss: str = setting_option(Distill, "loss", " Default: the recipe's distill.loss."),
    output: Path = typer.Option(None, help="Run folder: model/, metrics.jsonl, loss.png, checkpoints/ "
                                "(default runs/RECIPE-LOSS-KEY8: the first 8 hex digits of the "
                                "student's key, so other data or settings never land in an earlier run's folder)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into an --output folder that is not an earlier "
                                   "run of the same settings and data (what a run writes there is replaced; other "
                                   "files stay). Without it such a folder is refused."),
    cache: list[str] = typer.Option(None, help="NAME=KEY: train on this artifact instead of the recipe's "
                                    "(NAME: teacher_topk, advantage, student_logp); repeatable."),
    data: str = DataOpt,
    data_format: str = FormatOpt,
    limit: int = LimitOpt,
    overrides: list[str] = SetOpt,
):
    """Stage two: train a student from cached teacher shards (run teacher-cache first)."""
    from adpa.artifacts import Store
    from adpa.pipeline import orchestrate
    from adpa.stages.distill.caches import CACHE_KINDS
    from adpa.stages.distill.distiller import summary_table

    r = _recipe(recipe, overrides, {"distill.loss": loss} | _data(data, data_format, limit))
    caches = {}
    for item in cache or []:
        name, sep, key = item.partition("=")
        if not sep or name not in CACHE_KINDS:
            fail(f"--cache {item!r}: expected NAME=KEY with NAME one of {', '.join(CACHE_KINDS)}")
        caches[name] = key
    st = Store(store)
    ranks = _training_ranks()
    say = ranks.speaker(typer.echo)
    say(f"recipe {r.name} ({r.path}); store {st.url or st.root.resolve()}; loss {r.distill.loss}")
    try:
        results = orchestrate.distill(r, st, r.distill.loss, output, resume, caches, say, ranks, overwrite)
    finally:
        ranks.close()
    say(summary_table(results))


def _training_ranks():
    """Launcher ranks with a process group for gradients: nccl across GPUs, gloo on CPUs."""
    import torch

    from adpa.stages.common.ranks import env_int, from_env
    if torch.cuda.is_available():
        torch.cuda.set_device(env_int("LOCAL_RANK", 0, 0))
        return from_env("nccl")
    return from_env("gloo")


@app.command("eval")
def evaluate(
    recipe: str = typer.Option("tiny", "--recipe", "-r", help="Recipe name or YAML path: its teachers, student "
                               "init, held-out data (data.eval_source) and reward (data.reward)."),
    store: StoreOpt = None,
    data: str = DataOpt,
    data_format: str = FormatOpt,
    limit: int = LimitOpt,
    overrides: list[str] = SetOpt,
    model: list[str] = typer.Option(None, help="NAME=FOLDER: a student to evaluate besides the recipe's teachers "
                                    "and student init; repeatable."),
    output: Path = typer.Option(Path("runs/eval"), help="Where eval.json, eval.png and generations/ go."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into an --output folder that is not an earlier "
                                   "eval's (eval.json, eval.png and generations/ are replaced; other files stay)."),
):
    """Evaluate students and teachers on held-out prompts: reward, implicit reward, win rate, preference accuracy."""
    from adpa.artifacts import Store
    from adpa.pipeline import orchestrate
    from adpa.stages.common.run_folder import claim
    from adpa.stages.evaluate.report import table
    from adpa.stages.evaluate.run import OUTPUTS

    r = _recipe(recipe, overrides, _data(data, data_format, limit))
    students = {}
    for item in model or []:
        name, sep, folder = item.partition("=")
        if not sep or not name or not Path(folder).is_dir():
            fail(f"--model {item!r}: expected NAME=FOLDER with a model folder")
        students[name] = folder
    claim(output, "eval", OUTPUTS, overwrite)  # before the world is built or a model loaded
    results = orchestrate.evaluate(r, Store(store), students, output, say=typer.echo)
    typer.echo(table(results, len(results[0].r_seq), orchestrate.eval_rows(r)))
    typer.echo(f"report: {output}/eval.json, chart: {output}/eval.png, generations: {output}/generations/")


@app.command()
def demo(store: StoreOpt = None,
         recipe: str = typer.Option("tiny4", "--recipe", "-r", help="Recipe name or YAML path (default: the "
                                    "built-in world v4); e.g. smollm2 with --data FILE for every method on your data."),
         data: str = DataOpt,
         data_format: str = FormatOpt,
         limit: int = LimitOpt,
         overrides: list[str] = SetOpt,
         output: Path = typer.Option(Path("runs/demo"), help="Where the report, chart and students go."),
         overwrite: bool = typer.Option(False, "--overwrite", help="Write into an --output folder that is not an "
                                        "earlier demo's (its students/, eval.json, eval.png, generations/ are "
                                        "replaced; other files stay).")):
    """The whole method end to end (default: the built-in offline world, recipe tiny4): both stages for every method, then eval; on one thread with pinned float kernels, so the table is the same on every CPU of its class (every Intel CPU with AVX2; AMD CPUs print their own: docs/RESULTS.md)."""  # noqa: E501 (typer keeps a docstring's line breaks)
    from adpa.stages.common import kernels
    kernels.run_pinned("adpa.pipeline.cli")  # before torch starts: it reads them once
    from adpa.artifacts import Store
    from adpa.pipeline.demo import run_demo

    r = _recipe(recipe, overrides, _data(data, data_format, limit))
    run_demo(Store(store), r, out_dir=output, say=typer.echo, overwrite=overwrite)


@app.command("push-to-hub")
def push_to_hub(run: Path = typer.Argument(..., help="A finished distill run folder (runs/RECIPE-LOSS-KEY8)."),
                repo: str = typer.Argument(..., help="The hub repository, OWNER/NAME (created when absent)."),
                private: bool = typer.Option(False, "--private", help="Create the repository private."),
                token: str = typer.Option(None, "--token", help="A hub token (default: HF_TOKEN, or hf auth login's)."),
):
    """A run's student (model/, with its model card; adapter/ for LoRA) to the Hugging Face Hub in one commit (HF_ENDPOINT names another hub)."""  # noqa: E501
    from adpa.pipeline.hub import push
    info = push(run, repo, private, token)
    typer.echo(f"pushed {run} to {repo}: {info.commit_url}")


recipe_app = typer.Typer(help="Recipes: list them, or show one with every setting and its help.",
                         no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")


@recipe_app.command("ls")
def recipe_ls():
    """The built-in recipes (pipeline/recipes/)."""
    from adpa.pipeline.recipe import RECIPES, load_recipe
    for p in sorted(RECIPES.glob("*.yaml")):
        typer.echo(f"{p.stem:14} {' '.join(load_recipe(str(p)).description.split())}")


@recipe_app.command("show")
def recipe_show(recipe: str = RecipeOpt, overrides: list[str] = SetOpt):
    """A recipe as YAML with every setting (defaults included), its value and its help; copy and edit it."""
    from adpa.pipeline.recipe import show
    typer.echo(show(_recipe(recipe, overrides)))


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show the traceback of a failure (before the command: "
                                     "adpa --debug distill ...)."),
          quiet: bool = typer.Option(False, "--quiet", help="No progress bars or progress lines (before the "
                                     "command: adpa --quiet distill ...); the summaries stay.")):
    """ADPA / DCKD distillation: cache teacher signals once, train students on them many times."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure becomes one line and exit 1 (2 for usage, 130 on Ctrl-C), never a
    traceback unless --debug asks for it."""
    argv = sys.argv[1:] if argv is None else argv
    head = argv[: next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))]
    debug = "--debug" in head
    if "--quiet" in head:
        os.environ["ADPA_QUIET"] = "1"  # read by every Progress, and passed to the processes a command starts
    from adpa.stages.common.progress import quiet_libraries
    quiet_libraries()  # before any library with a bar is imported
    interrupted = ("adpa: interrupted: committed shards and checkpoints are kept; run the same command again to "
                   "resume (distill: add --resume)")
    try:
        code = with_choices(typer.main.get_command(app))(argv, standalone_mode=False)  # typer.Exit: its code
        if code == 130:
            typer.echo(interrupted, err=True)
        sys.exit(code if isinstance(code, int) else 0)
    except KeyboardInterrupt:
        typer.echo(interrupted, err=True)
        sys.exit(130)
    except typer.Abort:
        typer.echo("adpa: aborted", err=True)
        sys.exit(130)
    except typer.TyperException as e:  # usage: unknown command or option, bad value, missing argument
        e.show()
        sys.exit(getattr(e, "exit_code", 2))
    except Exception as e:
        if debug:
            raise
        expected = isinstance(e, (OSError, ValueError, LookupError, RecursionError, RuntimeError)) \
            or type(e).__module__.split(".")[0] == "adpa"
        hint = "" if expected else f" ({type(e).__name__}; adpa --debug ... shows the traceback)"
        typer.echo(f"adpa: error: {one_line(e)}{hint}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
