"""ganforge serve: a real server on a free loopback port, real HTTP requests, and the page in a real browser."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ganforge.serving.generate import generate

MAX_N = 32


@dataclass
class Server:
    url: str
    process: subprocess.Popen

    def get(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) of GET ``path``, for 4xx/5xx answers too."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=60) as response:
                return response.status, response.headers["Content-Type"], response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(package: Path, *extra: str) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "ganforge.cli", "serve", "--package", str(package), "--port", str(port), *extra]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = Server(f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {process.stdout.read()}")
        try:
            if server.get("/healthz")[0] == 200:
                return server
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("server did not come up within 90 s")


@pytest.fixture(scope="module")
def server(tiny_run):
    server = start_server(tiny_run.package, "--max-n", str(MAX_N))
    yield server
    server.process.terminate()
    server.process.wait(timeout=30)


def counter(server: Server, name: str, **labels: str) -> float:
    """A sample's value from /metrics (0 when the labelled series does not exist yet)."""
    status, content_type, body = server.get("/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.decode().splitlines():
        match = re.fullmatch(rf"{name}(?:{{(.*)}})? (\S+)", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def test_grid_and_zip_decode_and_match_the_generate_cli(server, tiny_run, tmp_path):
    status, content_type, body = server.get("/generate?n=9&seed=7&format=grid")
    assert status == 200 and content_type == "image/png"
    assert Image.open(io.BytesIO(body)).width >= 512  # a 3x3 grid, upscaled to be viewable

    status, content_type, body = server.get("/generate?n=5&seed=7&format=zip")
    assert status == 200 and content_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        names = sorted(archive.namelist())
        served = [np.asarray(Image.open(io.BytesIO(archive.read(name)))) for name in names]
    assert names == [f"{i:06d}.png" for i in range(5)]
    generate(tiny_run.package, 5, out_dir=tmp_path, seed=7)
    written = [np.asarray(Image.open(tmp_path / name)) for name in names]
    assert all(np.array_equal(a, b) for a, b in zip(served, written, strict=True))


def test_same_seed_same_bytes_and_truncation_changes_images(server):
    first, second = server.get("/generate?n=4&seed=11"), server.get("/generate?n=4&seed=11")
    assert first[0] == 200 and first[2] == second[2]
    assert server.get("/generate?n=4&seed=12")[2] != first[2]
    truncated = server.get("/generate?n=4&seed=11&truncation=0.3")
    assert truncated[0] == 200 and truncated[2] != first[2]


BAD_QUERIES = [
    "/generate?n=0", f"/generate?n={MAX_N + 1}", f"/generate?n={10**12}", "/generate?n=abc", "/generate?n=",
    "/generate?n=1e3", "/generate?seed=-1", "/generate?seed=1.5", "/generate?seed=abc", f"/generate?seed={2**63}",
    "/generate?format=gif", "/generate?truncation=0", "/generate?truncation=nan", "/generate?truncation=-1",
    "/generate?n=%ff%fe", "/generate?n=%zz", "/generate?&&=&n", "/nope", "/generate/x",
]


@pytest.mark.parametrize("query", BAD_QUERIES)
def test_bad_input_gets_a_4xx_json_error(server, query, reliability):
    reliability.bad_input()
    status, content_type, body = server.get(query)
    assert 400 <= status < 500, (query, status, body)
    assert content_type == "application/json" and json.loads(body)["error"]


def test_metrics_count_requests_and_images(server):
    ok = dict(endpoint="/generate", status="200")
    before = counter(server, "ganforge_http_requests_total", **ok), counter(server, "ganforge_images_generated_total")
    bad_before = counter(server, "ganforge_http_requests_total", endpoint="/generate", status="422")
    assert server.get("/generate?n=3&seed=1")[0] == 200
    assert server.get("/generate?n=0")[0] == 422
    assert counter(server, "ganforge_http_requests_total", **ok) == before[0] + 1
    assert counter(server, "ganforge_images_generated_total") == before[1] + 3
    assert counter(server, "ganforge_http_requests_total", endpoint="/generate", status="422") == bad_before + 1
    assert counter(server, "ganforge_http_request_duration_seconds_count", **ok) >= 1
    assert 'ganforge_model_info{' in server.get("/metrics")[2].decode()


def test_concurrent_requests_get_the_same_images_as_sequential_ones(server):
    sequential = {seed: server.get(f"/generate?n=8&seed={seed}&format=zip")[2] for seed in range(8)}
    seeds = [seed for seed in range(8) for _ in range(3)]  # 24 requests, 8 at a time
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda seed: server.get(f"/generate?n=8&seed={seed}&format=zip"), seeds))
    assert all(status == 200 for status, _, _ in answers)
    assert all(body == sequential[seed] for seed, (_, _, body) in zip(seeds, answers, strict=True))


