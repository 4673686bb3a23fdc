"""The exceptions users see, each a one-line problem plus the fix, and the exit code each means:

0 done; 1 bad input or environment (``YarnconvError``); 2 usage: flags that contradict each other or do
not apply, Click's own parsing errors included (``UsageError``); 3 a check the user asked for failed, the
output is kept (``CheckFailed``: verify, extend/export/run --verify, demo); 143 SIGTERM.
"""

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


EXIT_BAD_INPUT, EXIT_USAGE, EXIT_CHECK_FAILED = 1, 2, 3


class CheckFailed(YarnconvError):
    """The artifact was written and read, and a check on it failed: exit code 3, so a script can tell a
    model that failed verification from input that could not be processed."""


class UsageError(YarnconvError):
    """Flags that contradict each other or do not apply: the CLI reports these with exit code 2."""
