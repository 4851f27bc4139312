"""The held-out split: seeded, stratified, a function of the seed alone."""

from __future__ import annotations

import numpy as np

from mobilenets.errors import MobileNetError

# Share of the digits or of a split-less image folder held out for testing (seeded, stratified).
VAL_FRACTION = 0.2


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices (train, val) of a seeded split that keeps ``round(n * val_fraction)``
    of every class's n items for validation (at least one, and at least one for training,
    where the class has two or more)."""
    if not 0.0 < val_fraction < 1.0:
        raise MobileNetError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(max(round(len(members) * val_fraction), 1), len(members) - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
