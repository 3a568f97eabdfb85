"""ganforge generate: truncation, sharding under torchrun, bounded grids and disk use, and one-line errors with
exit code 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ganforge import cli
from ganforge.images import grid_image, grid_size_px, pil_image, png_bytes, png_size_bound, save_grid
from ganforge.latents import latents, truncate
from ganforge.serving import generate as generate_module
from ganforge.serving.generate import MAX_GRID_IMAGES, shard

CLI = [sys.executable, "-m", "ganforge.cli", "generate"]


def _generate(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """``ganforge generate ARGS`` run in this process, through the same ``main`` the command runs (without a new
    interpreter loading torch each time): its exit code and what it wrote to stderr."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["generate", *args])
    return exited.value.code, capsys.readouterr().err


def test_truncated_latents_stay_within_psi_and_keep_their_place():
    plain, truncated = latents(5, 0, 4096, 8), latents(5, 0, 4096, 8, psi=0.7)
    assert truncated.abs().max() <= 0.7 and truncated.std() < plain.std()
    # Monotone map of each draw: image i's latent moves toward the centre, keeping its sign and rank.
    assert torch.equal(torch.sign(truncated), torch.sign(plain))
    assert torch.equal(plain[:, 0].argsort(), truncated[:, 0].argsort())
    assert torch.allclose(truncate(plain, 50.0), plain, atol=1e-5)  # a wide truncation changes nothing
    assert torch.equal(latents(5, 100, 50, 8, psi=0.7), truncated[100:150])


def test_truncation_changes_images_deterministically(tiny_run, tmp_path, capsys):
    for name, extra in [("a", ["--truncation", "0.5"]), ("b", ["--truncation", "0.5"]), ("c", [])]:
        code, err = _generate(capsys, "--package", str(tiny_run.package), "-n", "8", "--out", str(tmp_path / name),
                              *extra)
        assert code == 0 and "img/s" in err  # tqdm's progress bar with images/s
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(files) == 8
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)


@pytest.mark.slow
def test_torchrun_shards_byte_identical_to_one_process(tiny_run, tmp_path):
    args = ["--package", str(tiny_run.package), "-n", "37", "--batch", "5", "--seed", "3"]
    single = subprocess.run([*CLI, *args, "--out", str(tmp_path / "one"), "--grid", str(tmp_path / "one.png")],
                            capture_output=True, text=True, timeout=180)
    assert single.returncode == 0, single.stderr
    sharded = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ganforge.cli",
         "generate", *args, "--out", str(tmp_path / "two"), "--grid", str(tmp_path / "two.png")],
        capture_output=True, text=True, timeout=300)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    one, two = sorted((tmp_path / "one").iterdir()), sorted((tmp_path / "two").iterdir())
    assert [p.name for p in one] == [p.name for p in two] == [f"{i:06d}.png" for i in range(37)]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two, strict=True))
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()


@pytest.mark.parametrize(("args", "message"), [
    (["-n", "0"], "argument -n/--num: expected an integer from 1 to"),
    (["--batch", "x"], "argument --batch: expected an integer"),
    (["--truncation", "0"], "argument --truncation: expected a positive number"),
    (["--out", "{file}/sub"], "--out {file}/sub: {file} is a file, not a directory"),
    (["--package", "{missing}"], "--package {missing}: package directory not found"),
    (["--package", "{file}"], "--package {file}: is a file, expected a package directory"),
    ([], "give --out DIR for PNG files, --grid FILE for one grid, or both"),
])
def test_bad_arguments_give_one_line_and_exit_2(tiny_run, tmp_path, capsys, args, message, reliability):
    reliability.bad_input()
    a_file, missing = tmp_path / "a-file", tmp_path / "no-package"
    a_file.write_text("x")
    fill = lambda text: text.format(file=a_file, missing=missing)  # noqa: E731
    package = [] if "--package" in args else ["--package", str(tiny_run.package)]
    out = [] if args in ([],) or "--out" in args else ["--out", str(tmp_path / "out")]
    code, err = _generate(capsys, *package, *out, *map(fill, args))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fill(message) in lines[0], lines


