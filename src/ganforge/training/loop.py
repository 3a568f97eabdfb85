"""The train stage's library function: the seed GAN trained with Adam on the prepared training split."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from dvclive import Live
from tqdm import tqdm

from ganforge.config import TrainConfig, config_to_dict
from ganforge.data.augment import AdaptiveProbability, DiffAugment
from ganforge.data.prepared import load_split
from ganforge.data.stream import BatchStream
from ganforge.distributed import is_main_process, rank_seed
from ganforge.errors import UserError
from ganforge.files import atomic_dir, write_json
from ganforge.models import GeneratorSpec, build_discriminator, build_generator, save_generator
from ganforge.training.checkpoint import save_checkpoint
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


def train(cfg: TrainConfig, data_dir: str | Path, out_dir: str | Path, live_dir: str | Path) -> TrainResult:
    """Train G and D for ``cfg.kimg`` thousand real images; write weights and a checkpoint to ``out_dir``.

    ``out_dir`` receives ``generator.safetensors`` + ``generator.json`` (the EMA generator later stages load),
    ``checkpoint.pt`` (full training state) and ``train.json``. Loss curves (and ADA's p) go to dvclive in
    ``live_dir``.
    """
    split = load_split(data_dir, "train")
    if len(split) < cfg.batch_size:
        raise UserError(f"train.batch_size: {cfg.batch_size} exceeds the {len(split)} training images")
    spec = GeneratorSpec(arch=cfg.arch, z_dim=cfg.z_dim, resolution=split.resolution, channels=split.channels)

    seed = rank_seed(cfg.seed)
    torch.manual_seed(seed)
    generator = build_generator(spec).train()
    discriminator = build_discriminator(cfg.arch, spec.resolution, spec.channels).train()
    ema = GeneratorEMA(generator, cfg.ema_kimg)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    reals = iter(BatchStream(split, cfg.batch_size, seed=seed + 1))
    ada = AdaptiveProbability(cfg.ada_target, cfg.ada_kimg) if cfg.ada_target > 0 and cfg.augment else None
    augment = DiffAugment(cfg.augment_policy, seed=seed + 2, p=0.0 if ada else 1.0)

    total_nimg = int(cfg.kimg * 1000)
    total_steps = math.ceil(total_nimg / cfg.batch_size)
    log_every_steps = max(1, round(cfg.log_interval_kimg * 1000 / cfg.batch_size))
    main = is_main_process()
    live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None) if main else None
    if live is not None:
        live.log_params(config_to_dict(cfg))

    cur_nimg, window = 0, torch.zeros(2)
    loss_d_avg = loss_g_avg = float("nan")
    start = time.perf_counter()
    progress = tqdm(total=total_nimg, unit="img", unit_scale=True, desc="train", disable=not main, mininterval=1.0)
    for step in range(total_steps):
        real = next(reals)  # (B, C, R, R) in [-1, 1]
        z = torch.randn(real.shape[0], spec.z_dim)  # (B, z_dim)

        # D step on real vs detached fake, then a G step against the updated D (the article mixed these up).
        # Both see the same augmentation family, so D cannot tell reals from fakes by the augmentation.
        fake = generator(z)  # (B, C, R, R)
        real_logits = discriminator(augment(real))  # (B,)
        loss_d = d_loss_nonsaturating(real_logits, discriminator(augment(fake.detach())))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        if ada is not None:
            ada.observe(real_logits)
            augment.p = ada.p

        loss_g = g_loss_nonsaturating(discriminator(augment(fake)))
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
    progress.close()
    elapsed_s = time.perf_counter() - start

    result = TrainResult(cur_nimg, total_steps, cur_nimg / elapsed_s, loss_d_avg, loss_g_avg)
    if main:
        with atomic_dir(out_dir) as tmp:
            save_generator(ema.average, spec, tmp / "generator.safetensors")
            save_checkpoint(tmp / "checkpoint.pt", {
                "generator": generator.state_dict(), "generator_ema": ema.average.state_dict(),
                "discriminator": discriminator.state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "cur_nimg": cur_nimg, "step": total_steps,
            })
            write_json(tmp / "train.json", {"params": config_to_dict(cfg), "spec": spec.to_dict(),
                                             "cur_nimg": cur_nimg, "steps": total_steps,
                                             "train_img_per_s": result.train_img_per_s})
        live.log_metric("train_img_per_s", result.train_img_per_s, plot=False)
        live.end()
    return result
