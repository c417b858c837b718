"""Batches to plan: the shapes that stress a scheduler (deterministic for a given seed)."""
from __future__ import annotations

import numpy as np

PRESETS = ("uniform", "one long + many short", "zipf", "mixed prefill + decode")


def batch(preset: str, batch_size: int = 64, *, seed: int = 0, long_len: int = 65536, short_len: int = 512,
          uniform_len: int = 4096, max_len: int = 32768, zipf_a: float = 1.2) -> tuple[list[int], list[int]]:
    """``(qo_lens, kv_lens)`` for a named preset.

    - ``uniform``: ``batch_size`` decode requests of ``uniform_len`` keys;
    - ``one long + many short``: one decode request of ``long_len`` keys and ``batch_size - 1`` of ``short_len``;
    - ``zipf``: decode requests with Zipf-distributed lengths (a long tail), capped at ``max_len``;
    - ``mixed prefill + decode``: a quarter of the batch are prefill/append chunks (128-2048 new tokens on
      a cached prefix), the rest decode requests of random length.
    """
    rng = np.random.default_rng(seed)
    n = int(batch_size)
    if preset == "uniform":
        return [1] * n, [uniform_len] * n
    if preset == "one long + many short":
        return [1] * n, [long_len] + [short_len] * (n - 1)
    if preset == "zipf":
        kv = np.minimum(np.minimum(rng.zipf(zipf_a, n), max_len) * 64, max_len)
        return [1] * n, kv.astype(int).tolist()
    if preset == "mixed prefill + decode":
        n_pre = max(1, n // 4)
        new = rng.integers(128, 2049, n_pre)
        prefix = rng.integers(0, 4097, n_pre)
        dec = rng.integers(256, 8193, n - n_pre)
        return new.tolist() + [1] * (n - n_pre), (new + prefix).tolist() + dec.tolist()
    raise ValueError(f"preset: expected one of {PRESETS}, got {preset!r}")
