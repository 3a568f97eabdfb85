"""The domain feature network: a small CNN trained on the prepared training split.

On labeled data it is a classifier; on unlabeled data (one class) it learns to predict which of four
rotations (0/90/180/270 degrees) was applied, so folders without classes still get semantic features.
Its penultimate layer is the feature space for FID, KID and precision/recall, and its logits feed the
Inception Score, so FID works offline on any domain. It is registered with torch-fidelity in
:mod:`ganforge.evaluation.fidelity`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from ganforge.config import FeaturizerConfig, read_record
from ganforge.data.prepared import load_split
from ganforge.errors import UserError
from ganforge.files import sha256_file, write_json
from ganforge.images import to_unit_range
from ganforge.models.registry import load_state, load_weights, save_weights


class DomainFeatureNet(nn.Module):
    """Three conv blocks, global average pooling, a feature layer and a classifier head.

    Args:
        channels: input channels.
        num_classes: classifier outputs.
        width: channels of the first conv block; the next two double it.
        feature_dim: size of the penultimate layer used as the feature space.

    Input: uint8 images (B, C, H, W) of any side >= 8. Output: (features (B, feature_dim), logits (B, K)).
    """

    def __init__(self, channels: int, num_classes: int, width: int = 32, feature_dim: int = 64) -> None:
        super().__init__()
        self.config = {"channels": channels, "num_classes": num_classes, "width": width,
                       "feature_dim": feature_dim}
        blocks: list[nn.Module] = []
        ch_in = channels
        for i in range(3):
            ch_out = width * 2**i
            blocks += [nn.Conv2d(ch_in, ch_out, 3, padding=1), nn.BatchNorm2d(ch_out), nn.ReLU()]
            if i < 2:
                blocks.append(nn.MaxPool2d(2))
            ch_in = ch_out
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature = nn.Linear(ch_in, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.to(memory_format=torch.channels_last)  # about 2x the images/s of NCHW convs on CPU

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_unit_range(images).contiguous(memory_format=torch.channels_last)  # uint8 -> float in [-1, 1]
        features = F.relu(self.feature(self.body(x)))  # (B, feature_dim)
        return features, self.head(features)  # (B, feature_dim), (B, K)


def save_featurizer(net: DomainFeatureNet, path: str | Path) -> None:
    """Write the net as safetensors with its constructor config in the metadata."""
    save_weights(net, path, {"config": net.config})


@dataclass(frozen=True)
class FeaturizerShape:
    """:class:`DomainFeatureNet`'s constructor arguments as its safetensors metadata records them, with the
    featurizer params' ranges (``num_classes``: the label count, or 4 rotations)."""

    SECTION: ClassVar[str] = "config"
    TOP_LEVEL: ClassVar[tuple[str, ...]] = ()
    channels: int = field(metadata={"choices": (1, 3)})
    num_classes: int = field(metadata={"ge": 2, "le": 1_000_000})
    width: int = field(metadata={"ge": 1, "le": 1024})
    feature_dim: int = field(metadata={"ge": 2, "le": 4096})


def load_featurizer(path: str | Path) -> DomainFeatureNet:
    """Rebuild a :class:`DomainFeatureNet` from a safetensors file written by :func:`save_featurizer`.

    Its metadata's ``config`` is checked field by field, and the net is built on the meta device and takes the
    file's tensors, so an edited file is a one-line :class:`UserError`, never a large allocation.
    """
    state = load_weights(path)
    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get("config")
    if text is None:
        raise UserError(f"{path}: metadata: config: missing (not a ganforge featurizer)")
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as e:  # ValueError covers malformed JSON and over-long integers
        raise UserError(f"{path}: metadata: config: malformed JSON ({e})") from None
    shape = read_record(FeaturizerShape, config, f"{path}: metadata")
    with torch.device("meta"):
        net = DomainFeatureNet(**dataclasses.asdict(shape))
    load_state(net, state, path, assign=True)
    # The file's tensors are contiguous; the net computes in channels_last (see DomainFeatureNet).
    return net.to(memory_format=torch.channels_last).eval()


ROTATIONS = 4


