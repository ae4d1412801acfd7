"""Options and error reporting shared by every `adpa` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

StoreOpt = Annotated[Path | None, typer.Option(
    "--store", envvar="ADPA_STORE", show_default="./store",
    help="Artifact store folder (default: $ADPA_STORE, else ./store).")]


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr naming what is wrong, then a non-zero exit."""
    typer.echo(f"adpa: error: {message}", err=True)
    raise typer.Exit(code)
