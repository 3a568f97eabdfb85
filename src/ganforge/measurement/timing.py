"""Timing helpers: spreads of repeated measurements, a command's wall time and process-tree memory, and a busy
neighbour process for timings under contention."""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from ganforge.errors import UserError


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements (the median is the figure; min–max shows the noise)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def rate_spread(work: Callable[[], None], amount: float, repeats: int, warmup: int = 2) -> dict[str, float]:
    """``amount`` per second of ``work()`` (for example images per call), over ``repeats`` timed calls."""
    for _ in range(warmup):
        work()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        rates.append(amount / (time.perf_counter() - start))
    return spread(rates)


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Run ``cmd``; return wall seconds and the peak summed RSS of its process tree in MiB."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise UserError(f"{' '.join(map(str, cmd))} failed: {output.strip().splitlines()[-1:] or ['no output']}")
    return {"wall_s": time.perf_counter() - start, "peak_rss_mib": peak[0] / 2**20}


# Announces itself once running, then spins: a CPU-bound neighbour like another job on a shared host.
_SPIN = "import sys; print('spinning', flush=True)\nwhile True: pass"


@contextlib.contextmanager
def busy_neighbour() -> Iterator[subprocess.Popen]:
    """A CPU-bound Python process running beside the body; it is spinning before the body starts and is killed
    after it. Timings taken inside show how a form holds up when the cores are shared."""
    spinner = subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True)
    try:
        if spinner.stdout.readline().strip() != "spinning":
            raise RuntimeError(f"the busy neighbour process did not start (exit code {spinner.wait(timeout=10)})")
        yield spinner
    finally:
        spinner.kill()
        spinner.wait()
        spinner.stdout.close()
