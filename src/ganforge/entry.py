"""Entry-point wrapper: user mistakes become one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ganforge.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def run_main(main: Callable[[], None], prog: str) -> None:
    """Run ``main`` and exit: 0 on success, 2 on :class:`UserError`, 130 on Ctrl-C."""
    try:
        main()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; outputs already in place were left untouched", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(0)
