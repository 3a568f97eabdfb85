"""``ganforge serve``: a package behind HTTP (FastAPI on uvicorn).

    GET /generate?n=16&seed=7&format=grid|zip|npy[&truncation=0.7]   a PNG grid, a zip of PNGs, or the uint8 array
    GET /healthz                                                  liveness, and which model is loaded
    GET /metrics                                                  Prometheus text format
    GET /                                                         a page showing a fresh grid

Bad input (n outside 1..max_n, a seed that is not a non-negative integer, an unknown format) gets a 4xx
with a JSON error, never a 500. Requests are served concurrently; generation itself is serialised by a
lock, since every forward pass already uses all the cores. The server binds to loopback unless told otherwise.
It binds its socket before loading the package and hands that socket to uvicorn: a port in use, a host that
does not resolve or an address that is not this machine's is one line naming ``--port`` or ``--host``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import socket
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, Info, generate_latest

from ganforge import __version__
from ganforge.entry import EXIT_ENVIRONMENT_ERROR
from ganforge.errors import UserError
from ganforge.images import grid_image, npy_bytes, pil_image, png_bytes
from ganforge.latents import latents
from ganforge.packaging.package import GeneratorPackage, load_package

MAX_SEED = 2**31 - 1
_BACKLOG = 2048  # uvicorn's default
_ENDPOINTS = ("/", "/generate", "/healthz", "/metrics")
_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ganforge</title>
<style>body{{font-family:sans-serif;margin:2em}}
img{{image-rendering:pixelated;width:512px;border:1px solid #ccc}}</style>
</head><body>
<h1>ganforge generator</h1>
<p><code>{arch}</code> as <code>{variant}</code>, {resolution}×{resolution}, runtime {runtime}.
Seed <span id="seed">{seed}</span>.</p>
<p><img id="grid" alt="generated images" src="/generate?n={n}&amp;seed={seed}&amp;format=grid"
  onload="document.body.dataset.loaded = this.naturalWidth + 'x' + this.naturalHeight"
  onerror="document.body.dataset.loaded = 'error'"></p>
<button id="again" onclick="again()">New seed</button>
<script>
function again() {{
  const seed = Math.floor(Math.random() * {max_seed});
  document.getElementById('seed').textContent = seed;
  document.getElementById('grid').src = '/generate?n={n}&seed=' + seed + '&format=grid';
}}
</script>
</body></html>
"""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(package: GeneratorPackage, max_n: int = 256, default_truncation: float | None = None) -> FastAPI:
    """The HTTP app serving ``package``; ``max_n`` caps the images of one request."""
    app = FastAPI(title="ganforge", version=__version__, docs_url=None, redoc_url=None)
    metrics = _Metrics.register(package)
    _count_requests(app, metrics)
    _answer_errors_in_json(app)
    _add_generate_route(app, package, metrics.generated, max_n, default_truncation)
    _add_status_routes(app, package, metrics.registry, max_n)
    return app


