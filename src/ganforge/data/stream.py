"""The training data path: seeded shuffled batches read straight from the memory-mapped prepared arrays.

Only the rows of the current batch are read, so datasets larger than memory stream from disk (the page
cache keeps hot data in memory). The stream's position is part of its state, so a resumed run continues
with exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ganforge.data.prepared import PreparedSplit
from ganforge.images import to_unit_range


class BatchStream:
    """Endless shuffled batches of real images in [-1, 1].

    Under torchrun every rank builds the stream with the same seed, so all ranks walk one shuffled order;
    each global batch is split by rank (rows ``rank::world_size``), like a DistributedSampler.

    Args:
        split: a prepared split (memory-mapped uint8 images (N, C, R, R)).
        batch_size: images per global batch; a ragged epoch tail is dropped.
        seed: seed of the shuffle order (the same on every rank).
        rank: this process's share of each batch.
        world_size: number of shares; must divide ``batch_size``.
    """

    def __init__(self, split: PreparedSplit, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        assert len(split) >= batch_size, (len(split), batch_size)
        assert batch_size % world_size == 0 and 0 <= rank < world_size, (batch_size, rank, world_size)
        self.images = split.images
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.rng = np.random.default_rng(seed)
        self.order: np.ndarray | None = None
        self.cursor = 0

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> torch.Tensor:
        b = self.batch_size
        if self.order is None or self.cursor + b > len(self.order):  # new epoch
            self.order, self.cursor = self.rng.permutation(len(self.images)), 0
        rows = self.order[self.cursor:self.cursor + b][self.rank::self.world_size]
        self.cursor += b
        rows = np.sort(rows)  # sorted reads are sequential-ish on the memmap
        return to_unit_range(torch.from_numpy(self.images[rows]))  # (B / world_size, C, R, R)

    def state_dict(self) -> dict[str, Any]:
        order = None if self.order is None else torch.from_numpy(self.order)
        return {"rng": self.rng.bit_generator.state, "order": order, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order = None if state["order"] is None else state["order"].numpy()
        self.cursor = state["cursor"]
