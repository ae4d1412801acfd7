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
def teacher_cache(store: StoreOpt = None):
    """Stage one: score preference data with the DPO teacher and its reference into shards."""
    _not_yet("teacher-cache", 3)


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
