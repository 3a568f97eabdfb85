"""The train stage's library function: G and D trained for a budget in kimg, on 1..N torchrun processes.

Every rank builds the same initial weights (seeded by the base seed), draws its own latents and
augmentations (seeded by base seed and rank), takes its share of each global batch, and averages
gradients with the others before each optimizer step, so weights stay identical on all ranks. Rank 0
alone logs, scores, checkpoints and writes the outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dvclive import Live
from tqdm import tqdm

from ganforge.config import TrainConfig, config_to_dict
from ganforge.contracts import BEST_GENERATOR, CHECKPOINT, LAST_GENERATOR
from ganforge.data.augment import AdaptiveProbability, DiffAugment
from ganforge.data.prepared import PreparedSplit, load_split, read_manifest
from ganforge.data.stream import BatchStream
from ganforge.distributed import (
    all_gather_float,
    broadcast_state,
    gather_all,
    gather_to_main,
    is_main_process,
    process_group,
    rank,
    rank_seed,
    resolve_device,
    scatter_from_main,
    sync_gradients,
    world_size,
)
from ganforge.errors import Interrupted, UserError
from ganforge.files import atomic_dir, write_json
from ganforge.models import GeneratorSpec, build_discriminator, build_generator, save_generator
from ganforge.training.checkpoint import (
    capture_rng,
    load_latest_checkpoint,
    restore_rng,
    save_checkpoint,
)
from ganforge.training.ema import GeneratorEMA
from ganforge.training.losses import PAIRED_LOSSES, discriminator_loss, generator_loss, gradient_penalty
from ganforge.training.monitor import InLoopFID, SampleGrid
from ganforge.training.schedule import lr_scheduler


@dataclass(frozen=True)
class TrainResult:
    """Summary of a finished run."""

    cur_nimg: int
    steps: int
    train_img_per_s: float
    loss_d: float
    loss_g: float
    best_fid: float | None
    best_kimg: float | None


# Called after each step: (training minutes over every resume, images shown, EMA generator, its spec).
StepObserver = Callable[[float, int, torch.nn.Module, GeneratorSpec], None]

# Params that may change between an interrupted run and its resumption without invalidating the state.
_RESUMABLE_CHANGES = ("kimg", "nproc", "device", "collective_timeout_s", "log_interval_kimg", "checkpoint_kimg",
                      "snapshot_kimg", "fid_interval_kimg", "fid_samples")
_SLOW_RANK_FACTOR = 1.5  # a rank whose compute time per step exceeds the median by this factor is reported


def train(cfg: TrainConfig, data_dir: str | Path, out_dir: str | Path, live_dir: str | Path,
          featurizer_path: str | Path | None = None, time_limit_s: float | None = None,
          on_step: StepObserver | None = None) -> TrainResult:
    """Train G and D for ``cfg.kimg`` thousand real images; write generators and a checkpoint to ``out_dir``.

    ``out_dir`` receives ``generator.safetensors`` + ``.json`` (the last EMA generator),
    ``generator-best.safetensors`` + ``.json`` (the EMA generator with the best in-loop FID, when it is
    measured), ``checkpoint.pt`` (full training state, also written every ``cfg.checkpoint_kimg``) and
    ``train.json``. If ``out_dir`` holds an unfinished checkpoint of the same params and data, training
    resumes from it and, on CPU with the same process count, ends bit-identical to an uninterrupted run.
    Metrics and sample grids go to dvclive in ``live_dir``.

    Args:
        featurizer_path: the featurizer stage's weights, needed when ``cfg.fid_interval_kimg`` > 0.
        time_limit_s: stop after this much training time and write the outputs as at the end (benchmarks
            that compare architectures at equal wall time use it; single process only).
        on_step: called on the main process after every step with the training minutes so far, the images
            shown, the EMA generator and its spec (a benchmark keeps generators along the way with it).
    """
    device = resolve_device(cfg.device)
    try:
        with process_group(device, cfg.collective_timeout_s), contextlib.ExitStack() as cleanup:
            return _train(cfg, Path(data_dir), Path(out_dir), Path(live_dir), featurizer_path, time_limit_s, device,
                          cleanup, on_step)
    except KeyboardInterrupt:
        raise Interrupted(f"training interrupted; {_kept_checkpoint(Path(out_dir) / CHECKPOINT)}") from None


def _train(cfg: TrainConfig, data_dir: Path, out_dir: Path, live_dir: Path, featurizer_path: str | Path | None,
           time_limit_s: float | None, device: torch.device, cleanup: contextlib.ExitStack,
           on_step: StepObserver | None) -> TrainResult:
    run = _Run(cfg, data_dir, out_dir, featurizer_path, time_limit_s, device)
    run.resume()
    run.open_log(live_dir, cleanup)
    step = run.first_step
    while step < run.total_steps:
        step_start = time.perf_counter()
        real, z = run.batch()  # (b, C, R, R) in [-1, 1] and (b, z_dim), b = batch_size / world
        # D step on real vs detached fake, then a G step against the updated D. Both see the same
        # augmentation family, so D cannot tell reals from fakes by the augmentation.
        fake, d_stats, waited_s = run.d_step(step, real, z)
        loss_r1, r1_waited_s = run.regularise(step, real, fake)
        loss_g, g_waited_s = run.g_step(step, real, fake)

        step += 1
        if time_limit_s is not None and time.perf_counter() - run.start >= time_limit_s:
            run.out_of_time, run.total_steps = True, step  # stop here and write the outputs as at the end
        run.window.add(d_stats, loss_r1, loss_g, time.perf_counter() - step_start,
                       waited_s + r1_waited_s + g_waited_s)
        run.progress.update(round(step * cfg.batch_size / 1000, 3) - run.progress.n)
        if on_step is not None and run.main:
            on_step(run.trained_s() / 60, step * cfg.batch_size, run.ema.average, run.spec)
        run.log(step)
        if step % run.checkpoint_every == 0 and step != run.total_steps:
            run.checkpoint(step)
    return run.finish()


class _Run:
    """One run's state on this rank: networks, optimizers, data and random streams, and rank 0's log,
    in-loop FID and checkpoints. The methods are the pieces of :func:`_train`'s loop, in its order."""

    def __init__(self, cfg: TrainConfig, data_dir: Path, out_dir: Path, featurizer_path: str | Path | None,
                 time_limit_s: float | None, device: torch.device) -> None:
        self.cfg, self.out_dir, self.device = cfg, out_dir, device
        self.world, self.main = world_size(), is_main_process()
        split = load_split(data_dir, "train")
        if cfg.batch_size % self.world:
            raise UserError(f"train.batch_size: {cfg.batch_size} does not split evenly over {self.world} processes")
        if len(split) < cfg.batch_size:
            raise UserError(f"train.batch_size: {cfg.batch_size} exceeds the {len(split)} training images")
        assert time_limit_s is None or self.world == 1, "time_limit_s is for single-process benchmarks"
        self.spec = GeneratorSpec(cfg.arch, cfg.z_dim, split.resolution, split.channels, cfg.width)
        manifest = read_manifest(data_dir)
        self.fingerprint = {"params": {k: v for k, v in config_to_dict(cfg).items() if k not in _RESUMABLE_CHANGES},
                            "data": {"source_hash": manifest["source_hash"], "counts": manifest["counts"]}}
        if cfg.fid_interval_kimg and featurizer_path is None:
            raise UserError("train.fid_interval_kimg: the in-loop FID needs the featurizer stage's weights")
        self.fid = (InLoopFID(featurizer_path, split, cfg.fid_samples, cfg.seed)
                    if self.main and cfg.fid_interval_kimg else None)
        self._build(split)
        self.checkpoint_path = out_dir / CHECKPOINT
        self.log_every = _every(cfg.log_interval_kimg, cfg.batch_size)
        self.checkpoint_every = _every(cfg.checkpoint_kimg, cfg.batch_size)
        self.grad_norm_d = self.grad_norm_g = None  # measured on the steps that a log line follows
        self.out_of_time = False

    def _build(self, split: PreparedSplit) -> None:
        cfg, device = self.cfg, self.device
        # The same initial weights on every rank (base seed); then per-rank streams for latents and augmentation.
        torch.manual_seed(cfg.seed)
        memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.generator = generator = build_generator(self.spec).to(device, memory_format=memory_format).train()
        self.discriminator = discriminator = build_discriminator(
            cfg.arch, self.spec.resolution, self.spec.channels, cfg.width, cfg.d_spectral_norm,
            cfg.d_batchnorm).to(device, memory_format=memory_format)
        broadcast_state(generator, discriminator)
        self.ema = GeneratorEMA(generator, cfg.ema_kimg, cfg.ema_rampup)
        self.seed = seed = rank_seed(cfg.seed)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        self.latent_rng = torch.Generator().manual_seed(seed + 3)

        self.total_steps = total_steps = math.ceil(cfg.kimg * 1000 / cfg.batch_size)
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr * cfg.d_lr_ratio,
                                      betas=(cfg.beta1, cfg.beta2))
        warmup_steps = round(cfg.warmup_kimg * 1000 / cfg.batch_size)
        self.sched_g = lr_scheduler(self.opt_g, cfg.lr_schedule, warmup_steps, total_steps)
        self.sched_d = lr_scheduler(self.opt_d, cfg.lr_schedule, warmup_steps, total_steps)
        self.reals = BatchStream(split, cfg.batch_size, seed=cfg.seed + 1, rank=rank(), world_size=self.world)
        ada = AdaptiveProbability(cfg.ada_target, cfg.ada_kimg) if cfg.ada_target > 0 and cfg.augment else None
        self.ada = ada
        self.augment = DiffAugment(cfg.augment_policy, seed=seed + 2, p=0.0 if ada else 1.0, device=device)
        self.shared = {"generator": generator, "discriminator": discriminator, "generator_ema": self.ema.average,
                       "opt_g": self.opt_g, "opt_d": self.opt_d, "sched_g": self.sched_g, "sched_d": self.sched_d,
                       "reals": self.reals, **({"ada": ada} if ada else {})}
        bf16 = cfg.precision == "bf16"
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        self.d_params, self.g_params = list(discriminator.parameters()), list(generator.parameters())

    def rank_state(self) -> dict[str, Any]:
        return {"rng": capture_rng(), "latents": self.latent_rng.get_state(), "augment": self.augment.state_dict()}

    def load_rank_state(self, state: dict[str, Any] | None, step: int) -> None:
        if state is None:  # the checkpoint came from another process count: fresh streams for this step
            torch.manual_seed(self.seed + step)
            self.latent_rng.manual_seed(self.seed + 3 + step)
            self.augment.generator.manual_seed(self.seed + 2 + step)
            return
        restore_rng(state["rng"])
        self.latent_rng.set_state(state["latents"])
        self.augment.load_state_dict(state["augment"])

    def resume(self) -> None:
        self.first_step, self.best, progress_so_far = _resume(self.checkpoint_path, self.fingerprint,
                                                              self.total_steps, self.shared, self.load_rank_state)
        # The in-loop FID curve and the training seconds before this run, both carried across a resume.
        self.curve: list[dict[str, float]] = progress_so_far["curve"]
        self.trained_before_s: float = progress_so_far["trained_s"]
        if self.ada is not None:
            self.augment.p = self.ada.p

    def open_log(self, live_dir: Path, cleanup: contextlib.ExitStack) -> None:
        """dvclive, the sample grid and the progress bar on rank 0, and the clock, just before the first step."""
        cfg, main, first_step = self.cfg, self.main, self.first_step
        self.live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, resume=first_step > 0) if main else None
        if self.live is not None and first_step == 0:
            self.live.log_params(config_to_dict(cfg) | {"world_size": self.world, "device": str(self.device)})
        self.grid = SampleGrid(self.spec.z_dim, 64, cfg.seed) if main and cfg.snapshot_kimg else None
        self.window = _Window()
        self.progress = cleanup.enter_context(tqdm(  # closed before an interrupt's message is printed
            total=round(self.total_steps * cfg.batch_size / 1000, 3),
            initial=round(first_step * cfg.batch_size / 1000, 3), unit="kimg", desc="train", disable=not main,
            mininterval=1.0,
            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} kimg [{elapsed}<{remaining}{postfix}]"))
        self.start = time.perf_counter()

    def trained_s(self) -> float:  # wall seconds of training since step 0, over every resume
        return self.trained_before_s + time.perf_counter() - self.start

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        real = next(self.reals).to(self.device, non_blocking=True)  # (b, C, R, R) in [-1, 1], b = batch_size / world
        if self.cfg.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        z = torch.randn(real.shape[0], self.spec.z_dim, generator=self.latent_rng).to(self.device)  # (b, z_dim)
        return real, z

    def d_step(self, step: int, real: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """D on real vs detached fake; returns the fake, D's all-rank stats and the seconds spent waiting."""
        cfg, discriminator = self.cfg, self.discriminator
        with self.autocast:
            fake = self.generator(z)  # (b, C, R, R)
            real_logits = discriminator(self.augment(real)).float()  # (b,)
            fake_logits = discriminator(self.augment(fake.detach())).float()  # (b,)
        loss_d = discriminator_loss(cfg.loss, real_logits, fake_logits)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        d_stats, waited_s = sync_gradients(self.d_params, loss_d, real_logits.mean(), fake_logits.mean(),
                                           real_logits.sign().mean())
        _check_finite("loss_d", d_stats[0], step, cfg.batch_size, self.checkpoint_path)
        self.grad_norm_d = _grad_norm(self.d_params) if (step + 1) % self.log_every == 0 else None
        self.opt_d.step()
        if self.ada is not None:
            self.ada.observe(float(d_stats[3]), cfg.batch_size)
            self.augment.p = self.ada.p
        return fake, d_stats, waited_s

    def regularise(self, step: int, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The D penalties every ``r1_interval`` steps; returns their sum (zero between) and the wait."""
        cfg = self.cfg
        if not ((cfg.r1_gamma > 0 or cfg.r2_gamma > 0) and step % cfg.r1_interval == 0):
            return torch.zeros(()), 0.0
        # Lazy R1 on reals and R2 on fakes, scaled by the interval to match; logged together as loss_r1.
        penalised = [(gamma, x.detach().float().requires_grad_(True))  # fakes are bf16 under autocast
                     for gamma, x in ((cfg.r1_gamma, real), (cfg.r2_gamma, fake)) if gamma > 0]
        loss_r1 = sum(gamma / 2 * cfg.r1_interval * gradient_penalty(self.discriminator(self.augment(x)).float(), x)
                      for gamma, x in penalised)
        self.opt_d.zero_grad(set_to_none=True)
        loss_r1.backward()
        (loss_r1,), waited_s = sync_gradients(self.d_params, loss_r1)
        _check_finite("loss_r1", loss_r1, step, cfg.batch_size, self.checkpoint_path)
        self.opt_d.step()
        return loss_r1, waited_s

    def g_step(self, step: int, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, float]:
        """G against the updated D, then the schedules and the EMA; returns G's all-rank loss and the wait."""
        cfg, discriminator = self.cfg, self.discriminator
        discriminator.requires_grad_(False)  # the G step needs gradients through D, not for D's weights
        with self.autocast:
            fake_logits_g = discriminator(self.augment(fake)).float()  # (b,)
            # The paired loss compares each fake with a real under the updated D (no gradient to anything).
            real_logits_g = discriminator(self.augment(real)).float() if cfg.loss in PAIRED_LOSSES else None
        discriminator.requires_grad_(True)
        loss_g = generator_loss(cfg.loss, fake_logits_g, real_logits_g)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        (loss_g,), waited_s = sync_gradients(self.g_params, loss_g)
        _check_finite("loss_g", loss_g, step, cfg.batch_size, self.checkpoint_path)
        self.grad_norm_g = _grad_norm(self.g_params) if (step + 1) % self.log_every == 0 else None
        self.opt_g.step()
        self.sched_g.step()
        self.sched_d.step()
        self.ema.update(self.generator, cfg.batch_size, (step + 1) * cfg.batch_size)
        return loss_g, waited_s

    def log(self, step: int) -> None:
        """After ``step`` steps: the window's means every ``log_every`` steps and at the last, with a sample
        grid and the in-loop FID when they are due (rank 0 alone logs; every rank joins the collective)."""
        cfg, cur_nimg, last = self.cfg, step * self.cfg.batch_size, step == self.total_steps
        snapshot_due = self.grid is not None and (_crossed(cfg.snapshot_kimg, cur_nimg, cfg.batch_size) or last)
        fid_due = self.fid is not None and (_crossed(cfg.fid_interval_kimg, cur_nimg, cfg.batch_size) or last)
        if not (step % self.log_every == 0 or last or snapshot_due or fid_due):  # rank 0 alone knows the last two
            return
        metrics = self.window.summary(cfg.batch_size) | {
            "lr_g": self.sched_g.get_last_lr()[0], "lr_d": self.sched_d.get_last_lr()[0], "kimg": cur_nimg / 1000,
            "elapsed_min": (time.perf_counter() - self.start) / 60}  # since this (possibly resumed) run started
        if self.grad_norm_g is not None:
            metrics |= {"grad_norm_g": self.grad_norm_g, "grad_norm_d": self.grad_norm_d}
        if self.ada is not None:
            metrics["augment_p"] = self.ada.p
        if step % self.log_every == 0 or last:  # a collective: every rank joins on the same steps
            metrics |= _rank_step_times(self.window.compute_ms(), self.progress)
        self.window.clear()
        self.progress.set_postfix_str(f"{metrics['img_per_s']:.0f} img/s, loss_d {metrics['loss_d']:.3f}, "
                                      f"loss_g {metrics['loss_g']:.3f}", refresh=False)
        if snapshot_due:
            self.live.log_image(f"samples/{cur_nimg / 1000:07.1f}kimg.png", self.grid(self.ema.average))
        if fid_due:
            metrics |= self._score_fid(cur_nimg)
        if self.live is not None:
            for name, value in metrics.items():
                self.live.log_metric(name, value)
            self.live.next_step()

    def _score_fid(self, cur_nimg: int) -> dict[str, float]:
        """The EMA generator's in-loop FID, added to the curve; the best generator so far is kept."""
        fid_start = time.perf_counter()
        fid = self.fid(self.ema.average, self.spec.z_dim)
        scored = {"fid_inloop": fid, "fid_inloop_s": time.perf_counter() - fid_start}  # evidence that it stays cheap
        self.curve.append({"kimg": cur_nimg / 1000, "minutes": self.trained_s() / 60, "fid_inloop": fid})
        self.live.log_plot("fid_inloop", self.curve, x="kimg", y="fid_inloop", title="in-loop FID (domain features)")
        if self.best is None or fid < self.best["fid"]:
            ema_state = self.ema.average.state_dict()
            self.best = {"fid": fid, "kimg": cur_nimg / 1000,
                         "generator_ema": {k: v.detach().cpu().clone() for k, v in ema_state.items()}}
        return scored

    def snapshot(self, step: int, rank_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "step": step, "cur_nimg": step * self.cfg.batch_size,
                "best": self.best, "progress": {"curve": self.curve, "trained_s": self.trained_s()},
                "ranks": rank_states, **{name: part.state_dict() for name, part in self.shared.items()}}

    def checkpoint(self, step: int) -> None:
        broadcast_state(self.generator, self.discriminator)  # BatchNorm statistics are per rank between syncs
        rank_states = gather_to_main(self.rank_state())
        if self.main:
            save_checkpoint(self.checkpoint_path, self.snapshot(step, rank_states), keep_previous=True)

    def finish(self) -> TrainResult:
        """Check that the ranks agree; rank 0 then writes the outputs and closes the log."""
        self.progress.close()
        elapsed_s = time.perf_counter() - self.start
        digests = _check_ranks_agree(self.generator, self.discriminator)
        broadcast_state(self.generator, self.discriminator)
        rank_states = gather_to_main(self.rank_state())
        cfg, best, cur_nimg = self.cfg, self.best, self.total_steps * self.cfg.batch_size
        trained_nimg = cur_nimg - self.first_step * cfg.batch_size
        result = TrainResult(cur_nimg, self.total_steps, trained_nimg / max(elapsed_s, 1e-9), self.window.last_loss_d,
                             self.window.last_loss_g, best["fid"] if best else None, best["kimg"] if best else None)
        if self.main:
            self._write_outputs(result, digests, rank_states)
            self.live.summary["train_img_per_s"] = result.train_img_per_s
            if best is not None:
                self.live.summary["best_fid_inloop"], self.live.summary["best_kimg"] = best["fid"], best["kimg"]
            self.live.end()
            if self.fid is not None:
                self.fid.close()
        return result

    def _write_outputs(self, result: TrainResult, digests: list[str], rank_states: list[dict[str, Any]]) -> None:
        with atomic_dir(self.out_dir) as tmp:
            save_generator(self.ema.average, self.spec, tmp / LAST_GENERATOR)
            if self.best is not None:
                best_generator = build_generator(self.spec)
                best_generator.load_state_dict(self.best["generator_ema"])
                save_generator(best_generator, self.spec, tmp / BEST_GENERATOR)
            save_checkpoint(tmp / CHECKPOINT, self.snapshot(self.total_steps, rank_states))
            write_json(tmp / "train.json", {
                "params": config_to_dict(self.cfg), "spec": self.spec.to_dict(), "cur_nimg": result.cur_nimg,
                "steps": result.steps, "resumed_from_step": self.first_step, "train_img_per_s": result.train_img_per_s,
                "world_size": self.world, "rank_weight_digests": digests, "device": str(self.device),
                "stopped_by_time_limit": self.out_of_time,
                "best_fid_inloop": result.best_fid, "best_kimg": result.best_kimg})


def _every(kimg: float, batch_size: int) -> int:
    """An interval in kimg as a whole number of steps."""
    return max(1, round(kimg * 1000 / batch_size))


def _crossed(interval_kimg: float, nimg: int, batch_size: int) -> bool:
    """Did the step that reached ``nimg`` pass a multiple of the interval?"""
    every_nimg = interval_kimg * 1000
    return bool(interval_kimg) and math.floor(nimg / every_nimg) > math.floor((nimg - batch_size) / every_nimg)


class _Window:
    """Sums of the per-step statistics between two log lines."""

    def __init__(self) -> None:
        self.last_loss_d = self.last_loss_g = float("nan")
        self.clear()

    def clear(self) -> None:
        self.sums = torch.zeros(6)  # loss_d, d_real, d_fake, sign_real, loss_r1, loss_g
        self.steps, self.seconds, self.waited_s = 0, 0.0, 0.0

    def add(self, d_stats: torch.Tensor, loss_r1: torch.Tensor, loss_g: torch.Tensor, seconds: float,
            waited_s: float) -> None:
        self.sums += torch.cat([d_stats.detach().cpu(), loss_r1.detach().cpu().reshape(1),
                                loss_g.detach().cpu().reshape(1)])
        self.steps += 1
        self.seconds += seconds
        self.waited_s += waited_s

    def compute_ms(self) -> float:
        """This rank's mean time per step outside collectives, in ms."""
        return 1000 * (self.seconds - self.waited_s) / max(1, self.steps)

    def summary(self, batch_size: int) -> dict[str, float]:
        loss_d, d_real, d_fake, sign_real, loss_r1, loss_g = (self.sums / max(1, self.steps)).tolist()
        self.last_loss_d, self.last_loss_g = loss_d, loss_g
        return {"loss_d": loss_d, "loss_g": loss_g, "loss_r1": loss_r1, "d_real": d_real, "d_fake": d_fake,
                "d_real_sign": sign_real, "img_per_s": self.steps * batch_size / max(self.seconds, 1e-9)}


def _rank_step_times(compute_ms: float, progress: tqdm) -> dict[str, float]:
    """Gather every rank's compute time per step; log each, and report a rank far slower than the median."""
    times = all_gather_float(compute_ms)
    if len(times) == 1:
        return {"step_ms": times[0]}
    median = float(np.median(times))
    slowest = int(np.argmax(times))
    if times[slowest] > _SLOW_RANK_FACTOR * median and is_main_process():
        progress.write(f"train: rank {slowest} is slow: {times[slowest]:.0f} ms/step of compute against a median "
                       f"of {median:.0f} ms")
    return {f"step_ms/rank{r}": t for r, t in enumerate(times)} | {"step_ms_slowest_rank": slowest}


def _check_ranks_agree(*modules: torch.nn.Module) -> list[str]:
    """Every rank's sha256 of its G and D parameters; ranks that disagree mean a bug, so it is an error."""
    digest = hashlib.sha256()
    for module in modules:
        for p in module.parameters():
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    digests = [str(d) for d in gather_all(digest.hexdigest())]
    if len(set(digests)) > 1:
        raise UserError(f"rank {rank()}: G/D weights differ between ranks at the end of training: {digests}")
    return digests


def _grad_norm(params: list[torch.nn.Parameter]) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def _check_finite(name: str, loss: torch.Tensor, step: int, batch_size: int, checkpoint: Path) -> None:
    """Stop on a NaN/inf loss before it reaches the weights; the last checkpoint on disk stays as it was.

    ``loss`` is the all-rank mean, so every rank takes the same decision.
    """
    if not torch.isfinite(loss):
        kept = f"last good checkpoint: {checkpoint}" if checkpoint.is_file() else "no checkpoint written yet"
        raise UserError(f"training diverged: {name} is {loss.item()} at step {step} "
                        f"({step * batch_size / 1000:.1f} kimg); {kept}")


def _kept_checkpoint(path: Path) -> str:
    """What an interrupted run left on disk, read back to check it, for the one-line message."""
    try:
        latest = load_latest_checkpoint(path)
    except UserError as e:
        return f"the last checkpoint is unreadable: {e}"
    if latest is None:
        return "no checkpoint was written yet, so a rerun starts from scratch"
    state, where = latest
    return f"the last checkpoint, {where} at {state['cur_nimg'] / 1000:.1f} kimg, is intact: run again to resume"


def _resume(path: Path, fingerprint: dict, total_steps: int, shared: dict[str, Any],
            load_rank_state: Callable[[dict[str, Any] | None, int], None],
            ) -> tuple[int, dict[str, Any] | None, dict[str, Any]]:
    """Load an unfinished checkpoint of the same params and data; return (step to start at, best-so-far,
    progress so far: the in-loop FID curve and the seconds trained).

    Rank 0 reads the checkpoint and hands each rank the state it needs, so ranks on other nodes need no
    shared filesystem. A finished checkpoint, or one from other params or data, is left alone and training
    starts at step 0, saying so. A corrupt checkpoint falls back to the previous one; with none to fall back
    to it is a :class:`UserError`, never a silent restart.
    """
    handouts = None
    if is_main_process():
        state = _usable_checkpoint(path, fingerprint, total_steps)
        handouts = [None] * world_size()
        if state is not None:
            ranks = state.pop("ranks")
            if len(ranks) != world_size():
                print(f"train: {path} was written by {len(ranks)} processes, now {world_size()}: weights, "
                      f"optimizers and data order resume, per-rank random streams restart", file=sys.stderr)
            handouts = [(state, ranks[r] if len(ranks) == world_size() else None) for r in range(world_size())]
    handout = scatter_from_main(handouts)
    if handout is None:
        return 0, None, {"curve": [], "trained_s": 0.0}
    state, own = handout
    for name, part in shared.items():
        part.load_state_dict(state[name])
    load_rank_state(own, int(state["step"]))
    return int(state["step"]), state["best"], state["progress"]


def _usable_checkpoint(path: Path, fingerprint: dict, total_steps: int) -> dict[str, Any] | None:
    latest = load_latest_checkpoint(path)
    if latest is None:
        return None
    state, path = latest
    if state.get("fingerprint") != fingerprint:
        print(f"train: {path} is from other params or data; starting from scratch", file=sys.stderr)
        return None
    if state["step"] >= total_steps:
        print(f"train: {path} is a finished run; starting from scratch", file=sys.stderr)
        return None
    print(f"train: resuming from {path} at {state['cur_nimg'] / 1000:.1f} kimg", file=sys.stderr)
    return state
