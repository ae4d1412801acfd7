"""The `adpa` command line: the two stages, evaluation, the demo, and the artifact store."""

from __future__ import annotations

import sys

import typer

from pipeline import cache_cli
from pipeline.options import StoreOpt, fail

app = typer.Typer(help="ADPA / DCKD distillation: cache teacher signals once, train students on them many times.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(cache_cli.app, name="cache")


def _not_yet(what: str, issue: int):
    fail(f"{what} is not built yet (tracked in issue #{issue})", code=2)


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
def distill(store: StoreOpt = None):
    """Stage two: train a student from cached teacher shards."""
    _not_yet("distill", 5)


@app.command("eval")
def evaluate(store: StoreOpt = None):
    """Evaluate students and teachers on held-out prompts."""
    _not_yet("eval", 6)


@app.command()
def demo(store: StoreOpt = None):
    """The whole method end to end on the built-in offline world."""
    _not_yet("demo", 6)


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
