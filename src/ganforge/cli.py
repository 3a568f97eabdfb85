"""The ``ganforge`` command: use a generator package.

    ganforge generate --package dist/generator -n 1000 --out DIR [--grid FILE] [--seed S] [--batch B]
                      [--runtime torch|onnxruntime] [--truncation PSI] [--model winner|baseline]
    ganforge serve --package dist/generator [--host 127.0.0.1] [--port 8000] [--max-n 256]
    ganforge bench [--quick] [--results bench/results.json] [--doc docs/benchmarks.md]
    ganforge report --base REV [--out report] [--max-fid-increase 0.05] [--max-speed-drop 0.2]

``generate`` may run under ``torchrun --nproc_per_node=N``: the images are sharded across the ranks.
Bad arguments give a one-line error and exit code 2; ``report`` exits 1 when a budget is broken. Paths named
on the command line are checked before any work: an input that is missing or the wrong kind, or an output that
exists as the wrong kind (a file where a directory goes, or the reverse) or sits under a file, is refused.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ganforge.entry import ArgumentParser, run_main
from ganforge.files import check_input, check_outputs, read_json
from ganforge.packaging import MODELS, RUNTIMES  # torch loads only once a command runs

MAX_GRID_IMAGES = 4096  # ganforge.serving.generate.MAX_GRID_IMAGES, which imports torch; a test keeps them equal


def _int_in(minimum: int, maximum: int = 2**31 - 1):
    """An argparse type accepting integers in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"expected an integer from {minimum} to {maximum}, got {text!r}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _budget(text: str) -> float:
    """A budget fraction: any finite number (a negative one asks for an improvement; a NaN one would never be
    broken, an infinite one never kept)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _path(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def _check_paths(args: argparse.Namespace) -> None:
    """The up-front path checks of each command; ``generate`` checks its outputs itself (a library call gets
    the same checks), before its package loads."""
    if args.command in ("generate", "serve"):
        check_input(args.package, "dir", "--package", "package directory")
    elif args.command == "bench":
        check_input(args.repo, "dir", "--repo")
        if args.render:
            check_input(args.results, "file", "--results")
            check_outputs({"--doc": (args.doc, "file")}, inputs={"--results": args.results})
        else:
            doc = {} if args.no_doc else {"--doc": (args.doc, "file")}
            check_outputs({"--results": (args.results, "file"), **doc})
    elif args.command == "report":
        check_input(args.repo, "dir", "--repo")
        check_outputs({"--out": (args.out, "dir")})


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="ganforge", description="Use a ganforge generator package.")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="write images from a package (shards across torchrun ranks)")
    gen.add_argument("--package", required=True, type=_path, help="package directory, e.g. dist/generator")
    gen.add_argument("-n", "--num", type=_int_in(1), default=64, help="number of images (default 64)")
    gen.add_argument("--out", type=_path, help="directory for numbered PNG files (refused up front if the disk "
                     "has too little free space for them)")
    gen.add_argument("--grid", type=_path, help=f"write all images as one grid PNG; at most {MAX_GRID_IMAGES} "
                     "images (fewer above 64 px resolution): a larger -n is refused, not cut short")
    gen.add_argument("--seed", type=_int_in(0), default=0, help="latent seed (default 0)")
    gen.add_argument("--batch", type=_int_in(1), default=64, help="images per forward pass (default 64)")
    gen.add_argument("--runtime", choices=RUNTIMES, default="torch")
    gen.add_argument("--truncation", type=_positive_float, metavar="PSI",
                     help="latents from a normal truncated at ±PSI: less variety, more typical images")
    gen.add_argument("--model", choices=MODELS, default="winner",
                     help="the optimized winner, or the trained baseline if the package holds it")

    serve = commands.add_parser("serve", help="serve a package over HTTP")
    serve.add_argument("--package", required=True, type=_path, help="package directory, e.g. dist/generator")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    serve.add_argument("--port", type=_int_in(0, 65535), default=8000, help="TCP port (default 8000; 0: a free one)")
    serve.add_argument("--max-n", type=_int_in(1, 4096), default=256, help="largest n one request may ask for")
    serve.add_argument("--runtime", choices=RUNTIMES, default="torch")
    serve.add_argument("--truncation", type=_positive_float, metavar="PSI",
                       help="default truncation of requests that do not give one")
    serve.add_argument("--model", choices=MODELS, default="winner")

    bench = commands.add_parser("bench", help="measure this machine's ceilings and ganforge's speed, one command")
    bench.add_argument("--quick", action="store_true", help="fewer repeats, no full `dvc repro` (under 3 minutes)")
    bench.add_argument("--repo", default=".", type=_path, help="the ganforge checkout to measure (default: here)")
    bench.add_argument("--results", default="bench/results.json", type=_path, help="raw results JSON to write")
    bench.add_argument("--doc", default="docs/benchmarks.md", type=_path,
                       help="page whose generated tables are rewritten")
    bench.add_argument("--no-doc", action="store_true", help="only write the results JSON")
    bench.add_argument("--render", action="store_true", help="only rewrite the doc's tables from --results")
    bench.add_argument("--threads", type=_int_in(0, 1024), default=0, help="intra-op threads (default 0: all cores)")

    report = commands.add_parser("report", help="a pull-request report against a base revision, with a budget gate")
    report.add_argument("--base", required=True, help="git revision to compare the workspace with, e.g. main")
    report.add_argument("--repo", default=".", type=_path, help="the ganforge checkout (default: here)")
    report.add_argument("--out", default="report", type=_path,
                        help="directory for report.md, grids and plots/index.html")
    report.add_argument("--max-fid-increase", type=_budget, default=0.05, help="gate: allowed FID rise (0.05 = +5%%)")
    report.add_argument("--max-speed-drop", type=_budget, default=0.2, help="gate: allowed images/s fall (0.2 = -20%%)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()

    def run() -> None:
        args = parser.parse_args(argv)
        _check_paths(args)
        if args.command == "generate":
            from ganforge import distributed
            from ganforge.serving.generate import generate

            img_per_s = generate(args.package, args.num, args.out, args.grid, args.seed, args.batch, args.runtime,
                                 args.truncation, args.model)
            if distributed.is_main_process():
                where = ", ".join(str(p) for p in (args.out, args.grid) if p)
                print(f"generated {args.num} images at {img_per_s:.0f} img/s -> {where}")
        elif args.command == "bench":
            from ganforge.benchmarking.suite import render, run_bench

            if args.render:
                render(read_json(args.results), Path(args.repo).resolve(), Path(args.doc), args.results)
                print(f"bench: {args.doc} rewritten from {args.results}")
                return
            results = run_bench(args.repo, args.quick, args.results, None if args.no_doc else args.doc, args.threads)
            print(f"bench: done in {results['wall_s']:.0f} s -> {args.results}"
                  + ("" if args.no_doc else f", {args.doc}"))
        elif args.command == "report":
            from ganforge.reporting.report import Budget, write_report

            path, broken = write_report(args.repo, args.base, args.out,
                                        Budget(args.max_fid_increase, args.max_speed_drop))
            print(path.read_text())
            if broken:
                print(f"ganforge report: {len(broken)} budget(s) broken (see {path})", file=sys.stderr)
                raise SystemExit(1)
        else:
            from ganforge.serving.server import serve

            serve(args.package, args.host, args.port, args.max_n, args.runtime, args.truncation, args.model)

    run_main(run, "ganforge")


if __name__ == "__main__":
    main()
