"""Options and error reporting shared by every `adpa` command."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, NoReturn

import click
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


class LaterChoice(click.Choice):
    """A flag's choices read from their registry when first needed (shown by --help, or a value checked),
    not when the command line loads: the loss table imports torch, and `adpa --help` must not wait for it."""

    def __init__(self, read: Callable[[], tuple]):
        self._read, self._choices, self.case_sensitive = read, None, True

    @property
    def choices(self) -> tuple:
        if self._choices is None:
            self._choices = tuple(self._read())
        return self._choices

    @choices.setter
    def choices(self, value) -> None:
        self._choices = tuple(value)


CHOICES_OF = "@choices:"  # the metavar that marks a flag whose choices `with_choices` fills in


def setting_option(cls, name: str, extra_help: str = "", *flags: str):
    """A flag for the setting `name` of the recipe section `cls` (Distill, Data, ...): its help; with
    `with_choices`, its choices listed by --help and checked."""
    from adpa.stages.common.settings import help_of
    return typer.Option(None, *flags, help=help_of(cls, name, with_choices=False) + extra_help,
                        metavar=f"{CHOICES_OF}{cls.__module__}:{cls.__name__}.{name}")


def with_choices(command: click.Command) -> click.Command:
    """Every flag made by `setting_option` under `command` gets its setting's choices (read when needed)."""
    import dataclasses
    import importlib

    from adpa.stages.common.settings import choices_of
    for sub in getattr(command, "commands", {}).values():
        with_choices(sub)
    for param in command.params:
        if isinstance(param.metavar, str) and param.metavar.startswith(CHOICES_OF):
            module, _, path = param.metavar.removeprefix(CHOICES_OF).partition(":")
            cls_name, name = path.split(".")
            f = next(f for f in dataclasses.fields(getattr(importlib.import_module(module), cls_name)) if f.name == name)
            param.type, param.metavar = LaterChoice(lambda f=f: choices_of(f)), None
            # typer's help panel shows a metavar or its own type label; this one reads the choices when shown
            param.display_type_rich = lambda ctx, t=param.type: "|".join(map(str, t.choices))
    return command
