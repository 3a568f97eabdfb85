"""Entry-point wrapper: user mistakes, Ctrl-C and a full or read-only disk become one line on stderr and an exit
code, never a traceback."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

from ganforge.errors import Interrupted, UserError

EXIT_ENVIRONMENT_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# The machine, not ganforge, is at fault: say so in one line instead of a traceback.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO}


def run_main(main: Callable[[], None], prog: str) -> None:
    """Run ``main`` and exit: 0 on success, 2 on :class:`UserError`, 130 on Ctrl-C, 1 on a full or read-only disk."""
    try:
        main()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt as e:
        what = str(e) if isinstance(e, Interrupted) else "interrupted; outputs already in place were left untouched"
        print(f"{prog}: {what}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as e:
        if e.errno not in _ENVIRONMENT_ERRNOS:
            raise
        print(f"{prog}: error: {e.filename or 'write'}: {e.strerror}; outputs already in place were left untouched",
              file=sys.stderr)
        sys.exit(EXIT_ENVIRONMENT_ERROR)
    sys.exit(0)
