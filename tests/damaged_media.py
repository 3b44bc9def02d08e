"""Damaged copies of a good video for the decode-integrity tests, built in the test (nothing
damaged is shipped): cut short as an interrupted download is, or with random middle bytes."""
from pathlib import Path

import numpy as np


def cut_copy(good: Path, path: Path, keep: float = 0.6) -> Path:
    """The first `keep` of good's bytes."""
    data = Path(good).read_bytes()
    Path(path).write_bytes(data[:int(len(data) * keep)])
    return Path(path)


def noisy_copy(good: Path, path: Path, start: float = 0.4, end: float = 0.6, seed: int = 0) -> Path:
    """good with the bytes between `start` and `end` (fractions of its size) replaced by seeded
    random bytes: the container's index is intact, the frames stored there are not."""
    data = bytearray(Path(good).read_bytes())
    a, b = int(len(data) * start), int(len(data) * end)
    data[a:b] = np.random.default_rng(seed).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    Path(path).write_bytes(bytes(data))
    return Path(path)
