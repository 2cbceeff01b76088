"""Pareto dominance on minimisation-form points, shared by strategies and reports.

``a`` dominates ``b`` when it is no worse in every objective and better in one; equal points
never dominate each other, so duplicates share a front. Callers turn maximised objectives into
minimised ones first (``Objective.sign``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def non_dominated_fronts(points: np.ndarray | Sequence[Sequence[float]]) -> list[np.ndarray]:
    """Fronts of indices, best first (Deb et al.'s fast non-dominated sort, vectorised).

    Args:
        points: ``[N, M]`` values, every objective minimised.

    Returns:
        Index arrays (ascending), one per front; together they partition ``range(N)``.
    """
    pts = np.asarray(points, dtype=float)
    if pts.size == 0:
        return []
    le = np.all(pts[:, None, :] <= pts[None, :, :], axis=2)
    lt = np.any(pts[:, None, :] < pts[None, :, :], axis=2)
    dominates = le & lt  # dominates[i, j]: i dominates j
    count = dominates.sum(axis=0)
    fronts: list[np.ndarray] = []
    current = np.flatnonzero(count == 0)
    while current.size:
        fronts.append(current)
        count = count - dominates[current].sum(axis=0)
        count[current] = -1
        current = np.flatnonzero(count == 0)
    return fronts


def pareto_ranks(points: np.ndarray | Sequence[Sequence[float]]) -> list[int]:
    """Rank of each point: 0 = the front, 1 = the front once rank 0 is removed, ..."""
    ranks = [0] * len(points)
    for rank, front in enumerate(non_dominated_fronts(points)):
        for i in front:
            ranks[int(i)] = rank
    return ranks


def crowding_distances(points: Sequence[Sequence[float]], ranks: Sequence[int]) -> list[float]:
    """NSGA-II crowding distance of each point within its front: the sum over objectives of
    the normalised gap between its neighbours; a front's extremes get infinity."""
    out = [0.0] * len(points)
    fronts: dict[int, list[int]] = {}
    for i, r in enumerate(ranks):
        fronts.setdefault(r, []).append(i)
    for members in fronts.values():
        if len(members) <= 2:
            for i in members:
                out[i] = math.inf
            continue
        for k in range(len(points[members[0]])):
            order = sorted(members, key=lambda i, k=k: points[i][k])
            lo, hi = points[order[0]][k], points[order[-1]][k]
            out[order[0]] = out[order[-1]] = math.inf
            if hi == lo:
                continue
            for prev, cur, nxt in zip(order, order[1:], order[2:], strict=False):
                out[cur] += (points[nxt][k] - points[prev][k]) / (hi - lo)
    return out
