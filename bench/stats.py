"""The little statistics the benchmark needs: percentiles and a least-squares line."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


@dataclass(frozen=True)
class Line:
    """y = intercept + slope * x, fitted over `points` (x, y) pairs."""

    slope: float
    intercept: float
    points: int

    @classmethod
    def fit(cls, xs: list[float], ys: list[float]) -> Line | None:
        if len(xs) < 2 or len(set(xs)) < 2:
            return None
        slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
        return cls(float(slope), float(intercept), len(xs))
