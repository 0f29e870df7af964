"""The one exception type that reaches users as a clear message and a non-zero exit."""

from __future__ import annotations

EXIT_USER_ERROR = 2


class IsoprobeError(Exception):
    """Bad input (params, data files, model names): the message names the key or file and what is allowed."""

    exit_code = EXIT_USER_ERROR
