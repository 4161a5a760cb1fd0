"""Errors that mean "the input was wrong", as opposed to a bug.

The command line prints these as ``decision-rnn: error: <message>`` and exits with status 2 (no traceback
unless ``--debug`` or ``DECISION_RNN_DEBUG=1``); their messages say what was wrong and how to fix it.
"""

from __future__ import annotations


class UserError(Exception):
    """A bad argument, file or environment the user can fix; the message says how."""


class RunDirError(UserError, FileExistsError):
    """`--out` is not a directory this training may write to: not a run, a run without `--resume`, or locked."""


class DiskFullError(UserError):
    """No space left while writing a file; the message names the path and the space needed."""


__all__ = ["DiskFullError", "RunDirError", "UserError"]
