"""Entry-point wrapper: user mistakes, Ctrl-C and a full or read-only disk become one line on stderr and an exit
code, never a traceback."""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable
from typing import NoReturn

from ganforge.errors import Interrupted, UserError
from ganforge.launch import record_worker_error

EXIT_ENVIRONMENT_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# The machine, not ganforge, is at fault: say so in one line instead of a traceback.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO}


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes (a missing flag, a bad value) are one :class:`UserError` line, like every other user
    mistake; plain argparse prints its usage block too. ``--help`` still prints the usage."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")


def run_main(main: Callable[[], None], prog: str) -> None:
    """Run ``main`` and exit: 0 on success, 2 on :class:`UserError`, 130 on Ctrl-C, 1 on a full or read-only disk."""
    try:
        main()
    except UserError as e:
        _fail(f"{prog}: error: {e}", EXIT_USER_ERROR)
    except KeyboardInterrupt as e:
        what = str(e) if isinstance(e, Interrupted) else "interrupted; outputs already in place were left untouched"
        _fail(f"{prog}: {what}", EXIT_INTERRUPTED)
    except OSError as e:
        if e.errno not in _ENVIRONMENT_ERRNOS:
            raise
        _fail(f"{prog}: error: {e.filename or 'write'}: {e.strerror}; outputs already in place were left untouched",
              EXIT_ENVIRONMENT_ERROR)
    sys.exit(0)


def _fail(line: str, code: int) -> NoReturn:
    """Say ``line`` on stderr (or, in a worker of :mod:`ganforge.launch`, hand it to the launcher) and exit.
    A newline or other unprintable character from a file name or a value is shown escaped: one line, always."""
    line = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in line)
    if not record_worker_error(line, code):
        print(line, file=sys.stderr)
    sys.exit(code)
