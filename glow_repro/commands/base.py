"""What every command shares: user mistakes become one ``error:`` line and exit status 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from glow_repro.config import ConfigError
from glow_repro.errors import UserFacingError


class UserError(click.ClickException):
    """Shown as ``error: <message>`` and exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's user-facing exceptions into one-line CLI errors (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, UserFacingError) as err:
            raise UserError(str(err)) from None

    return wrapper
