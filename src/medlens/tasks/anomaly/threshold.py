"""The anomaly operating point: a score threshold that flags a chosen fraction of validation normals."""

from __future__ import annotations

import numpy as np


def fit_threshold(normal_scores: np.ndarray, fpr: float) -> tuple[float, float]:
    """Threshold that flags at most a fraction ``fpr`` of the given normal scores (``score >= threshold``).

    With ``n`` normals, ``floor(fpr * n)`` of them end up at or above the threshold (fewer only when scores
    tie); the threshold lies midway between the last flagged and the first unflagged score.

    Returns:
        (threshold, the false-positive rate it gives on these scores).

    Example:
        >>> fit_threshold(np.arange(100.0), 0.05)
        (94.5, 0.05)
    """
    s = np.sort(np.asarray(normal_scores, dtype=np.float64).ravel())[::-1]
    s = s[np.isfinite(s)]
    if len(s) == 0:
        raise ValueError("no normal validation scores to fit the anomaly threshold on")
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"false-positive rate must be in (0, 1), got {fpr}")
    k = int(np.floor(fpr * len(s) + 1e-9))  # how many normals may be flagged
    if k == 0:
        # a margin above the largest score: batched and single-image passes differ by float rounding
        thr = float(s[0] + 1e-6 * max(1.0, abs(s[0])))
    else:
        hi, lo = s[k - 1], s[k]
        mid = (hi + lo) / 2.0
        thr = float(mid) if lo < mid <= hi else float(np.nextafter(hi, np.inf))  # ties: flag fewer, not more
    return thr, float(np.mean(s >= thr))
