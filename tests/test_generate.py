"""ganforge generate: truncation, sharding under torchrun, and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ganforge import cli
from ganforge.latents import latents, truncate

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
    (["--out", "{file}/sub"], "--out {file}/sub: not writable"),
    (["--package", "{missing}"], "{missing}: package directory not found"),
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
    assert fill(message) in lines[-1]
    assert not any("Traceback" in line for line in lines)