def rotate(images: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate each image (B, C, H, H) by its own number of quarter turns (B,)."""
    out = images.clone()
    for k in range(1, ROTATIONS):
        chosen = quarter_turns == k
        if chosen.any():
            out[chosen] = torch.rot90(images[chosen], k, dims=(2, 3))
    return out


@torch.no_grad()
def accuracy(net: DomainFeatureNet, images: np.ndarray, labels: np.ndarray, rotation: bool,
             batch: int = 512) -> float:
    """Top-1 accuracy on uint8 images (N, C, H, W): of the class labels, or of all four rotations."""
    net.eval()
    correct, total = 0, 0
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.array(images[start:start + batch]))
        targets = [(x, torch.from_numpy(labels[start:start + batch]))] if not rotation else [
            (rotate(x, torch.full((len(x),), k)), torch.full((len(x),), k)) for k in range(ROTATIONS)]
        for inputs, y in targets:
            correct += int((net(inputs)[1].argmax(1) == y).sum())
            total += len(y)
    return correct / max(1, total)


# A tenth of the training split (at most HOLDOUT_MAX images, a seeded subset) is held out to tell when the
# network stops improving; it is scored every EVAL_IMAGES training images, or every epoch if that is sooner.
HOLDOUT_FRACTION = 0.1
HOLDOUT_MAX = 2000
TRAIN_SCORED_MAX = 10_000  # the recorded train accuracy is of at most this many training images (a seeded subset)
EVAL_IMAGES = 10_000
WARMUP = 0.25  # share of the schedule over which the learning rate rises from lr / 25 to lr (as OneCycle)
PATIENCE_FROM = 0.625  # scores count toward patience once the learning rate has fallen to half its peak


LOW_RES_MIN_SIDE = 16  # half-size training needs at least this side left: below it the last block sees 2x2


def half_side(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) at half their side, each pixel the rounded mean of a 2x2 block."""
    out = torch.empty(images.shape[:2] + (images.shape[2] // 2, images.shape[3] // 2), dtype=torch.uint8)
    for start in range(0, len(images), 4096):  # in chunks: a float copy of the whole split would be 4x its size
        chunk = images[start:start + 4096].float()
        out[start:start + 4096] = F.avg_pool2d(chunk, 2).round_().to(torch.uint8)
    return out


def learning_rate(lr: float, progress: float) -> float:
    """OneCycle's shape over ``progress`` in [0, 1]: a linear rise from ``lr / 25``, then a cosine to zero."""
    if progress < WARMUP:
        return lr * (0.04 + 0.96 * progress / WARMUP)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - WARMUP) / (1 - WARMUP))))


class _HeldOut:
    """The training split divided for the featurizer: the images it trains on (and their half-size copy when the
    schedule has a half-size share), the held-out ones, and those whose accuracy the metrics record."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, cfg: FeaturizerConfig) -> None:
        self.all_images = torch.from_numpy(np.array(images))  # (N, C, R, R) uint8
        self.all_labels = torch.from_numpy(labels)
        split = torch.randperm(len(self.all_images), generator=torch.Generator().manual_seed(cfg.seed + 2))
        held = split[:min(HOLDOUT_MAX, int(len(self.all_images) * HOLDOUT_FRACTION))]
        train = split[len(held):]
        self.images, self.labels = self.all_images[train], self.all_labels[train]
        self.held_images, self.held_labels = self.all_images[held].numpy(), self.all_labels[held].numpy()
        self.small = (half_side(self.images) if cfg.low_res_share > 0
                      and self.images.shape[-1] // 2 >= LOW_RES_MIN_SIDE else None)
        self.scored = train[:TRAIN_SCORED_MAX]  # training images whose accuracy is recorded at the end

    def batch(self, idx: torch.Tensor, half_size: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (half size when asked and there is a copy) and labels of the training images ``idx``."""
        return (self.small if half_size and self.small is not None else self.images)[idx], self.labels[idx]


def _training_budget_s(cfg: FeaturizerConfig, net: DomainFeatureNet, data: _HeldOut, final_images: int,
                       rotation: bool, elapsed_s: float, clock: Callable[[], float]) -> float:
    """Seconds left for training so that the whole call takes at most ``cfg.max_minutes``: the final scoring
    passes over ``final_images`` are timed ahead from one held-out pass (and kept to at most half the bound)."""
    if cfg.max_minutes is None:
        return math.inf
    probe = min(512, len(data.held_images))
    tick = clock()
    accuracy(net, data.held_images[:probe], data.held_labels[:probe], rotation)
    reserve_s = (clock() - tick) * final_images / max(1, probe)
    bound_s = cfg.max_minutes * 60
    return max(1e-3, bound_s - min(reserve_s, bound_s / 2) - elapsed_s - (clock() - tick))


class _BestHeldOut:
    """The held-out scores of a run: the best one and its weights, and how many since have not improved."""

    def __init__(self, net: DomainFeatureNet, data: _HeldOut, rotation: bool, patience: int) -> None:
        self.net, self.data, self.rotation, self.patience = net, data, rotation, patience
        self.accuracy, self.images, self.last, self.stale = -1.0, 0, 0.0, 0
        self.state: dict[str, torch.Tensor] = {}

    def score(self, progress: float, seen: int) -> bool:
        """Score the held-out images; whether training should stop for want of improvement."""
        held = len(self.data.held_images)
        self.last = accuracy(self.net, self.data.held_images, self.data.held_labels, self.rotation) if held else 0.0
        self.net.train()
        if self.last > self.accuracy or not self.state:
            self.accuracy, self.images, self.stale = self.last, seen, 0
            self.state = {k: v.clone() for k, v in self.net.state_dict().items()}
        elif progress >= PATIENCE_FROM:  # near its peak rate the score wanders; improvement comes as it falls
            self.stale += 1
        return self.patience > 0 and held > 0 and self.stale >= self.patience


