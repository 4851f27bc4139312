"""The one exception type for mistakes a user can make.

Everything a user can get wrong (a model name, a width, a resolution, a path, a checkpoint)
raises :class:`MobileNetError` with a one-line message that says what was wrong. The CLI prints
that line and exits with status 2, without a traceback; library users can catch one type.
"""

from __future__ import annotations


class MobileNetError(ValueError):
    """A user-facing error: the message is one line that names what was wrong."""

    def __init__(self, message: str) -> None:
        # One line, always: a multi-line message would break the CLI's contract.
        super().__init__(" ".join(str(message).split()))
