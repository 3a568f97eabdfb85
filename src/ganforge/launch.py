"""``python -m ganforge.launch [torchrun options] SCRIPT [ARGS]``: torchrun, with a failed worker's own one-line
error as the last word and its exit code as the exit code.

Plain torchrun ends a failed worker with about 30 lines (its launcher's traceback and a ``ChildFailedError``
summary) and exit code 1, whatever the worker said. Under this launcher a worker that stops on a handled error (a
user mistake, Ctrl-C, a full disk: :func:`ganforge.entry.run_main`) records its line in the error file torchelastic
gives each worker instead of printing it. The launcher prints the first failed worker's line, once however many
ranks failed the same way, and exits with that worker's code (2 for a user mistake). torchrun's own report of such
a failure is dropped; for anything else (a crash, a signal, a restart) it is shown as torchrun shows it.

Every torchrun option works, multi-node rendezvous included: use this module wherever ``torchrun`` would go.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Set for the workers: they record a handled error for this launcher instead of printing it.
LAUNCHED_ENV = "GANFORGE_LAUNCHED"
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"  # torchelastic's per-worker error file
_RECORD_KEY = "ganforge"
# Exit codes with which run_main reports a handled error; torchrun's report of any other failure is kept.
_HANDLED_CODES = (2, 130)


def record_worker_error(line: str, code: int) -> bool:
    """Under this launcher, write a worker's one-line error where the launcher reads it; False when not under it
    (the caller prints the line itself)."""
    error_file = os.environ.get(ERROR_FILE_ENV)
    if not (os.environ.get(LAUNCHED_ENV) and error_file):
        return False
    # torchelastic reads "message" (a str) and "timestamp" from this file; the rest is ours.
    record = {"message": line, "timestamp": int(time.time()), _RECORD_KEY: {"line": line, "exit_code": code,
                                                                              "time_ns": time.time_ns()}}
    try:
        Path(error_file).parent.mkdir(parents=True, exist_ok=True)
        Path(error_file).write_text(json.dumps(record))
    except OSError:
        return False
    return True


def _read_record(path: str | Path, since_ns: int) -> dict[str, Any] | None:
    try:
        record = json.loads(Path(path).read_text())[_RECORD_KEY]
        ok = isinstance(record["line"], str) and isinstance(record["exit_code"], int) and record["time_ns"] >= since_ns
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if ok else None


class _HeldReport(logging.Filter):
    """Holds back torchrun's warnings and errors about stopping workers until it is known whether the failure was a
    handled one (then they are dropped) or not (then they are shown, in order)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger, self.held, self.passing = logger, [], False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.passing or record.levelno < logging.WARNING:
            return True
        self.held.append(record)
        failed = isinstance(record.msg, str) and record.msg.startswith("failed (exitcode")
        if failed and record.args and record.args[0] not in _HANDLED_CODES:
            self.release()
        return False

    def release(self) -> None:
        held, self.held = self.held, []
        self.passing = True
        try:
            for record in held:
                self.logger.handle(record)
        finally:
            self.passing = False

    def drop(self) -> None:
        self.held = []


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv)
    own_log_dir = None
    if not args.log_dir:  # a folder of our own for the workers' error files, removed afterwards
        own_log_dir = args.log_dir = tempfile.mkdtemp(prefix="ganforge-launch-")
    os.environ[LAUNCHED_ENV] = "1"
    logger = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    held = _HeldReport(logger)
    logger.addFilter(held)
    start_ns = time.time_ns()
    try:
        run(args)
    except (ChildFailedError, SignalException) as e:
        if isinstance(e, ChildFailedError):
            failures = [(_read_record(f.error_file, start_ns), f) for _, f in sorted(e.failures.items())]
            # A worker that exited on its own without a recorded line crashed: that is the story to show, even if
            # others then stopped on handled errors (a collective failing because the crashed peer is gone).
            crashed = any(record is None and failure.exitcode > 0 for record, failure in failures)
            records = [] if crashed else [record for record, _ in failures if record is not None]
        else:  # the launcher itself was signalled (Ctrl-C): its workers may have said why they stopped
            found = (_read_record(path, start_ns) for path in sorted(Path(args.log_dir).rglob("error.json")))
            records = [record for record in found if record is not None]
        if not records:
            held.release()
            raise
        held.drop()
        first = min(records, key=lambda r: r["time_ns"])
        print(first["line"], file=sys.stderr)
        sys.exit(first["exit_code"])
    finally:
        logger.removeFilter(held)
        held.release()
        if own_log_dir is not None:
            shutil.rmtree(own_log_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