@settings(max_examples=200, deadline=None)
@given(count=st.integers(1, 300), batch=st.integers(1, 40), world=st.integers(1, 5))
def test_shards_cover_every_image_once(count, batch, world):
    seen = []
    for rank in range(world):
        firsts, mine = shard(count, batch, world, rank)
        images = [i for first in firsts for i in range(first, min(first + batch, count))]
        assert mine == len(images)
        seen += images
    assert sorted(seen) == list(range(count))


def test_shards_of_the_largest_count_are_lazy():
    firsts, mine = shard(2**31 - 1, 1, 3, 2)  # as a list, 2**31 batch starts would take tens of GiB
    assert isinstance(firsts, range) and mine == len(firsts) == (2**31 - 1) // 3
    assert firsts[-1] == 2**31 - 3  # the last index of the form 3k + 2


@settings(max_examples=60, deadline=None)
@given(count=st.integers(1, 40), resolution=st.integers(1, 9), channels=st.sampled_from([1, 3]),
       min_width=st.sampled_from([0, 64, 512]))
def test_grid_size_and_png_bound_match_what_is_written(tmp_path_factory, count, resolution, channels, min_width):
    noise = torch.randint(0, 256, (count, channels, resolution, resolution), dtype=torch.uint8)  # incompressible
    image = grid_image(noise, min_width)
    assert image.size == grid_size_px(count, resolution, min_width)
    path = tmp_path_factory.mktemp("grid") / "grid.png"
    save_grid(noise, path, min_width)
    assert path.stat().st_size <= png_size_bound(*image.size, 3)  # make_grid draws greyscale as RGB
    single = png_bytes(pil_image(noise[0]))
    assert len(single) <= png_size_bound(resolution, resolution, channels)


def test_disk_estimate_covers_the_pngs_written(tiny_run, tmp_path, capsys, monkeypatch):
    seen = {}
    real = generate_module.check_free_space
    monkeypatch.setattr(generate_module, "check_free_space", lambda outputs: (seen.update(outputs), real(outputs)))
    code, _ = _generate(capsys, "--package", str(tiny_run.package), "-n", "20", "--out", str(tmp_path / "out"))
    assert code == 0
    _, files, file_bytes, _ = seen["--out"]
    written = sorted((tmp_path / "out").iterdir())
    assert files == len(written) == 20
    assert all(p.stat().st_size <= file_bytes for p in written)


