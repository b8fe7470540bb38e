"""Options, consoles and error helpers shared by every ``carepost`` command group.

User errors print one unwrapped ``error: ...`` line on stderr without
Rich markup (a message may contain brackets) and exit 2 for unusable
settings, 1 for a failed command. ``CarepostGroup`` is the last net: a
``CarepostError`` that a command does not catch itself (the ledger
database refusing the login, say) is printed the same way, not as a
traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import click
import typer
from carepost.core.errors import CarepostError
from carepost.core.settings import Settings, load_settings
from rich.console import Console
from typer.core import TyperGroup

console = Console()
# Errors are not wrapped, so a message stays one greppable line.
errors = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[Path, typer.Option(
    "--config", envvar="CAREPOST_CONFIG", help="Project configuration file.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v",
                                             help="Log progress at INFO level.")]


def fail(exc: CarepostError | str, code: int = 1) -> NoReturn:
    """Print ``exc`` as one error line and exit with ``code``."""
    errors.print("error: " + str(exc), markup=False, highlight=False)
    raise typer.Exit(code) from None


def settings_or_exit(config: Path) -> Settings:
    """Load the project settings, or print why not and exit 2."""
    try:
        return load_settings(config)
    except CarepostError as exc:
        fail(exc, code=2)


class CarepostGroup(TyperGroup):
    """The root command group: an uncaught ``CarepostError`` exits 1 in one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CarepostError as exc:
            fail(exc)
