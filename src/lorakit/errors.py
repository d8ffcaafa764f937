"""The one base of the errors lorakit raises on purpose.

Each stage raises its own subclass (``ConfigError``, ``DataError``, ``RunFolderError`` ...)
whose message names the file, key or sample and says what to do. The CLI prints such an
error as one line and exits; any other exception is a bug in lorakit or below it, and keeps
its traceback. Most subclasses also derive from the builtin their callers already expect
(``ValueError``, ``FileNotFoundError``), so code that caught those keeps working.
"""

from __future__ import annotations


class LorakitError(Exception):
    """A problem with what the user asked for or gave; the message says how to fix it."""

    exit_code = 2  # the shell's usage-error convention; a failed worker (LaunchError) says 1
