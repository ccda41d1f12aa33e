"""Load forecasts for predictive policies: the peak arrival rate of the next few seconds from the recent past.

- :func:`max_forecast` (IPA's baseline predictor, Ghafouri et al. 2023): the largest rate observed in the
  window;
- :func:`trend_forecast`: ``max(max_forecast, the least-squares line through the window extrapolated to the
  end of the horizon)``: reacts earlier to ramps, never below the max predictor.

:class:`RateWindow` keeps the ``(time, rate)`` observations of the last ``window_s`` seconds (an observation
stamped ``t`` covers ``[t - interval, t)``: it is kept while ``t > now - window_s``).
"""
from __future__ import annotations

from collections import deque


class RateWindow:
    def __init__(self, window_s: float):
        self.window_s = float(window_s)
        self.points: deque[tuple[float, float]] = deque()

    def add(self, t: float, rate: float) -> None:
        self.points.append((float(t), float(rate)))
        self.trim(t)

    def trim(self, now: float) -> None:
        """Drop the observations that no longer overlap ``(now - window_s, now]``."""
        while self.points and self.points[0][0] <= now - self.window_s:
            self.points.popleft()

    def clear(self) -> None:
        self.points.clear()


def max_forecast(points) -> float:
    """The largest rate in ``points`` ((t, rate) pairs); 0 when empty."""
    return max((v for _, v in points), default=0.0)


def trend_forecast(points, at: float) -> float:
    """``max(max_forecast, least-squares line through points evaluated at time at)`` (needs 3 points for a
    line; fewer: the max)."""
    pts = list(points)
    peak = max_forecast(pts)
    if len(pts) < 3:
        return peak
    mt = sum(t for t, _ in pts) / len(pts)
    mv = sum(v for _, v in pts) / len(pts)
    sxx = sum((t - mt) ** 2 for t, _ in pts)
    if sxx <= 0:
        return peak
    slope = sum((t - mt) * (v - mv) for t, v in pts) / sxx
    return max(peak, mv + slope * (at - mt))


__all__ = ["RateWindow", "max_forecast", "trend_forecast"]
