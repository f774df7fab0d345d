"""User-facing errors: one line, naming what was wrong, exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a file, field or option and what was expected.

    The CLI prints ``asteria-bench: error: <message>`` on stderr, with no
    traceback, and exits with status 2.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
