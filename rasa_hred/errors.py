"""Errors a user can act on: the CLI prints their message instead of a stack trace."""


class UserError(Exception):
    """Bad input or configuration: the message says what and where."""
