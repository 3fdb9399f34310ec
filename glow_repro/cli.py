"""The ``glow-repro`` command line: thin wrappers over the library (imports all, imported by none).

Each group of commands lives in ``glow_repro/commands/<topic>.py`` and is registered below.
User mistakes (:class:`~glow_repro.config.ConfigError`, missing data) are printed as one
``error:`` line with exit status 2, never as a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from glow_repro import __version__


class UserError(click.ClickException):
    """Shown as ``error: <message>`` and exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's user-facing exceptions into one-line CLI errors."""
    from glow_repro.config import ConfigError
    from glow_repro.errors import UserFacingError

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, UserFacingError) as err:
            raise UserError(str(err)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="glow-repro")
def main() -> None:
    """Reproducibility study harness for Glow (Kingma & Dhariwal 2018).

    \b
    Typical session:
      glow-repro run studies/permutation_ablation.yaml
      glow-repro status results/permutation_ablation
      glow-repro report results/permutation_ablation
    """


def _register() -> None:
    from glow_repro.commands import ALL_COMMANDS

    for command in ALL_COMMANDS:
        main.add_command(command)


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
