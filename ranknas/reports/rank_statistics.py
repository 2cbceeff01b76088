"""Rank agreement of two NE lists: Kendall τ, Spearman ρ and top-10% overlap, with paired
bootstrap confidence intervals (used by :mod:`ranknas.reports.rankcorr`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from ranknas.errors import ConfigError

__all__ = ["STATISTICS", "rank_statistics"]

#: Summary statistics, each reported as ``{"value", "lo", "hi"}``.
STATISTICS = ("kendall_tau", "spearman", "top10_overlap")


def _check_bootstrap(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError("bootstrap", f"expected an integer >= 0, got {value!r}")


def _top_overlap(x: np.ndarray, y: np.ndarray, fraction: float = 0.1) -> float:
    """Fraction of the ``fraction`` lowest of ``x`` that are also among the lowest of ``y``."""
    k = max(1, round(fraction * len(x)))
    top_x = set(np.argsort(x, kind="stable")[:k].tolist())
    top_y = set(np.argsort(y, kind="stable")[:k].tolist())
    return len(top_x & top_y) / k


def _kendall(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(x, y).statistic)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "kendall_tau": _kendall, "spearman": _spearman, "top10_overlap": _top_overlap}


def rank_statistics(standalone: Sequence[float], supernet: Sequence[float], *,
                    bootstrap: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Kendall τ, Spearman ρ and top-10% overlap of two NE lists, with bootstrap 95% CIs.

    The top-10% overlap is the fraction of the standalone top 10% (lowest NE, at least one
    architecture) that is also in the supernet top 10%. The confidence intervals come from
    ``scipy.stats.bootstrap`` with paired resampling (architectures are resampled with both
    their NEs), ``method='percentile'``, ``n_resamples=bootstrap`` and a generator seeded with
    ``seed``. Resamples where a statistic is undefined (e.g. all-equal NEs) are dropped from
    the percentiles; a CI is nan when no resample is usable or ``bootstrap`` is 0.

    Args:
        standalone: Standalone NE per architecture.
        supernet: Supernet NE of the same architectures, in the same order.
        bootstrap: Bootstrap resamples (0: no CIs).
        seed: Seeds the bootstrap.

    Returns:
        ``{name: {"value", "lo", "hi"}}`` for every name in :data:`STATISTICS`.

    Raises:
        ConfigError: lists of different lengths, fewer than 2 entries, or non-finite values.
    """
    from scipy.stats import bootstrap as scipy_bootstrap

    x, y = np.asarray(standalone, dtype=float), np.asarray(supernet, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ConfigError("rank_statistics", f"need two 1-d lists of equal length, got "
                          f"shapes {x.shape} and {y.shape}")
    if len(x) < 2:
        raise ConfigError("rank_statistics", f"need at least 2 architectures, got {len(x)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ConfigError("rank_statistics", "NE values must be finite")
    _check_bootstrap(bootstrap)
    out: dict[str, dict[str, float]] = {}
    for name in STATISTICS:
        fn = _FUNCTIONS[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant resamples: nan tau, degenerate data
            value = fn(x, y)
            lo = hi = math.nan
            if bootstrap > 0:
                res = scipy_bootstrap((x, y), fn, paired=True, vectorized=False,
                                      n_resamples=bootstrap, confidence_level=0.95,
                                      method="percentile", rng=np.random.default_rng(seed))
                lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
                dist = np.asarray(res.bootstrap_distribution, dtype=float)
                if not (math.isfinite(lo) and math.isfinite(hi)) and np.isfinite(dist).any():
                    lo, hi = (float(v) for v in np.nanpercentile(dist, [2.5, 97.5]))
        out[name] = {"value": value, "lo": lo, "hi": hi}
    return out
