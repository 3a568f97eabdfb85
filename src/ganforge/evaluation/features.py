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
EVAL_IMAGES = 10_000
WARMUP = 0.25  # share of the schedule over which the learning rate rises from lr / 25 to lr (as OneCycle)
PATIENCE_FROM = 0.625  # scores count toward patience once the learning rate has fallen to half its peak


def learning_rate(lr: float, progress: float) -> float:
    """OneCycle's shape over ``progress`` in [0, 1]: a linear rise from ``lr / 25``, then a cosine to zero."""
    if progress < WARMUP:
        return lr * (0.04 + 0.96 * progress / WARMUP)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - WARMUP) / (1 - WARMUP))))


def train_featurizer(cfg: FeaturizerConfig, data_dir: str | Path, out_path: str | Path, metrics_path: str | Path,
                     clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Train the domain network on the prepared training split; write weights and its test accuracy (of the
    classes, or of the rotations on unlabeled data).

    Training ends after ``cfg.epochs`` passes, at ``cfg.max_minutes`` of wall time (the learning-rate schedule
    follows whichever of the two is further along, so it has ended by then), or once the held-out accuracy has
    not improved for ``cfg.patience`` evaluations made after the learning rate has fallen to half its peak,
    which keeps the weights with the best held-out accuracy; otherwise the annealed last weights are kept (a
    small held-out set's best is noise). Which one ended it is recorded in the metrics.
    """
    started = clock()
    train_split, test_split = load_split(data_dir, "train"), load_split(data_dir, "test")
    rotation = len(train_split.class_names) < 2  # unlabeled: self-supervised rotation prediction
    outputs = ROTATIONS if rotation else len(train_split.class_names)
    torch.manual_seed(cfg.seed)
    order = torch.Generator().manual_seed(cfg.seed + 1)
    net = DomainFeatureNet(train_split.channels, outputs, cfg.width, cfg.feature_dim)
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate(cfg.lr, 0.0))
    all_images = torch.from_numpy(np.array(train_split.images))  # (N, C, R, R) uint8
    all_labels = torch.from_numpy(train_split.labels)
    split = torch.randperm(len(all_images), generator=torch.Generator().manual_seed(cfg.seed + 2))
    held = split[:min(HOLDOUT_MAX, int(len(all_images) * HOLDOUT_FRACTION))]
    images, labels = all_images[split[len(held):]], all_labels[split[len(held):]]
    held_images, held_labels = all_images[held].numpy(), all_labels[held].numpy()
    steps_per_epoch = int(np.ceil(len(images) / cfg.batch_size))
    total_steps = cfg.epochs * steps_per_epoch
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes is not None else math.inf
    eval_every = min(EVAL_IMAGES, len(images))

    best = {"heldout_accuracy": -1.0, "images": 0}
    best_state: dict[str, torch.Tensor] = {}
    step, seen, unscored, stale, stopped = 0, 0, 0, 0, "epochs"

    def evaluate(progress: float) -> bool:
        """Score the held-out images; whether training should stop for want of improvement."""
        nonlocal unscored, stale
        score = accuracy(net, held_images, held_labels, rotation) if len(held) else 0.0
        net.train()
        unscored = 0
        best["last"] = score
        if score > best["heldout_accuracy"] or not best_state:
            best.update(heldout_accuracy=score, images=seen)
            best_state.update({k: v.clone() for k, v in net.state_dict().items()})
            stale = 0
        elif progress >= PATIENCE_FROM:  # near its peak rate the score wanders; improvement comes as it falls
            stale += 1
        bar.set_postfix(heldout=f"{best['heldout_accuracy']:.3f}")
        return cfg.patience > 0 and len(held) > 0 and stale >= cfg.patience

    net.train()
    with tqdm(total=total_steps, desc="featurizer", unit="step", mininterval=1.0) as bar:
        while stopped == "epochs" and step < total_steps:
            perm = torch.randperm(len(images), generator=order)
            for start in range(0, len(images), cfg.batch_size):
                progress = max(step / total_steps, (clock() - started) / budget_s)
                if progress >= 1:
                    stopped = "time"
                    break
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(cfg.lr, progress)
                idx = perm[start:start + cfg.batch_size]
                x = images[idx]
                # Random 1-pixel shifts keep the classifier from memorising exact pixel positions.
                x = torch.roll(x, shifts=tuple(torch.randint(-1, 2, (2,), generator=order).tolist()), dims=(2, 3))
                y = labels[idx]
                if rotation:
                    y = torch.randint(0, ROTATIONS, (len(idx),), generator=order)
                    x = rotate(x, y)
                loss = F.cross_entropy(net(x)[1], y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step, seen, unscored = step + 1, seen + len(idx), unscored + len(idx)
                bar.update()
                if unscored >= eval_every and evaluate(progress) and step < total_steps:
                    stopped = "plateau"
                    break
        if unscored or not best_state:
            evaluate(1.0)
    if stopped == "plateau":  # else the schedule ran to its end: its annealed weights are kept
        net.load_state_dict(best_state)
    net.eval()

    save_featurizer(net, out_path)
    metrics = {
        "task": "rotation" if rotation else "classification",
        "test_accuracy": accuracy(net, test_split.images, test_split.labels, rotation),
        "train_accuracy": accuracy(net, train_split.images, train_split.labels, rotation),
        "heldout_accuracy": best["heldout_accuracy"] if stopped == "plateau" else best["last"],
        "heldout_images": len(held),
        "stopped": stopped,  # epochs | time (max_minutes) | plateau (patience)
        "epochs": round(seen / len(images), 3),
        "best_at_epoch": round(best["images"] / len(images), 3),
        "minutes": round((clock() - started) / 60, 3),
        "feature_dim": cfg.feature_dim,
        "weights_sha256": sha256_file(out_path),
    }
    write_json(metrics_path, metrics)
    return metrics
