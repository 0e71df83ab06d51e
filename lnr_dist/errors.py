"""Errors about what the user gave us; the CLI prints them as one line, without a traceback, and exits 2."""


class UserError(ValueError):
    """Bad input: a config key, a file, a line. The message names where the problem is."""
