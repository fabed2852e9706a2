"""A seeded, stratified train/val split that streams: one row at a time, bounded memory.

Within each class, rows are numbered in input order and cut into blocks of BLOCK rows. The
number of val rows up to position p of a class is round(p * val_fraction), so every class
gets its share exactly (to within one row) and at least one train row while val_fraction is
at most 0.5. Which rows of a block go to val is a seeded random choice per (seed, class,
block), so the split is random inside each block, identical for the same input and seed,
and needs memory for one block per class, however large the file is.
"""

from __future__ import annotations

import numpy as np

BLOCK = 4096


def val_count(n: int, val_fraction: float) -> int:
    """Val rows among the first `n` rows of a class."""
    return int(np.floor(n * val_fraction + 0.5))


class StratifiedSplit:
    """Assigns rows, batch by batch, to val (True) or train (False)."""

    def __init__(self, class_counts: dict[int, int], val_fraction: float, seed: int):
        self.class_counts = class_counts  # from a first pass: the last block's true size
        self.val_fraction = val_fraction
        self.seed = seed
        self.seen: dict[int, int] = {}  # class id -> rows of that class so far
        self._blocks: dict[int, tuple[int, np.ndarray]] = {}  # class id -> (block, val mask)

    def _mask(self, label: int, block: int) -> np.ndarray:
        cached = self._blocks.get(label)
        if cached is not None and cached[0] == block:
            return cached[1]
        start = block * BLOCK
        stop = min(start + BLOCK, self.class_counts[label])
        k = val_count(stop, self.val_fraction) - val_count(start, self.val_fraction)
        rng = np.random.default_rng([self.seed, label, block])
        mask = np.zeros(BLOCK, dtype=bool)
        mask[rng.choice(stop - start, size=k, replace=False)] = True
        self._blocks[label] = (block, mask)
        return mask

    def assign(self, labels: np.ndarray) -> np.ndarray:
        """Val mask for the next rows, whose class ids are `labels` (in input order)."""
        is_val = np.zeros(len(labels), dtype=bool)
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            first = self.seen.get(int(label), 0)
            positions = first + np.arange(len(rows))
            self.seen[int(label)] = first + len(rows)
            for block in np.unique(positions // BLOCK):
                inside = positions // BLOCK == block
                mask = self._mask(int(label), int(block))
                is_val[rows[inside]] = mask[positions[inside] % BLOCK]
        return is_val


def split_sizes(class_counts: dict[int, int], val_fraction: float) -> tuple[int, int]:
    """(train, val) rows the split produces for these per-class counts (exactly)."""
    val = sum(val_count(n, val_fraction) for n in class_counts.values())
    return sum(class_counts.values()) - val, val