@dataclass(frozen=True)
class _Metrics:
    """One app's Prometheus metrics, in a registry of its own."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    generated: Counter

    @classmethod
    def register(cls, package: GeneratorPackage) -> _Metrics:
        registry = CollectorRegistry()
        requests = Counter("ganforge_http_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                           registry=registry)
        latency = Histogram("ganforge_http_request_duration_seconds", "Request latency by endpoint and status",
                            ["endpoint", "status"], buckets=_LATENCY_BUCKETS_S, registry=registry)
        generated = Counter("ganforge_images_generated", "Images generated", registry=registry)
        Info("ganforge_model", "The loaded generator", registry=registry).info({
            "arch": package.spec.arch, "variant": package.recipe.variant, "model": package.model,
            "runtime": package.runtime, "resolution": str(package.spec.resolution),
            "channels": str(package.spec.channels), "ganforge_version": __version__})
        return cls(registry, requests, latency, generated)


def _count_requests(app: FastAPI, metrics: _Metrics) -> None:
    @app.middleware("http")
    async def record(request: Request, call_next):
        start = time.perf_counter()
        endpoint = request.url.path if request.url.path in _ENDPOINTS else "other"  # bounded label values
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.latency.labels(endpoint, str(status)).observe(time.perf_counter() - start)


def _answer_errors_in_json(app: FastAPI) -> None:
    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return _error(404, f"no such path: {request.url.path}")

    @app.exception_handler(405)
    async def wrong_method(request: Request, exc: Exception) -> JSONResponse:
        return _error(405, f"{request.method} is not allowed on {request.url.path}")

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return _error(422, f"{where}: {first.get('msg', 'invalid')}")


def _add_generate_route(app: FastAPI, package: GeneratorPackage, generated: Counter, max_n: int,
                        default_truncation: float | None) -> None:
    lock = threading.Lock()

    @app.get("/generate")
    def generate_images(
        n: Annotated[int, Query(description="number of images")] = 16,
        seed: Annotated[int, Query(ge=0, le=MAX_SEED, description="latent seed")] = 0,
        format: Annotated[Literal["grid", "zip", "npy"],
                          Query(description="a PNG grid, a zip of PNGs, or the (n, C, R, R) uint8 .npy")] = "grid",
        truncation: Annotated[float | None, Query(gt=0, allow_inf_nan=False, description="±psi")] = None,
    ) -> Response:
        if not 1 <= n <= max_n:
            return _error(422, f"n: expected an integer from 1 to {max_n}, got {n}")
        psi = truncation if truncation is not None else default_truncation
        z = latents(seed, 0, n, package.spec.z_dim, psi)  # (n, z_dim)
        with lock:  # one forward pass at a time: each already uses every core
            images = package.generate(z)  # (n, C, R, R) uint8
        generated.inc(n)
        if format == "grid":
            return Response(png_bytes(grid_image(images)), media_type="image/png")
        if format == "npy":  # no encoding: for clients that feed the images to other code
            return Response(npy_bytes(images), media_type="application/octet-stream",
                            headers={"Content-Disposition": f'attachment; filename="ganforge-seed{seed}-n{n}.npy"'})
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for i, image in enumerate(images):
                archive.writestr(zipfile.ZipInfo(f"{i:06d}.png", (1980, 1, 1, 0, 0, 0)), png_bytes(pil_image(image)))
        return Response(buffer.getvalue(), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="ganforge-seed{seed}-n{n}.zip"'})


def _add_status_routes(app: FastAPI, package: GeneratorPackage, registry: CollectorRegistry, max_n: int) -> None:
    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "arch": package.spec.arch, "variant": package.recipe.variant,
                "model": package.model, "runtime": package.runtime}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _PAGE.format(arch=package.spec.arch, variant=package.recipe.variant, resolution=package.spec.resolution,
                            runtime=package.runtime, seed=int(time.time()) % MAX_SEED, n=min(16, max_n),
                            max_seed=MAX_SEED)


def _bind_error(host: str, port: int, address: tuple, error: OSError) -> UserError:
    shown = host if host else repr(host)
    reason = error.strerror or str(error)
    if error.errno == errno.EADDRINUSE:
        return UserError(f"--port {port}: already in use on {address[0]} (stop what listens there, or choose "
                         "another port; --port 0 picks a free one)")
    if error.errno == errno.EACCES:
        hint = "; ports below 1024 need root or CAP_NET_BIND_SERVICE" if 0 < port < 1024 else ""
        return UserError(f"--port {port}: not allowed to listen on {address[0]} ({reason}{hint})")
    if error.errno == errno.EADDRNOTAVAIL:
        return UserError(f"--host {shown}: {address[0]} is not an address of this machine")
    return UserError(f"--host {shown} --port {port}: cannot listen on {address[0]} ({reason})")


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` (IPv4 or IPv6; port 0 picks a free one), for :func:`serve` to
    hand to uvicorn. A host that does not resolve, or an address or port that cannot be bound, is a
    :class:`UserError` naming ``--host`` or ``--port``."""
    shown = host if host else repr(host)
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"--host {shown}: does not resolve to an address ({e.strerror})") from None
    except (UnicodeError, ValueError) as e:  # the IDNA codec refuses labels that are empty or too long
        raise UserError(f"--host {shown}: not a valid host name ({e})") from None
    first_failure: tuple[tuple, OSError] | None = None
    for family, kind, proto, _, address in addresses:  # the resolver's order, as a client would try them
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart past TIME_WAIT
            sock.bind(address)
            sock.listen(_BACKLOG)
            return sock
        except OSError as e:
            sock.close()
            first_failure = first_failure or (address, e)
    assert first_failure is not None, addresses  # getaddrinfo answers with an address or raises
    raise _bind_error(host, port, *first_failure)


def serve(package_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, max_n: int = 256,
          runtime: str = "torch", truncation: float | None = None, model: str = "winner") -> None:
    """Bind ``host:port`` (:func:`bind`), load and verify the package, then serve it on that very socket until
    interrupted. Binding first refuses a busy port before the package is loaded."""
    sock = bind(host, port)
    try:
        package = load_package(package_dir, runtime, model)
        app = create_app(package, max_n, truncation)
        bound_host, bound_port = sock.getsockname()[:2]
        url_host = f"[{bound_host}]" if sock.family == socket.AF_INET6 else bound_host
        config = uvicorn.Config(app, host=bound_host, port=bound_port, log_level="warning", access_log=False,
                                backlog=_BACKLOG)
        server = uvicorn.Server(config)
        print(f"serving {package_dir} ({package.recipe.variant}, {runtime}) on http://{url_host}:{bound_port}/",
              flush=True)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server stops; uvicorn has shut down by now
            server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise SystemExit(EXIT_ENVIRONMENT_ERROR)  # uvicorn has logged why it could not start
