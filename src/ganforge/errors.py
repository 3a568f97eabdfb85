"""The one error type for user mistakes: bad params, bad paths, bad data."""


class UserError(Exception):
    """A mistake the user can fix. Entry points print it as one line and exit with code 2.

    The message must name the offending key, file or value.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) with a message saying what was kept; entry points print it and exit with code 130."""
