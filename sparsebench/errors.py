"""Errors that reach the user as one line and exit code 2.

Why a dedicated type: the CLI turns every ``UsageError`` into ``sparsebench: error: <message>`` with
exit code 2 and no traceback, so library code raises it for anything the user can fix (bad flag,
missing file, unreachable registry) and lets genuine bugs surface as tracebacks.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad input the user can fix. The message says what was wrong and what to do."""


class DependencyError(UsageError):
    """A needed package, file or service is missing; the message names how to get it."""
