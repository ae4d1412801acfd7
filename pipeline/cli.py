"""The `adpa` command line: the two stages, evaluation, the demo, and the artifact store."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from pipeline import cache_cli
from pipeline.options import StoreOpt, fail

app = typer.Typer(help="ADPA / DCKD distillation: cache teacher signals once, train students on them many times.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(cache_cli.app, name="cache")


@app.command("teacher-cache")
def teacher_cache(
    recipe: str = typer.Option("tiny", "--recipe", "-r", help="Recipe name (pipeline/recipes/NAME.yaml) or YAML path."),
    store: StoreOpt = None,
    backend: str = typer.Option(None, help="Scoring backend: auto (vllm when it imports, else hf) | vllm | hf."),
    k: int = typer.Option(None, help="Top-k ids kept per position."),
    max_length: int = typer.Option(None, help="Prompt + response tokens; longer responses are cut at the end."),
    states: str = typer.Option(None, help="ADPA states: student | teacher (generated) | chosen | rejected."),
    advantage_reference: str = typer.Option(None, help="reference (teacher's SFT, the paper) | student (released README)."),
    data: str = typer.Option(None, help="Dataset: hub id or local .json/.jsonl/.parquet file."),
    split: str = typer.Option(None, help="Dataset split."),
    data_format: str = typer.Option(None, "--format", help="auto | strings | messages | transcripts."),
    limit: int = typer.Option(None, help="Use only the first N rows."),
    max_new_tokens: int = typer.Option(None, help="Generation length for ADPA states."),
    dtype: str = typer.Option(None, help="auto | float32 | bfloat16 | float16."),
    token_budget: int = typer.Option(None, help="Padded tokens per forward pass."),
    shard_rows: int = typer.Option(None, help="Rows per shard: the unit a killed run resumes from."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unusable row, naming it."),
):
    """Stage one: score preference data with the DPO teacher and its reference into shards."""
    from artifacts import Store
    from pipeline.recipe import load_recipe
    from stages import parallel
    from stages.teacher_cache import run_teacher_cache, summary_table

    r = load_recipe(recipe)
    for name, value in (("backend", backend), ("k", k), ("max_length", max_length), ("states", states),
                        ("advantage_reference", advantage_reference), ("max_new_tokens", max_new_tokens),
                        ("dtype", dtype), ("token_budget", token_budget), ("shard_rows", shard_rows)):
        if value is not None:
            setattr(r.teacher_cache, name, value)
    for name, value in (("source", data), ("split", split), ("format", data_format), ("limit", limit)):
        if value is not None:
            setattr(r.data, name, value)
    r.teacher_cache.check()
    st = Store(store)
    ranks = parallel.from_env()
    say = typer.echo if ranks.rank == 0 else (lambda *_: None)
    say(f"recipe {r.name} ({r.path}); store {st.root.resolve()}")
    try:
        results = run_teacher_cache(r, st, strict=strict, say=say, ranks=ranks)
    finally:
        ranks.close()
    say(summary_table(results))


@app.command()
def distill(
    recipe: str = typer.Option("tiny", "--recipe", "-r", help="Recipe name (pipeline/recipes/NAME.yaml) or YAML path; "
                               "a student's recipe, e.g. danube3-500m."),
    store: StoreOpt = None,
    loss: str = typer.Option(None, help="sft | kd | dckd | adpa | adpa+ | dpo (default: the recipe's distill.loss)."),
    output: Path = typer.Option(None, help="Run folder: model/, metrics.jsonl, loss.png, checkpoints/ "
                                "(default runs/RECIPE-LOSS)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's last checkpoint."),
    cache: list[str] = typer.Option(None, help="NAME=KEY: train on this artifact instead of the recipe's "
                                    "(NAME: teacher_topk, advantage, student_logp); repeatable."),
    lr: float = typer.Option(None, help="Peak learning rate (loss sft uses distill.sft_lr)."),
    epochs: int = typer.Option(None, help="Passes over the pairs."),
    batch_pairs: int = typer.Option(None, help="Effective batch: pairs per optimizer step over all processes."),
    token_budget: int = typer.Option(None, help="Padded tokens per micro-batch."),
    alpha: float = typer.Option(None, help="DCKD: weight of each KL term."),
    gamma: float = typer.Option(None, help="ADPA: weight of the expected advantage."),
    advantage: str = typer.Option(None, help="ADPA advantage: signed (the paper) | clip01 (the released code)."),
    beta: float = typer.Option(None, help="DPO: beta."),
    seed: int = typer.Option(None, help="Data order and dropout seed."),
    save_every: int = typer.Option(None, help="Checkpoint every N optimizer steps (0: none)."),
    gradient_checkpointing: bool = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing",
                                                help="Recompute activations in the backward pass (less memory)."),
):
    """Stage two: train a student from cached teacher shards (run teacher-cache first)."""
    from artifacts import Store
    from pipeline.recipe import load_recipe
    from stages.distill import run_distill, summary_table

    r = load_recipe(recipe)
    for name, value in (("loss", loss), ("lr", lr), ("epochs", epochs), ("batch_pairs", batch_pairs),
                        ("token_budget", token_budget), ("alpha", alpha), ("gamma", gamma),
                        ("advantage", advantage), ("beta", beta), ("seed", seed), ("save_every", save_every),
                        ("gradient_checkpointing", gradient_checkpointing)):
        if value is not None:
            setattr(r.distill, name, value)
    r.distill.check()
    overrides = {}
    for item in cache or []:
        name, sep, key = item.partition("=")
        if not sep or name not in ("teacher_topk", "advantage", "student_logp"):
            fail(f"--cache {item!r}: expected NAME=KEY with NAME teacher_topk, advantage or student_logp")
        overrides[name] = key
    st = Store(store)
    ranks = _training_ranks()
    say = typer.echo if ranks.rank == 0 else (lambda *_: None)
    say(f"recipe {r.name} ({r.path}); store {st.root.resolve()}; loss {r.distill.loss}")
    try:
        results = run_distill(r, st, r.distill.loss, output, resume, overrides, say, ranks)
    finally:
        ranks.close()
    say(summary_table(results))


def _training_ranks():
    """Launcher ranks with a process group for gradients: nccl across GPUs, gloo on CPUs."""
    import os

    import torch

    from stages import parallel
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return parallel.from_env("nccl")
    return parallel.from_env("gloo")


@app.command("eval")
def evaluate(
    recipe: str = typer.Option("tiny", "--recipe", "-r", help="Recipe name or YAML path: its teachers, student "
                               "init, held-out data (data.eval_source) and reward (data.reward)."),
    store: StoreOpt = None,
    model: list[str] = typer.Option(None, help="NAME=FOLDER: a student to evaluate besides the recipe's teachers "
                                    "and student init; repeatable."),
    output: Path = typer.Option(Path("runs/eval"), help="Where eval.json, eval.png and generations/ go."),
):
    """Evaluate students and teachers on held-out prompts: reward, implicit reward, win rate, preference accuracy."""
    from artifacts import Store
    from pipeline.recipe import load_recipe
    from stages.evaluate import run_eval, table

    r = load_recipe(recipe)
    students = {}
    for item in model or []:
        name, sep, folder = item.partition("=")
        if not sep or not name or not Path(folder).is_dir():
            fail(f"--model {item!r}: expected NAME=FOLDER with a model folder")
        students[name] = folder
    results = run_eval(r, Store(store), students, output, say=typer.echo)
    typer.echo(table(results, len(results[0].r_seq)))
    typer.echo(f"report: {output}/eval.json, chart: {output}/eval.png, generations: {output}/generations/")


@app.command()
def demo(store: StoreOpt = None,
         output: Path = typer.Option(Path("runs/demo"), help="Where the report, chart and students go.")):
    """The whole method end to end on the built-in offline world: both stages for every method, then eval."""
    from artifacts import Store
    from pipeline.demo import run_demo

    run_demo(Store(store), out_dir=output, say=typer.echo)


def main() -> None:
    """Entry point: known failures become one line and exit 1, never a traceback."""
    from artifacts import StoreError, VerifyError
    from artifacts.shards import ShardError
    from schemas.manifest import ManifestError
    try:
        app()
    except (StoreError, VerifyError, ShardError, ManifestError, FileNotFoundError, PermissionError, ValueError) as e:
        typer.echo(f"adpa: error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
