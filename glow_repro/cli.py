"""The ``glow-repro`` command line: thin wrappers over the library (imports all, imported by none).

Each group of commands lives in ``glow_repro/commands/<topic>.py``; they share
``glow_repro.commands.base.user_errors``, which prints a user's mistake as one ``error:`` line
with exit status 2, never a traceback.
"""

from __future__ import annotations

import warnings

import click

from glow_repro import __version__
from glow_repro.commands import ALL_COMMANDS
from glow_repro.errors import UserFacingWarning


def _show_warnings_in_one_line() -> None:
    """While the command runs, the library's warnings to the user are one ``warning:`` line
    each; any other is shown as Python shows it."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, UserFacingWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    click.get_current_context().call_on_close(lambda: setattr(warnings, "showwarning", shown))


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
    _show_warnings_in_one_line()


for _command in ALL_COMMANDS:
    main.add_command(_command)