def _no_generation(monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    """Make ``stage`` (``load`` or ``generate``) fail the test if the command gets that far."""
    def started(*args, **kwargs):
        raise AssertionError(f"{stage} started; the refusal should have come first")

    if stage == "load":
        monkeypatch.setattr(generate_module, "load_package", started)
    else:
        monkeypatch.setattr(generate_module, "latents", started)


@pytest.mark.parametrize("args", [["-n", "4097"], ["-n", "2147483647", "--batch", "1"],
                                  ["-n", "2147483647", "--batch", "1", "--out", "{tmp}/out"]])
def test_an_oversized_grid_is_refused_before_the_package_loads(tmp_path, capsys, monkeypatch, reliability, args):
    reliability.bad_input()
    _no_generation(monkeypatch, "load")
    (tmp_path / "pkg").mkdir()
    code, err = _generate(capsys, "--package", str(tmp_path / "pkg"), "--grid", str(tmp_path / "grid.png"),
                          *(a.format(tmp=tmp_path) for a in args))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert f"--grid: at most {MAX_GRID_IMAGES} images in one grid" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_a_grid_over_the_pixel_limit_is_refused_before_generating(tiny_run, tmp_path, capsys, monkeypatch,
                                                                   reliability):
    reliability.bad_input()
    _no_generation(monkeypatch, "generate")
    monkeypatch.setattr(generate_module, "MAX_GRID_PIXELS", 300_000)  # the tiny package is 16 px; 2**25 binds at 128
    code, err = _generate(capsys, "--package", str(tiny_run.package), "-n", "1100", "--grid", str(tmp_path / "g.png"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    # 34 × 33 cells of 17 px (padding included) + 1 px; 32 × 32 cells (545² px) is the largest grid that fits.
    assert "1100 images of 16×16 make a 579×562 px grid, over the 300,000 px limit; at most 1024 images" in lines[0]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("free", "args", "named"), [
    (10_000, ["-n", "100", "--out", "{tmp}/out"], "--out {tmp}/out (100 PNGs of 16×16×1)"),
    (None, ["-n", "2147483647", "--batch", "1", "--out", "{tmp}/out"], "--out {tmp}/out (2,147,483,647 PNGs"),
    (10_000, ["-n", "4", "--out", "{tmp}/out", "--grid", "{tmp}/g.png"],
     "--out {tmp}/out (4 PNGs of 16×16×1) and --grid {tmp}/g.png (a 525×525 PNG)"),  # 35 px upscaled 15×
])
def test_too_little_disk_space_is_refused_before_writing(tiny_run, tmp_path, capsys, monkeypatch, reliability, free,
                                                         args, named):
    reliability.bad_input()
    _no_generation(monkeypatch, "generate")  # 2**31 images would fit no disk; if one did, fail instead of filling it
    if free is not None:
        usage = shutil.disk_usage(tmp_path)._replace(free=free)
        monkeypatch.setattr(generate_module.shutil, "disk_usage", lambda path: usage)
    fill = lambda text: text.format(tmp=tmp_path)  # noqa: E731
    code, err = _generate(capsys, "--package", str(tiny_run.package), *map(fill, args))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert fill(named) in lines[0] and "needs up to" in lines[0] and "is free there" in lines[0]
    if free is not None:
        assert lines[0].endswith(f"but only {free / 1024:.1f} KiB is free there")
    assert not list(tmp_path.iterdir())


# Per flag: values that work, then values that do not (or ask for too much); about 5 in 6 draws are ones that work.
_ARGS = {
    "-n": (["1", "3", "17"], ["0", "-2", "x", "300", "4097", "2147483647", "2147483648"]),
    "--batch": (["1", "2", "2147483647"], ["0", "1.5", "-1"]),
    "--seed": (["0", "7", "2147483647"], ["-1", "2147483648", "seven"]),
    "--truncation": (["0.5", "3", "1e-300"], ["0", "-1", "nan", "inf", "x"]),
    "--runtime": (["torch", "onnxruntime"], ["tensorflow"]),
    "--model": (["winner", "baseline"], ["best"]),
}


def _weighted(good: list, bad: list) -> st.SearchStrategy:
    return st.sampled_from(good * max(1, 5 * len(bad) // len(good)) + bad)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=st.fixed_dictionaries({}, optional={flag: _weighted(*values) for flag, values in _ARGS.items()}),
       out=_weighted(["new", "dir"], [None, "file", "under-file", "empty"]),
       grid=_weighted([None, "new", "file"], ["dir", "under-file", "empty"]))
def test_fuzzed_generate_arguments_succeed_or_fail_in_one_line(tiny_run, tmp_path, capsys, monkeypatch, reliability,
                                                               options, out, grid):
    # 4 MiB free: hundreds of 16 px PNGs fit (4 KiB each on disk), thousands do not, so none are written.
    usage = shutil.disk_usage(tmp_path)._replace(free=4 << 20)
    monkeypatch.setattr(generate_module.shutil, "disk_usage", lambda path: usage)
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    (work / "dir").mkdir()
    (work / "file").write_bytes(b"x")
    paths = {"new": work / "new", "dir": work / "dir", "file": work / "file", "under-file": work / "file" / "x",
             "empty": ""}
    args = [arg for flag, value in options.items() for arg in (flag, value)]
    args += ["--out", str(paths[out])] if out else []
    args += ["--grid", str(paths[grid] if grid != "new" else work / "grid.png")] if grid else []
    code, err = _generate(capsys, "--package", str(tiny_run.package), *args)
    assert code in (0, 2), (args, err[-2000:])
    if code == 2:
        reliability.bad_input()
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ganforge: error: "), (args, lines)
        return
    count = int(options.get("-n", "64"))
    if out:
        assert len(list(paths[out].glob("*.png"))) == count
    if grid:
        assert Image.open(paths[grid] if grid != "new" else work / "grid.png").width >= 512
