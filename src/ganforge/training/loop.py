"""The train stage's library function: the seed GAN trained with Adam on the prepared training split."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from dvclive import Live
from tqdm import tqdm

from ganforge.config import TrainConfig, config_to_dict
from ganforge.data.augment import AdaptiveProbability, DiffAugment
from ganforge.data.prepared import load_split, read_manifest
from ganforge.data.stream import BatchStream
from ganforge.distributed import is_main_process, rank_seed
from ganforge.errors import UserError
from ganforge.files import atomic_dir, write_json
from ganforge.models import GeneratorSpec, build_discriminator, build_generator, save_generator
from ganforge.training.checkpoint import load_checkpoint, save_checkpoint
from ganforge.training.ema import GeneratorEMA
from ganforge.training.losses import d_loss_nonsaturating, g_loss_nonsaturating


@dataclass(frozen=True)
class TrainResult:
    """Summary of a finished run."""

    cur_nimg: int
    steps: int
    train_img_per_s: float
    loss_d: float
    loss_g: float


# Params that may change between an interrupted run and its resumption without invalidating the state.
_RESUMABLE_CHANGES = ("kimg", "log_interval_kimg", "checkpoint_kimg")
CHECKPOINT = "checkpoint.pt"


def train(cfg: TrainConfig, data_dir: str | Path, out_dir: str | Path, live_dir: str | Path) -> TrainResult:
    """Train G and D for ``cfg.kimg`` thousand real images; write weights and a checkpoint to ``out_dir``.

    ``out_dir`` receives ``generator.safetensors`` + ``generator.json`` (the EMA generator later stages load),
    ``checkpoint.pt`` (full training state, also written every ``cfg.checkpoint_kimg``) and ``train.json``.
    If ``out_dir`` holds an unfinished checkpoint of the same params and data, training resumes from it and
    ends bit-identical to an uninterrupted run. Loss curves (and ADA's p) go to dvclive in ``live_dir``.
    """
    split = load_split(data_dir, "train")
    if len(split) < cfg.batch_size:
        raise UserError(f"train.batch_size: {cfg.batch_size} exceeds the {len(split)} training images")
    spec = GeneratorSpec(arch=cfg.arch, z_dim=cfg.z_dim, resolution=split.resolution, channels=split.channels)
    manifest = read_manifest(data_dir)
    fingerprint = {"params": {k: v for k, v in config_to_dict(cfg).items() if k not in _RESUMABLE_CHANGES},
                   "data": {"source_hash": manifest["source_hash"], "counts": manifest["counts"]}}

    seed = rank_seed(cfg.seed)
    torch.manual_seed(seed)
    generator = build_generator(spec).train()
    discriminator = build_discriminator(cfg.arch, spec.resolution, spec.channels).train()
    ema = GeneratorEMA(generator, cfg.ema_kimg)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    reals = BatchStream(split, cfg.batch_size, seed=seed + 1)
    ada = AdaptiveProbability(cfg.ada_target, cfg.ada_kimg) if cfg.ada_target > 0 and cfg.augment else None
    augment = DiffAugment(cfg.augment_policy, seed=seed + 2, p=0.0 if ada else 1.0)
    parts = {"generator": generator, "discriminator": discriminator, "generator_ema": ema.average,
             "opt_g": opt_g, "opt_d": opt_d, "reals": reals, "augment": augment, **({"ada": ada} if ada else {})}

    total_nimg = int(cfg.kimg * 1000)
    total_steps = math.ceil(total_nimg / cfg.batch_size)
    log_every_steps = max(1, round(cfg.log_interval_kimg * 1000 / cfg.batch_size))
    checkpoint_every_steps = max(1, round(cfg.checkpoint_kimg * 1000 / cfg.batch_size))
    checkpoint_path = Path(out_dir) / CHECKPOINT
    first_step = _maybe_resume(checkpoint_path, fingerprint, total_steps, parts)
    main = is_main_process()
    live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, resume=first_step > 0) if main else None
    if live is not None and first_step == 0:
        live.log_params(config_to_dict(cfg))

    def snapshot(step: int) -> dict:
        return {"fingerprint": fingerprint, "step": step, "cur_nimg": step * cfg.batch_size,
                "torch_rng": torch.get_rng_state(), **{name: part.state_dict() for name, part in parts.items()}}

    cur_nimg, window = first_step * cfg.batch_size, torch.zeros(2)
    loss_d_avg = loss_g_avg = float("nan")
    start = time.perf_counter()
    progress = tqdm(total=total_nimg, initial=cur_nimg, unit="img", unit_scale=True, desc="train",
                    disable=not main, mininterval=1.0)
    for step in range(first_step, total_steps):
        real = next(reals)  # (B, C, R, R) in [-1, 1]
        z = torch.randn(real.shape[0], spec.z_dim)  # (B, z_dim)

        # D step on real vs detached fake, then a G step against the updated D (the article mixed these up).
        # Both see the same augmentation family, so D cannot tell reals from fakes by the augmentation.
        fake = generator(z)  # (B, C, R, R)
        real_logits = discriminator(augment(real))  # (B,)
        loss_d = d_loss_nonsaturating(real_logits, discriminator(augment(fake.detach())))
        _check_finite(step, cfg.batch_size, loss_d, loss_d, checkpoint_path)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        if ada is not None:
            ada.observe(real_logits)
            augment.p = ada.p

        loss_g = g_loss_nonsaturating(discriminator(augment(fake)))
        _check_finite(step, cfg.batch_size, loss_d, loss_g, checkpoint_path)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        ema.update(generator, real.shape[0])

        cur_nimg += real.shape[0]
        window += torch.stack([loss_d.detach(), loss_g.detach()])
        progress.update(real.shape[0])
        if (step + 1) % log_every_steps == 0 or step + 1 == total_steps:
            loss_d_avg, loss_g_avg = (window / ((step % log_every_steps) + 1)).tolist()
            window.zero_()
            progress.set_postfix(loss_d=f"{loss_d_avg:.3f}", loss_g=f"{loss_g_avg:.3f}")
            if live is not None:
                live.log_metric("loss_d", loss_d_avg)
                live.log_metric("loss_g", loss_g_avg)
                live.log_metric("kimg", cur_nimg / 1000)
                if ada is not None:
                    live.log_metric("augment_p", ada.p)
                live.next_step()
        if main and (step + 1) % checkpoint_every_steps == 0 and step + 1 < total_steps:
            save_checkpoint(checkpoint_path, snapshot(step + 1))
    progress.close()
    elapsed_s = time.perf_counter() - start

    trained_nimg = cur_nimg - first_step * cfg.batch_size
    result = TrainResult(cur_nimg, total_steps, trained_nimg / max(elapsed_s, 1e-9), loss_d_avg, loss_g_avg)
    if main:
        with atomic_dir(out_dir) as tmp:
            save_generator(ema.average, spec, tmp / "generator.safetensors")
            save_checkpoint(tmp / CHECKPOINT, snapshot(total_steps))
            write_json(tmp / "train.json", {"params": config_to_dict(cfg), "spec": spec.to_dict(),
                                             "cur_nimg": cur_nimg, "steps": total_steps,
                                             "resumed_from_step": first_step,
                                             "train_img_per_s": result.train_img_per_s})
        live.log_metric("train_img_per_s", result.train_img_per_s, plot=False)
        live.end()
    return result


def _check_finite(step: int, batch_size: int, loss_d: torch.Tensor, loss_g: torch.Tensor, checkpoint: Path) -> None:
    """Stop on a NaN/inf loss before it reaches the weights; the last checkpoint on disk stays as it was."""
    for name, loss in (("loss_d", loss_d), ("loss_g", loss_g)):
        if not torch.isfinite(loss):
            kept = f"last good checkpoint: {checkpoint}" if checkpoint.is_file() else "no checkpoint written yet"
            raise UserError(f"training diverged: {name} is {loss.item()} at step {step} "
                            f"({step * batch_size / 1000:.1f} kimg); {kept}")


def _maybe_resume(path: Path, fingerprint: dict, total_steps: int, parts: dict) -> int:
    """Load an unfinished checkpoint of the same params and data into ``parts``; return the step to start at.

    A finished checkpoint, or one from other params or data, is left alone and training starts at step 0,
    saying so. A corrupt checkpoint is a :class:`UserError`, never a silent restart.
    """
    if not path.is_file():
        return 0
    state = load_checkpoint(path)
    if state.get("fingerprint") != fingerprint:
        print(f"train: {path} is from other params or data; starting from scratch", file=sys.stderr)
        return 0
    if state["step"] >= total_steps:
        print(f"train: {path} is a finished run; starting from scratch", file=sys.stderr)
        return 0
    for name, part in parts.items():
        part.load_state_dict(state[name])
    torch.set_rng_state(state["torch_rng"])
    print(f"train: resuming from {path} at {state['cur_nimg'] / 1000:.1f} kimg", file=sys.stderr)
    return int(state["step"])
