"""Exceptions that carry a complete, user-facing message (printed by the CLI without traceback)."""


class UserFacingError(RuntimeError):
    """Base for mistakes a user can fix: missing data files, a locked run, a bad results dir."""


class DataUnavailableError(UserFacingError):
    """A dataset's files are missing; the message says which, where to put them, how to get them."""


class ResultsDirError(UserFacingError):
    """The path given is not a results directory written by ``glow-repro run``."""


class UserFacingWarning(RuntimeWarning):
    """Something a user should know that does not stop the command (a repair made, a view of the
    logs turned off); the CLI prints it as one ``warning:`` line."""
