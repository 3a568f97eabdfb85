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
from ganforge.data.prepared import load_split, read_manifest
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
    world, main = world_size(), is_main_process()
    split = load_split(data_dir, "train")
    if cfg.batch_size % world:
        raise UserError(f"train.batch_size: {cfg.batch_size} does not split evenly over {world} processes")
    if len(split) < cfg.batch_size:
        raise UserError(f"train.batch_size: {cfg.batch_size} exceeds the {len(split)} training images")
    assert time_limit_s is None or world == 1, "time_limit_s is for single-process benchmarks"
    spec = GeneratorSpec(cfg.arch, cfg.z_dim, split.resolution, split.channels, cfg.width)
    manifest = read_manifest(data_dir)
    fingerprint = {"params": {k: v for k, v in config_to_dict(cfg).items() if k not in _RESUMABLE_CHANGES},
                   "data": {"source_hash": manifest["source_hash"], "counts": manifest["counts"]}}
    if cfg.fid_interval_kimg and featurizer_path is None:
        raise UserError("train.fid_interval_kimg: the in-loop FID needs the featurizer stage's weights")
    fid = InLoopFID(featurizer_path, split, cfg.fid_samples, cfg.seed) if main and cfg.fid_interval_kimg else None

    # The same initial weights on every rank (base seed); then per-rank streams for latents and augmentation.
    torch.manual_seed(cfg.seed)
    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    generator = build_generator(spec).to(device, memory_format=memory_format).train()
    discriminator = build_discriminator(cfg.arch, spec.resolution, spec.channels, cfg.width, cfg.d_spectral_norm,
                                        cfg.d_batchnorm).to(device, memory_format=memory_format)
    broadcast_state(generator, discriminator)
    ema = GeneratorEMA(generator, cfg.ema_kimg, cfg.ema_rampup)
    seed = rank_seed(cfg.seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    latent_rng = torch.Generator().manual_seed(seed + 3)

    total_steps = math.ceil(cfg.kimg * 1000 / cfg.batch_size)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr * cfg.d_lr_ratio, betas=(cfg.beta1, cfg.beta2))
    warmup_steps = round(cfg.warmup_kimg * 1000 / cfg.batch_size)
    sched_g = lr_scheduler(opt_g, cfg.lr_schedule, warmup_steps, total_steps)
    sched_d = lr_scheduler(opt_d, cfg.lr_schedule, warmup_steps, total_steps)
    reals = BatchStream(split, cfg.batch_size, seed=cfg.seed + 1, rank=rank(), world_size=world)
    ada = AdaptiveProbability(cfg.ada_target, cfg.ada_kimg) if cfg.ada_target > 0 and cfg.augment else None
    augment = DiffAugment(cfg.augment_policy, seed=seed + 2, p=0.0 if ada else 1.0, device=device)
    shared = {"generator": generator, "discriminator": discriminator, "generator_ema": ema.average,
              "opt_g": opt_g, "opt_d": opt_d, "sched_g": sched_g, "sched_d": sched_d, "reals": reals,
              **({"ada": ada} if ada else {})}

    def rank_state() -> dict[str, Any]:
        return {"rng": capture_rng(), "latents": latent_rng.get_state(), "augment": augment.state_dict()}

    def load_rank_state(state: dict[str, Any] | None, step: int) -> None:
        if state is None:  # the checkpoint came from another process count: fresh streams for this step
            torch.manual_seed(seed + step)
            latent_rng.manual_seed(seed + 3 + step)
            augment.generator.manual_seed(seed + 2 + step)
            return
        restore_rng(state["rng"])
        latent_rng.set_state(state["latents"])
        augment.load_state_dict(state["augment"])

    checkpoint_path = out_dir / CHECKPOINT
    first_step, best, progress_so_far = _resume(checkpoint_path, fingerprint, total_steps, shared, load_rank_state)
    # The in-loop FID curve and the training seconds before this run, both carried across a resume.
    curve: list[dict[str, float]] = progress_so_far["curve"]
    if ada is not None:
        augment.p = ada.p

    def snapshot(step: int, rank_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {"fingerprint": fingerprint, "step": step, "cur_nimg": step * cfg.batch_size, "best": best,
                "progress": {"curve": curve, "trained_s": trained_s()},
                "ranks": rank_states, **{name: part.state_dict() for name, part in shared.items()}}

    def every(kimg: float) -> int:  # an interval in kimg as a whole number of steps
        return max(1, round(kimg * 1000 / cfg.batch_size))

    def crossed(interval_kimg: float, nimg: int) -> bool:  # did this step pass a multiple of the interval?
        every_nimg = interval_kimg * 1000
        return bool(interval_kimg) and math.floor(nimg / every_nimg) > math.floor((nimg - cfg.batch_size) / every_nimg)

    log_every, checkpoint_every = every(cfg.log_interval_kimg), every(cfg.checkpoint_kimg)
    live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, resume=first_step > 0) if main else None
    if live is not None and first_step == 0:
        live.log_params(config_to_dict(cfg) | {"world_size": world, "device": str(device)})
    grid = SampleGrid(spec.z_dim, 64, cfg.seed) if main and cfg.snapshot_kimg else None
    bf16 = cfg.precision == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    d_params, g_params = list(discriminator.parameters()), list(generator.parameters())

    window = _Window()
    cur_nimg = first_step * cfg.batch_size
    progress = cleanup.enter_context(tqdm(  # closed before an interrupt's message is printed
        total=round(total_steps * cfg.batch_size / 1000, 3), initial=round(cur_nimg / 1000, 3), unit="kimg",
        desc="train", disable=not main, mininterval=1.0,
        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} kimg [{elapsed}<{remaining}{postfix}]"))
    start = time.perf_counter()

    def trained_s() -> float:  # wall seconds of training since step 0, over every resume
        return progress_so_far["trained_s"] + time.perf_counter() - start

    step, out_of_time = first_step, False
    while step < total_steps:
        step_start = time.perf_counter()
        real = next(reals).to(device, non_blocking=True)  # (b, C, R, R) in [-1, 1], b = batch_size / world
        if cfg.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        z = torch.randn(real.shape[0], spec.z_dim, generator=latent_rng).to(device)  # (b, z_dim)

        # D step on real vs detached fake, then a G step against the updated D. Both see the same
        # augmentation family, so D cannot tell reals from fakes by the augmentation.
        with autocast:
            fake = generator(z)  # (b, C, R, R)
            real_logits = discriminator(augment(real)).float()  # (b,)
            fake_logits = discriminator(augment(fake.detach())).float()  # (b,)
        loss_d = discriminator_loss(cfg.loss, real_logits, fake_logits)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        d_stats, waited_s = sync_gradients(d_params, loss_d, real_logits.mean(), fake_logits.mean(),
                                           real_logits.sign().mean())
        _check_finite("loss_d", d_stats[0], step, cfg.batch_size, checkpoint_path)
        grad_norm_d = _grad_norm(d_params) if (step + 1) % log_every == 0 else None
        opt_d.step()
        if ada is not None:
            ada.observe(float(d_stats[3]), cfg.batch_size)
            augment.p = ada.p

        loss_r1 = torch.zeros(())
        if (cfg.r1_gamma > 0 or cfg.r2_gamma > 0) and step % cfg.r1_interval == 0:
            # Lazy R1 on reals and R2 on fakes, scaled by the interval to match; logged together as loss_r1.
            penalised = [(gamma, x.detach().float().requires_grad_(True))  # fakes are bf16 under autocast
                         for gamma, x in ((cfg.r1_gamma, real), (cfg.r2_gamma, fake)) if gamma > 0]
            loss_r1 = sum(gamma / 2 * cfg.r1_interval * gradient_penalty(discriminator(augment(x)).float(), x)
                          for gamma, x in penalised)
            opt_d.zero_grad(set_to_none=True)
            loss_r1.backward()
            (loss_r1,), more_s = sync_gradients(d_params, loss_r1)
            waited_s += more_s
            _check_finite("loss_r1", loss_r1, step, cfg.batch_size, checkpoint_path)
            opt_d.step()

        discriminator.requires_grad_(False)  # the G step needs gradients through D, not for D's weights
        with autocast:
            fake_logits_g = discriminator(augment(fake)).float()  # (b,)
            # The paired loss compares each fake with a real under the updated D (no gradient to anything).
            real_logits_g = discriminator(augment(real)).float() if cfg.loss in PAIRED_LOSSES else None
        discriminator.requires_grad_(True)
        loss_g = generator_loss(cfg.loss, fake_logits_g, real_logits_g)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        (loss_g,), more_s = sync_gradients(g_params, loss_g)
        waited_s += more_s
        _check_finite("loss_g", loss_g, step, cfg.batch_size, checkpoint_path)
        grad_norm_g = _grad_norm(g_params) if (step + 1) % log_every == 0 else None
        opt_g.step()
        sched_g.step()
        sched_d.step()
        ema.update(generator, cfg.batch_size, (step + 1) * cfg.batch_size)

        step += 1
        cur_nimg += cfg.batch_size
        out_of_time = time_limit_s is not None and time.perf_counter() - start >= time_limit_s
        if out_of_time:
            total_steps = step  # stop here and write the outputs as at the end
        window.add(d_stats, loss_r1, loss_g, time.perf_counter() - step_start, waited_s)
        progress.update(round(cur_nimg / 1000, 3) - progress.n)
        if on_step is not None and main:
            on_step(trained_s() / 60, cur_nimg, ema.average, spec)

        last = step == total_steps
        snapshot_due = grid is not None and (crossed(cfg.snapshot_kimg, cur_nimg) or last)
        fid_due = fid is not None and (crossed(cfg.fid_interval_kimg, cur_nimg) or last)
        if step % log_every == 0 or last or snapshot_due or fid_due:  # rank 0 alone knows the last two
            metrics = window.summary(cfg.batch_size) | {
                "lr_g": sched_g.get_last_lr()[0], "lr_d": sched_d.get_last_lr()[0], "kimg": cur_nimg / 1000,
                "elapsed_min": (time.perf_counter() - start) / 60}  # since this (possibly resumed) run started
            if grad_norm_g is not None:
                metrics |= {"grad_norm_g": grad_norm_g, "grad_norm_d": grad_norm_d}
            if ada is not None:
                metrics["augment_p"] = ada.p
            if step % log_every == 0 or last:  # a collective: every rank joins on the same steps
                metrics |= _rank_step_times(window.compute_ms(), progress)
            window.clear()
            progress.set_postfix_str(f"{metrics['img_per_s']:.0f} img/s, loss_d {metrics['loss_d']:.3f}, "
                                     f"loss_g {metrics['loss_g']:.3f}", refresh=False)
            if snapshot_due:
                live.log_image(f"samples/{cur_nimg / 1000:07.1f}kimg.png", grid(ema.average))
            if fid_due:
                fid_start = time.perf_counter()
                metrics["fid_inloop"] = fid(ema.average, spec.z_dim)
                metrics["fid_inloop_s"] = time.perf_counter() - fid_start  # evidence that it stays cheap
                curve.append({"kimg": cur_nimg / 1000, "minutes": trained_s() / 60,
                              "fid_inloop": metrics["fid_inloop"]})
                live.log_plot("fid_inloop", curve, x="kimg", y="fid_inloop", title="in-loop FID (domain features)")
                if best is None or metrics["fid_inloop"] < best["fid"]:
                    best = {"fid": metrics["fid_inloop"], "kimg": cur_nimg / 1000,
                            "generator_ema": {k: v.detach().cpu().clone() for k, v in ema.average.state_dict().items()}}
            if live is not None:
                for name, value in metrics.items():
                    live.log_metric(name, value)
                live.next_step()
        if step % checkpoint_every == 0 and not last:
            broadcast_state(generator, discriminator)  # BatchNorm statistics are per rank between syncs
            rank_states = gather_to_main(rank_state())
            if main:
                save_checkpoint(checkpoint_path, snapshot(step, rank_states), keep_previous=True)
    progress.close()
    elapsed_s = time.perf_counter() - start

    digests = _check_ranks_agree(generator, discriminator)
    broadcast_state(generator, discriminator)
    rank_states = gather_to_main(rank_state())
    trained_nimg = cur_nimg - first_step * cfg.batch_size
    result = TrainResult(cur_nimg, total_steps, trained_nimg / max(elapsed_s, 1e-9), window.last_loss_d,
                         window.last_loss_g, best["fid"] if best else None, best["kimg"] if best else None)
    if main:
        with atomic_dir(out_dir) as tmp:
            save_generator(ema.average, spec, tmp / LAST_GENERATOR)
            if best is not None:
                best_generator = build_generator(spec)
                best_generator.load_state_dict(best["generator_ema"])
                save_generator(best_generator, spec, tmp / BEST_GENERATOR)
            save_checkpoint(tmp / CHECKPOINT, snapshot(total_steps, rank_states))
            write_json(tmp / "train.json", {
                "params": config_to_dict(cfg), "spec": spec.to_dict(), "cur_nimg": cur_nimg, "steps": total_steps,
                "resumed_from_step": first_step, "train_img_per_s": result.train_img_per_s,
                "world_size": world, "rank_weight_digests": digests, "device": str(device),
                "stopped_by_time_limit": out_of_time,
                "best_fid_inloop": result.best_fid, "best_kimg": result.best_kimg})
        live.summary["train_img_per_s"] = result.train_img_per_s
        if best is not None:
            live.summary["best_fid_inloop"], live.summary["best_kimg"] = best["fid"], best["kimg"]
        live.end()
        if fid is not None:
            fid.close()
    return result


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
