"""Rank 0's live view of training: a cheap in-loop FID on domain features, and sample grids from fixed latents.

The in-loop FID uses the featurizer stage's network through torch-fidelity, a few hundred generated images
and a fixed subset of the training split, whose features torch-fidelity caches after the first call.
Numbers are comparable within a run (and across runs with the same ``fid_samples``), not with the
evaluate stage's FID, which uses more samples.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from torch import nn
from torch.utils.data import Subset
from torch_fidelity.generative_model_modulewrapper import GenerativeModelModuleWrapper

from ganforge.data.prepared import ImageTensorDataset, PreparedSplit
from ganforge.errors import UserError
from ganforge.evaluation.fidelity import UInt8Generator, domain_weights, fidelity_kwargs
from ganforge.images import grid_image, to_uint8


class InLoopFID:
    """FID of a generator against a fixed subset of the training split, cheap enough to run every few kimg.

    Args:
        featurizer_path: the featurizer stage's weights (the domain feature network).
        reference: the prepared training split.
        num_samples: generated images per measurement, and the size of the reference subset (at most the
            split's size).
        seed: seed of the reference subset and of the generated latents (the same every measurement).
    """

    def __init__(self, featurizer_path: str | Path, reference: PreparedSplit, num_samples: int, seed: int) -> None:
        if not Path(featurizer_path).is_file():
            raise UserError(f"{featurizer_path}: featurizer weights not found; the in-loop FID "
                            f"(train.fid_interval_kimg) needs the featurizer stage's output")
        self.featurizer = domain_weights(featurizer_path)
        count = min(num_samples, len(reference))
        rows = np.sort(np.random.default_rng(seed).permutation(len(reference))[:count])
        self.reference = Subset(ImageTensorDataset(reference), rows.tolist())
        self.num_samples, self.seed = num_samples, seed
        # Removed by close(), or by its finalizer if training stops with an error.
        self._cache = tempfile.TemporaryDirectory(prefix="ganforge-inloop-fid-")

    @torch.no_grad()
    def __call__(self, generator: nn.Module, z_dim: int) -> float:
        """FID of ``generator`` (z (B, z_dim) -> [-1, 1] images; copied to CPU fp32 for scoring)."""
        scored = copy.deepcopy(generator).cpu().float().eval().to(memory_format=torch.contiguous_format)
        raw = torch_fidelity.calculate_metrics(
            input1=GenerativeModelModuleWrapper(UInt8Generator(scored), z_dim, "normal", 0),
            input1_model_num_samples=self.num_samples,
            input2=self.reference,
            input2_cache_name="reference",
            cache_root=self._cache.name,
            cache=True,
            fid=True,
            **fidelity_kwargs(self.featurizer, min(250, self.num_samples), self.seed),
        )
        return float(raw[torch_fidelity.KEY_METRIC_FID])

    def close(self) -> None:
        self._cache.cleanup()


class SampleGrid:
    """Grids of one fixed set of latents, so successive snapshots show the same images evolving.

    Args:
        z_dim: latent size.
        count: images per grid.
        seed: seed of the fixed latents.
    """

    def __init__(self, z_dim: int, count: int, seed: int) -> None:
        self.z = torch.randn(count, z_dim, generator=torch.Generator().manual_seed(seed))  # (count, z_dim)

    @torch.no_grad()
    def __call__(self, generator: nn.Module):
        """A PIL grid of ``generator``'s images for the fixed latents, at native size (these files are
        committed with the run's plots, so they are kept small)."""
        device = next(generator.parameters()).device
        return grid_image(to_uint8(generator(self.z.to(device)).cpu()), min_width_px=0)
