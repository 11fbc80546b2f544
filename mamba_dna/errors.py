"""The one error type for user mistakes.

Anything a user can get wrong (a missing file, a malformed FASTA line, a REF mismatch under
--strict, an impossible option) raises `MambaDNAError` with a message that says where
(file, line or record, offset) and what was expected. The CLI prints it as one line and
exits with `exit_code`; it never shows a traceback for these.
"""

from __future__ import annotations


class MambaDNAError(Exception):
    """A user-facing error: one line, no traceback, non-zero exit."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        msg = str(self).strip().replace("\n", " ")
        if self.hint:
            msg += f" ({self.hint})"
        return msg


class InputError(MambaDNAError):
    """Bad input data: a file that is missing, empty, truncated or malformed."""


class ConfigError(MambaDNAError):
    """An impossible or inconsistent option or configuration."""
