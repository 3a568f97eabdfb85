"""ganforge serve: a real server on a free loopback port, real HTTP requests, the page in a real browser, and
one-line refusals of ports and hosts it cannot listen on."""

from __future__ import annotations

import errno
import http.client
import io
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
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

from ganforge import cli
from ganforge.serving import server as server_module
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


def start_server(package: Path, *extra: str, host: str = "127.0.0.1") -> Server:
    """``ganforge serve`` on a port the server picks itself (``--port 0``), at the URL its start-up line gives."""
    cmd = [sys.executable, "-m", "ganforge.cli", "serve", "--package", str(package), "--host", host, "--port", "0",
           *extra]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:  # read all output, so a chatty server never blocks on a full pipe
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    seen = []
    while True:
        try:
            line = lines.get(timeout=120)  # a safety net only: the server's own line ends the wait
        except queue.Empty:
            process.kill()
            raise AssertionError(f"server printed no start-up line within 120 s: {''.join(seen)}") from None
        if line is None:
            raise AssertionError(f"server exited with {process.wait()}: {''.join(seen)}")
        seen.append(line)
        if match := re.fullmatch(r"serving .* on (http://\S+)/", line.strip()):
            break
    server = Server(match.group(1), process)
    # The socket listened before that line was printed, so this waits for uvicorn rather than racing it.
    assert server.get("/healthz")[0] == 200
    return server


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


def test_grid_zip_and_npy_decode_and_match_the_generate_cli(server, tiny_run, tmp_path):
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

    status, content_type, body = server.get("/generate?n=5&seed=7&format=npy")
    assert status == 200 and content_type == "application/octet-stream"
    array = np.load(io.BytesIO(body), allow_pickle=False)
    assert array.dtype == np.uint8 and array.shape[0] == 5
    assert all(np.array_equal(image.transpose(1, 2, 0).squeeze(-1) if image.shape[0] == 1 else image.transpose(1, 2, 0),
                              png) for image, png in zip(array, written, strict=True))


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
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=60)
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
                             "--port", "0"], capture_output=True, text=True, timeout=120)
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


def _serve_refused(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                   *args: str) -> tuple[int, list[str]]:
    """``ganforge serve ARGS`` in this process, where loading the package or starting uvicorn fails the test (the
    refusal must come first): the exit code and the stderr lines."""
    def started(*args, **kwargs):
        raise AssertionError("serve got past binding its socket")

    monkeypatch.setattr(server_module, "load_package", started)
    monkeypatch.setattr(server_module.uvicorn.Server, "run", started)
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--package", str(tmp_path), *args])
    return exited.value.code, capsys.readouterr().err.strip().splitlines()


def test_serve_refuses_a_port_in_use_in_one_line(tmp_path, capsys, monkeypatch, reliability):
    reliability.bad_input()
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        port = occupant.getsockname()[1]
        code, lines = _serve_refused(tmp_path, capsys, monkeypatch, "--port", str(port))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"ganforge: error: --port {port}: already in use on 127.0.0.1"), lines


@pytest.mark.parametrize(("args", "message"), [
    (["--host", "no-such-host.invalid"], "--host no-such-host.invalid: does not resolve to an address"),  # RFC 2606
    (["--host", "192.0.2.1"], "--host 192.0.2.1: 192.0.2.1 is not an address of this machine"),  # RFC 5737
    (["--host", "a..b"], "--host a..b: not a valid host name"),
    (["--host", ""], "--host '': does not resolve to an address"),
    (["--port", "80"], "--port 80: not allowed to listen on 127.0.0.1 (Permission denied; ports below 1024 need"),
])
def test_serve_refuses_hosts_and_ports_it_cannot_listen_on(tmp_path, capsys, monkeypatch, reliability, args, message):
    if args == ["--port", "80"]:
        # Root may listen on port 80, so the kernel's refusal of an unprivileged user is injected.
        reliability.fault()

        def refuse(sock, address):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(socket.socket, "bind", refuse)
    else:
        reliability.bad_input()
    code, lines = _serve_refused(tmp_path, capsys, monkeypatch, *args)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"ganforge: error: {message}"), lines


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_serves_on_ipv6_loopback(tiny_run):
    server = start_server(tiny_run.package, host="::1")
    try:
        assert server.url.startswith("http://[::1]:")
        status, _, body = server.get("/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        listening = [c.laddr for c in psutil.Process(server.process.pid).net_connections(kind="inet6")
                     if c.status == psutil.CONN_LISTEN]
        assert [addr.ip for addr in listening] == ["::1"]
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)
