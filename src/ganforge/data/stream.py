"""The training data path: seeded shuffled batches read straight from the memory-mapped prepared arrays.

Only the rows of the current batch are read, so datasets larger than memory stream from disk (the page
cache keeps hot data in memory).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ganforge.data.prepared import PreparedSplit
from ganforge.images import to_unit_range


class BatchStream:
    """Endless shuffled batches of real images in [-1, 1].

    Args:
        split: a prepared split (memory-mapped uint8 images (N, C, R, R)).
        batch_size: images per batch; a ragged epoch tail is dropped.
        seed: seed of the shuffle order.
    """

    def __init__(self, split: PreparedSplit, batch_size: int, seed: int) -> None:
        assert len(split) >= batch_size, (len(split), batch_size)
        self.images = split.images
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[torch.Tensor]:
        n, b = len(self.images), self.batch_size
        while True:
            order = self.rng.permutation(n)
            for start in range(0, n - b + 1, b):
                rows = np.sort(order[start:start + b])  # sorted reads are sequential-ish on the memmap
                yield to_unit_range(torch.from_numpy(self.images[rows]))  # (B, C, R, R)
