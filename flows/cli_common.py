"""Options, consoles and error helpers shared by every ``carepost`` command group.

User errors print one unwrapped ``error: ...`` line on stderr without
Rich markup (a message may contain brackets) and exit 2 for unusable
settings, 1 for a failed command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from carepost.core.errors import CarepostError
from carepost.core.settings import Settings, load_settings
from rich.console import Console

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
