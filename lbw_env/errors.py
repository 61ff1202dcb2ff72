"""Bad input, and how a command line reports it.

Every error about what a user hands in is one of two exceptions whose message names the field or file and what
was expected: :class:`ConfigError` (a configuration value, a suite, a governor spec or file) and
:class:`DataError` (the data root, a WikiText file). A command-line tool turns those, and OS errors (a missing or
unwritable file, a full disk), into one line on stderr and exit status 2 instead of a traceback
(:func:`exit_on_bad_input`, or :func:`error_line` where the tool returns its own status). Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type. The message names the key."""


class DataError(ValueError):
    """Bad data input; the message names the file or folder and what was expected."""


BAD_INPUT: tuple[type[Exception], ...] = (ConfigError, DataError, OSError)
"""What a command line reports in one line (exit status 2) rather than as a traceback."""


def error_line(prog: str, message: object) -> str:
    """``<prog>: error: <message>`` on one line (a multi-line message's whitespace folded)."""
    return f"{prog}: error: {' '.join(str(message).split())}"


@contextlib.contextmanager
def exit_on_bad_input(prog: str) -> Iterator[None]:
    """Run a tool's body; bad input (:data:`BAD_INPUT`) ends it with :func:`error_line` on stderr and status 2."""
    try:
        yield
    except BAD_INPUT as e:
        print(error_line(prog, e), file=sys.stderr)
        raise SystemExit(2) from None
