"""The split contract shared by every method.

From a dataset's *train* split, carve three disjoint, stratified, seeded parts by index:
``train`` (the rest, default 80 %), ``val`` (model selection for every method) and ``meta`` (held-out
feedback for meta-methods: MetaDistil's quiz set, EV3's assess/decide halves). The dataset's *test* split
is never touched here; it is only used for reporting.
"""

from __future__ import annotations

import numpy as np


def carve(labels: np.ndarray, *, seed: int, val: float, meta: float) -> dict[str, np.ndarray]:
    """Sorted index arrays ``{"train", "val", "meta"}`` into ``labels`` (N,).

    Per class ``c`` with ``n_c`` examples (in a seeded random order): ``round(val · n_c)`` go to ``val``,
    ``round(meta · n_c)`` to ``meta`` and the rest to ``train``, so every part keeps the class proportions.
    """
    if not (0 < val and 0 < meta and val + meta < 1):
        raise ValueError(f"split fractions need 0 < val, 0 < meta and val + meta < 1, got val={val}, meta={meta}")
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "meta": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val, n_meta = round(val * len(idx)), round(meta * len(idx))
        parts["val"].append(idx[:n_val])
        parts["meta"].append(idx[n_val : n_val + n_meta])
        parts["train"].append(idx[n_val + n_meta :])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
