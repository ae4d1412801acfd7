"""Options and error reporting shared by every `adpa` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

StoreOpt = Annotated[str | None, typer.Option(
    "--store", envvar="ADPA_STORE", show_default="./store",
    help="Artifact store: a folder, or an fsspec URL (s3://bucket/path, gs://..., memory://...) whose local "
         "working copy is $ADPA_WORKDIR or ~/.cache/adpa/stores/ (default: $ADPA_STORE, else ./store).")]


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr naming what is wrong, then a non-zero exit."""
    typer.echo(f"adpa: error: {printable(message)}", err=True)
    raise typer.Exit(code)


def one_line(e: BaseException) -> str:
    """An expected failure as one printable line that names the input: OS errors with their path,
    control characters (from a file, a manifest, a recipe) shown escaped, never as new lines."""
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
        text += f" (errno {e.errno})" if e.errno else ""
    elif isinstance(e, RecursionError):
        text = "input nested too deeply to read"
    else:
        text = str(e) or type(e).__name__
    return printable(text)


def echo(text) -> None:
    """Print one line that may hold text from a manifest, a record or data: every control character, a new
    line included, is shown escaped (an escape in a shared manifest must not retitle, erase or fake a line)."""
    typer.echo(printable(text))


def printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