def test_a_hundred_concurrent_requests_get_no_5xx_and_memory_stays_bounded(server, reliability):
    queries = [f"/generate?n=4&seed={i}" if i % 2 else BAD_QUERIES[i // 2 % len(BAD_QUERIES)] for i in range(100)]
    process = psutil.Process(server.process.pid)

    def burst() -> list[int]:
        with ThreadPoolExecutor(max_workers=100) as pool:
            return [status for status, _, _ in pool.map(server.get, queries)]

    rss = []
    for _ in range(3):
        statuses = burst()
        reliability.bad_input(len(queries) // 2)
        assert all(status == 200 if i % 2 else 400 <= status < 500 for i, status in enumerate(statuses)), statuses
        rss.append(process.memory_info().rss)
    assert server.process.poll() is None and server.get("/healthz")[0] == 200
    assert rss[2] - rss[1] < 32 * 2**20, f"server memory grew from burst to burst: {rss}"


def raw_get(server: Server, target: str) -> tuple[int, str, bytes]:
    """GET a request target exactly as given (urllib would refuse or re-quote odd ones)."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


_TEXT = st.characters(codec="utf-8")  # anything a URL can carry once percent-encoded
_KEYS = st.sampled_from(["n", "seed", "format", "truncation"]) | st.text(_TEXT, max_size=6)
_VALUES = (st.sampled_from(["1", "4", "0", "-1", "1e3", "nan", "inf", "grid", "zip", "", "%", "%zz", "%00"])
           | st.text(_TEXT, max_size=12) | st.integers().map(str) | st.floats().map(str))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/generate", "/healthz", "/metrics", "/"]) | st.text(_TEXT, max_size=10).map("/".__add__),
       pairs=st.lists(st.tuples(_KEYS, _VALUES), max_size=4), keep_escapes=st.booleans())
def test_fuzzed_requests_never_get_a_5xx(server, reliability, path, pairs, keep_escapes):
    safe = "%+" if keep_escapes else ""  # keeping '%' lets broken escapes such as %zz through unquoted
    query = "&".join(f"{quote(key, safe=safe)}={quote(value, safe=safe)}" for key, value in pairs)
    status, content_type, body = raw_get(server, quote(path, safe="/") + (f"?{query}" if query else ""))
    assert status < 500, (path, pairs, status, body[:300])
    if status >= 400:
        reliability.bad_input()
        assert content_type == "application/json" and json.loads(body)["error"]


def test_binds_to_loopback_by_default(server):
    listening = [c.laddr for c in psutil.Process(server.process.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening)


def test_refuses_a_tampered_package_before_serving(package_copy, reliability):
    reliability.bad_input()
    (package_copy / "config.json").write_text("{}")
    result = subprocess.run([sys.executable, "-m", "ganforge.cli", "serve", "--package", str(package_copy),
                             "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("config.json: sha256 does not match the manifest (modified or corrupt)")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None and os.environ.get("CI") != "true",
                    reason="Chromium is not installed (`make browser` installs Debian's chromium)")
def test_the_page_shows_a_grid_in_headless_chromium(server, tmp_path):
    assert _chromium(), "CI installs Chromium (`make browser`); it is missing"
    status, content_type, body = server.get("/")
    assert status == 200 and content_type.startswith("text/html") and b'id="grid"' in body
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom", server.url + "/"]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-loaded="(\d+)x(\d+)"', dom)
    assert loaded, dom[-2000:]
    assert int(loaded.group(1)) >= 512 and int(loaded.group(2)) >= 512  # the image decoded at its real size
