"""The one exception type that reaches users as a clear message and a non-zero exit, and the one way
a caught exception is quoted inside such a message (or a warning)."""

from __future__ import annotations

EXIT_USER_ERROR = 2


class IsoprobeError(Exception):
    """Bad input (params, data files, model names): the message names the key or file and what is allowed."""

    exit_code = EXIT_USER_ERROR


def describe_error(err: BaseException, limit: int = 300) -> str:
    """`Type: message` on one line: the message's whitespace (newlines included) collapsed to single
    spaces and cut to its first `limit` characters, so a long traceback-like text stays readable."""
    return f"{type(err).__name__}: {' '.join(str(err).split())[:limit]}"
