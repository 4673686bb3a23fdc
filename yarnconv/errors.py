"""The one exception type users see: a one-line problem plus the fix."""

from __future__ import annotations


class YarnconvError(Exception):
    """Bad input or an impossible request. ``str()`` is the problem; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        """Problem and fix on a single line, for the CLI and logs."""
        text = str(self)
        return f"{text} ({self.hint})" if self.hint else text


class UsageError(YarnconvError):
    """Flags that contradict each other or do not apply: the CLI reports these with exit code 2."""
