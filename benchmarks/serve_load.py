"""Load test of ``ganforge serve`` on loopback: requests/s, images/s and p50/p99 latency.

    python benchmarks/serve_load.py [--package dist/generator] [--seconds 20] [--clients 1 8]

It starts the real server on a free loopback port (the package from `dvc repro`), warms it up, then for each
client count runs that many client threads, each with its own keep-alive connection, sending requests back to
back for ``--seconds``; then the most clients again while a busy-looping process shares the cores. Two kinds of
request are timed: ``GET /generate?n=16&seed=<i>&format=grid`` (a PNG grid, what a page shows) and
``GET /generate?n=256&seed=<i>&format=npy`` (bulk: the uint8 array, no encoding, the optimize stage's batch).
It does this for the package's winner and for its baseline (the trained generator in eager fp32,
``--model baseline``), so the winner's speed-up is measured through the server, alone and under contention.
Clients and server share the machine's cores. Results go to bench/serve_load.json and the generated section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from measure import REPO, machine, machine_line, save_results, write_doc_section

from ganforge.measurement.timing import busy_neighbour

RESULTS = REPO / "bench/serve_load.json"
REQUESTS = {"grid": (16, "grid"), "bulk": (256, "npy")}  # kind: (images per request, format)


def _start(package: Path, port: int, model: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ganforge.cli", "serve", "--package", str(package), "--port", str(port),
           "--model", model]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"server exited: {server.stderr.read()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    sys.exit("server did not come up within 120 s")


def _load(port: int, clients: int, seconds: float, kind: str = "grid") -> dict:
    n, form = REQUESTS[kind]
    latencies_ms: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = 0
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            connection.request("GET", f"/generate?n={n}&seed={index * 1_000_000 + i}&format={form}")
            response = connection.getresponse()
            response.read()
            elapsed_ms = (time.perf_counter() - start) * 1000
            with lock:
                if response.status == 200:
                    latencies_ms.append(elapsed_ms)
                else:
                    errors[0] += 1
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - start
    ordered = sorted(latencies_ms)
    return {"clients": clients, "requests": len(ordered), "errors": errors[0], "wall_s": wall_s,
            "req_per_s": len(ordered) / wall_s, "img_per_s": len(ordered) * n / wall_s,
            "p50_ms": statistics.median(ordered), "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_load(package: Path, model: str, clients: list[int], seconds: float) -> dict:
    port = _free_port()
    server = _start(package, port, model)
    try:
        for kind in REQUESTS:
            _load(port, 1, 2.0, kind)  # warm-up
        rss_before = psutil.Process(server.pid).memory_info().rss
        runs = [_load(port, count, seconds) for count in clients]
        bulk = _load(port, max(clients), seconds, "bulk")
        with busy_neighbour():
            busy = _load(port, max(clients), seconds)
            bulk_busy = _load(port, max(clients), seconds, "bulk")
        rss_after = psutil.Process(server.pid).memory_info().rss
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"runs": runs, "beside_a_busy_process": busy, "bulk": {"alone": bulk, "beside_a_busy_process": bulk_busy},
            "server_rss_mib": {"before": rss_before / 2**20, "after": rss_after / 2**20}}


def run(args: argparse.Namespace) -> dict:
    if not (args.package / "manifest.json").is_file():
        sys.exit(f"{args.package}: no package; run `dvc repro` first")
    config = json.loads((args.package / "config.json").read_text())
    models = {model: _serve_and_load(args.package, model, args.clients, args.seconds)
              for model in ("winner", "baseline")}
    winner, baseline = models["winner"], models["baseline"]
    bulk_ratio = {k: winner["bulk"][k]["img_per_s"] / baseline["bulk"][k]["img_per_s"] for k in winner["bulk"]}
    return {"machine": machine(), "package": str(args.package), "variant": config["recipe"]["variant"],
            "n": REQUESTS["grid"][0], "bulk_n": REQUESTS["bulk"][0], "seconds": args.seconds, **winner,
            "baseline": baseline,
            "winner_vs_baseline": {
                "alone": winner["runs"][-1]["img_per_s"] / baseline["runs"][-1]["img_per_s"],
                "beside_a_busy_process": (winner["beside_a_busy_process"]["img_per_s"]
                                          / baseline["beside_a_busy_process"]["img_per_s"])},
            "bulk_winner_vs_baseline": bulk_ratio}


def _rows(label: str, result: dict, n: int, bulk_n: int) -> list[str]:
    busy = ", beside a busy process"
    grid, array = f"n={n} grid", f"n={bulk_n} npy"
    cases = [*((grid, r, "") for r in result["runs"]), (grid, result["beside_a_busy_process"], busy),
             (array, result["bulk"]["alone"], ""), (array, result["bulk"]["beside_a_busy_process"], busy)]
    return [f"| {label} | {request} | {r['clients']}{note} | {r['requests']} | {r['errors']} | {r['req_per_s']:.0f} | "
            f"{r['img_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |" for request, r, note in cases]


def render(results: dict) -> None:
    ratio, bulk = results["winner_vs_baseline"], results["bulk_winner_vs_baseline"]
    n, bulk_n = results["n"], results["bulk_n"]
    lines = [machine_line(results["machine"]), "",
             f"`ganforge serve` with the pipeline's package on loopback, its winner (`{results['variant']}`) and its "
             f"baseline (`--model baseline`, eager fp32), torch runtime; each client keeps one connection and asks "
             f"for `GET /generate?n={n}&seed=<new>&format=grid` (a PNG grid) or `n={bulk_n}&format=npy` (bulk: the "
             f"uint8 array, no encoding) back to back for {results['seconds']:.0f} s. Clients and server share the "
             "2 cores; rows marked so run while a busy-looping process shares them too. Winner server memory "
             f"{results['server_rss_mib']['before']:.0f} MiB before the load, "
             f"{results['server_rss_mib']['after']:.0f} MiB after.", "",
             "| model | request | clients | requests | errors | requests/s | images/s | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|---|",
             *_rows("winner", results, n, bulk_n), *_rows("baseline", results["baseline"], n, bulk_n), "",
             f"With {results['runs'][-1]['clients']} clients the winner serves {ratio['alone']:.2f}× the baseline's "
             f"images/s for n={n} grids alone and {ratio['beside_a_busy_process']:.2f}× beside the busy process: "
             f"PNG encoding and HTTP take most of such a request. For n={bulk_n} arrays it serves "
             f"{bulk['alone']:.2f}× alone and {bulk['beside_a_busy_process']:.2f}× beside the busy process."]
    write_doc_section("serve-load", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=REPO / "dist/generator")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    results = run(args)
    save_results(RESULTS, results, render)


if __name__ == "__main__":
    main()