def _train_steps(cfg: FeaturizerConfig, net: DomainFeatureNet, data: _HeldOut, best: _BestHeldOut,
                 rotation: bool, budget_s: float, clock: Callable[[], float]) -> tuple[str, int]:
    """Run the schedule; (what ended it: epochs | time | plateau, training images seen)."""
    torch_order = torch.Generator().manual_seed(cfg.seed + 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate(cfg.lr, 0.0))
    total_steps = cfg.epochs * int(np.ceil(len(data.images) / cfg.batch_size))
    eval_every, started = min(EVAL_IMAGES, len(data.images)), clock()
    step, seen, unscored, stopped = 0, 0, 0, "epochs"
    net.train()
    with tqdm(total=total_steps, desc="featurizer", unit="step", mininterval=1.0) as bar:
        while stopped == "epochs" and step < total_steps:
            perm = torch.randperm(len(data.images), generator=torch_order)
            for start in range(0, len(data.images), cfg.batch_size):
                progress = max(step / total_steps, (clock() - started) / budget_s)
                if progress >= 1:
                    stopped = "time"
                    break
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(cfg.lr, progress)
                x, y = data.batch(perm[start:start + cfg.batch_size], progress < cfg.low_res_share)
                # Random 1-pixel shifts keep the classifier from memorising exact pixel positions.
                x = torch.roll(x, shifts=tuple(torch.randint(-1, 2, (2,), generator=torch_order).tolist()),
                               dims=(2, 3))
                if rotation:
                    y = torch.randint(0, ROTATIONS, (len(x),), generator=torch_order)
                    x = rotate(x, y)
                loss = F.cross_entropy(net(x)[1], y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step, seen, unscored = step + 1, seen + len(x), unscored + len(x)
                bar.update()
                if unscored >= eval_every:
                    unscored = 0
                    if best.score(progress, seen) and step < total_steps:
                        stopped = "plateau"
                    bar.set_postfix(heldout=f"{best.accuracy:.3f}")
                    if stopped == "plateau":
                        break
        if unscored or not best.state:
            best.score(1.0, seen)
    return stopped, seen


def train_featurizer(cfg: FeaturizerConfig, data_dir: str | Path, out_path: str | Path, metrics_path: str | Path,
                     clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Train the domain network on the prepared training split; write weights and its test accuracy (of the
    classes, or of the rotations on unlabeled data).

    The first ``cfg.low_res_share`` of the schedule trains on the images at half their side (when that is at
    least :data:`LOW_RES_MIN_SIDE`): a step there costs about a quarter, so the budget holds more passes;
    held-out and test scores are always at full size. Training ends after ``cfg.epochs`` passes, early enough
    for the whole call to take at most ``cfg.max_minutes`` (the learning-rate schedule follows whichever of the
    two is further along, so it has ended by then; the final scoring passes are timed ahead), or once the
    held-out accuracy has not improved for ``cfg.patience`` evaluations made after the learning rate has fallen
    to half its peak, which keeps the weights with the best held-out accuracy; otherwise the annealed last
    weights are kept (a small held-out set's best is noise). Which one ended it is recorded in the metrics.
    """
    started = clock()
    train_split, test_split = load_split(data_dir, "train"), load_split(data_dir, "test")
    rotation = len(train_split.class_names) < 2  # unlabeled: self-supervised rotation prediction
    torch.manual_seed(cfg.seed)
    net = DomainFeatureNet(train_split.channels, ROTATIONS if rotation else len(train_split.class_names),
                           cfg.width, cfg.feature_dim)
    data = _HeldOut(train_split.images, train_split.labels, cfg)
    budget_s = _training_budget_s(cfg, net, data, len(test_split.images) + len(data.scored), rotation,
                                  clock() - started, clock)
    best = _BestHeldOut(net, data, rotation, cfg.patience)
    stopped, seen = _train_steps(cfg, net, data, best, rotation, budget_s, clock)
    if stopped == "plateau":  # else the schedule ran to its end: its annealed weights are kept
        net.load_state_dict(best.state)
    net.eval()

    save_featurizer(net, out_path)
    metrics = {
        "task": "rotation" if rotation else "classification",
        "test_accuracy": accuracy(net, test_split.images, test_split.labels, rotation),
        "train_accuracy": accuracy(net, data.all_images[data.scored].numpy(), data.all_labels[data.scored].numpy(),
                                   rotation),
        "train_accuracy_images": len(data.scored),
        "heldout_accuracy": best.accuracy if stopped == "plateau" else best.last,
        "heldout_images": len(data.held_images),
        "stopped": stopped,  # epochs | time (max_minutes) | plateau (patience)
        "epochs": round(seen / len(data.images), 3),
        "best_at_epoch": round(best.images / len(data.images), 3),
        "minutes": round((clock() - started) / 60, 3),
        "feature_dim": cfg.feature_dim,
        "weights_sha256": sha256_file(out_path),
    }
    write_json(metrics_path, metrics)
    return metrics
