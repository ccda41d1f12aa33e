"""Pure fitting functions: duration distributions, batch-size curves, interference.

Selection criterion for a duration sample (per batch size, overhead, start-up):
every candidate family is fitted by maximum likelihood —

- ``gamma`` and ``lognormal`` and ``weibull`` (location 0),
- ``shifted_exponential`` and ``shifted_gamma`` (location = a fitted shift below the minimum),

— and ranked by AIC = 2k − 2 ln L. The lowest-AIC family is kept if its
Kolmogorov–Smirnov distance to the sample is at most ``KS_MAX`` (0.05, i.e. the
fitted CDF is never more than 5 points off the empirical one); otherwise the
sample's own quantiles (``empirical``, 101 levels) are used, and the report
says so. Samples smaller than ``MIN_SAMPLES`` are not fitted (flagged partial).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

from simulator.config import Dist

KS_MAX = 0.05
MIN_SAMPLES = 30
EMPIRICAL_LEVELS = 101
FAMILIES = ("gamma", "lognormal", "weibull", "shifted_exponential", "shifted_gamma")


@dataclass
class FamilyFit:
    family: str
    params: dict
    loglik: float
    k: int
    aic: float
    ks: float
    ks_pvalue: float
    mean: float
    cv: float
    shift: float


@dataclass
class DistFit:
    """The chosen distribution for one sample, with every candidate's scores."""

    dist: Dist
    chosen: str
    n: int
    candidates: list[FamilyFit] = field(default_factory=list)
    note: str = ""

    def report(self) -> dict:
        return {"chosen": self.chosen, "n": self.n, "note": self.note,
                "dist": self.dist.to_dict("ms"),
                "candidates": [{"family": c.family, "aic": round(c.aic, 2), "ks": round(c.ks, 4),
                                "ks_pvalue": c.ks_pvalue, "mean": c.mean, "cv": c.cv, "shift": c.shift}
                               for c in sorted(self.candidates, key=lambda c: c.aic)]}


def _frozen(family: str, p: dict):
    if family in ("gamma", "shifted_gamma"):
        return stats.gamma(p["a"], loc=p.get("loc", 0.0), scale=p["scale"])
    if family == "lognormal":
        return stats.lognorm(p["s"], scale=p["scale"])
    if family == "weibull":
        return stats.weibull_min(p["c"], scale=p["scale"])
    if family == "shifted_exponential":
        return stats.expon(loc=p["loc"], scale=p["scale"])
    raise ValueError(family)


def _fit_family(family: str, x: np.ndarray) -> FamilyFit | None:
    xmin = float(x.min())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if family == "gamma":
                a, _, sc = stats.gamma.fit(x, floc=0.0)
                p, k = {"a": a, "scale": sc}, 2
            elif family == "lognormal":
                s, _, sc = stats.lognorm.fit(x, floc=0.0)
                p, k = {"s": s, "scale": sc}, 2
            elif family == "weibull":
                c, _, sc = stats.weibull_min.fit(x, floc=0.0)
                p, k = {"c": c, "scale": sc}, 2
            elif family == "shifted_exponential":
                # MLE: loc = min (bias-corrected), scale = mean - loc
                n = len(x)
                scale = (x.mean() - xmin) * n / (n - 1)
                loc = xmin - scale / n
                p, k = {"loc": loc, "scale": max(scale, 1e-12)}, 2
            elif family == "shifted_gamma":
                # profile likelihood over the shift in [0, min)
                def nll(frac):
                    loc = xmin * frac
                    a, _, sc = stats.gamma.fit(x - loc, floc=0.0)
                    return -np.sum(stats.gamma.logpdf(x - loc, a, scale=sc))
                r = optimize.minimize_scalar(nll, bounds=(0.0, 0.999), method="bounded",
                                             options={"xatol": 1e-4})
                loc = xmin * r.x
                a, _, sc = stats.gamma.fit(x - loc, floc=0.0)
                p, k = {"a": a, "loc": loc, "scale": sc}, 3
            else:
                raise ValueError(family)
            d = _frozen(family, p)
            ll = float(np.sum(d.logpdf(x)))
            if not math.isfinite(ll):
                return None
            ks = stats.kstest(x, d.cdf)
            mean, var = float(d.mean()), float(d.var())
        except (ValueError, RuntimeError, FloatingPointError):
            return None
    shift = float(p.get("loc", 0.0))
    cv = math.sqrt(var) / (mean - shift) if mean > shift else 0.0
    return FamilyFit(family=family, params=p, loglik=ll, k=k, aic=2 * k - 2 * ll, ks=float(ks.statistic),
                     ks_pvalue=float(ks.pvalue), mean=mean, cv=cv, shift=max(shift, 0.0))


def to_dist(f: FamilyFit) -> Dist:
    """Express a fitted family in the simulator's (kind, mean, cv, shift) terms."""
    kind = {"gamma": "gamma", "shifted_gamma": "gamma", "lognormal": "lognormal", "weibull": "weibull",
            "shifted_exponential": "exponential"}[f.family]
    if kind == "exponential":
        return Dist(kind, mean=f.mean, cv=1.0, shift=f.shift)
    return Dist(kind, mean=f.mean, cv=max(f.cv, 1e-6), shift=f.shift)


def empirical_dist(x: np.ndarray, levels: int = EMPIRICAL_LEVELS) -> Dist:
    q = np.quantile(x, np.linspace(0, 1, levels))
    return Dist("empirical", quantiles=tuple(float(v) for v in q))


def fit_duration(x, families=FAMILIES, ks_max: float = KS_MAX) -> DistFit:
    """Fit a positive duration sample (any unit) and choose a family (see module docstring)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < MIN_SAMPLES:
        raise ValueError(f"only {len(x)} samples (need >= {MIN_SAMPLES})")
    if np.any(x <= 0):
        raise ValueError(f"{int(np.sum(x <= 0))} non-positive durations")
    if np.ptp(x) <= 1e-12 * x.mean():
        return DistFit(Dist("deterministic", float(x.mean()), 0.0), "deterministic", len(x),
                       note="all samples equal")
    cands = [f for f in (_fit_family(fam, x) for fam in families) if f is not None]
    if not cands:
        return DistFit(empirical_dist(x), "empirical", len(x), [], note="no parametric family could be fitted")
    best = min(cands, key=lambda c: c.aic)
    if best.ks <= ks_max:
        return DistFit(to_dist(best), best.family, len(x), cands)
    return DistFit(empirical_dist(x), "empirical", len(x), cands,
                   note=f"best AIC family {best.family} has KS distance {best.ks:.3f} > {ks_max}")


# --------------------------------------------------------------------------- batch-size curve


def fit_mean_curve(batch_sizes, means, weights=None) -> dict:
    """Weighted least-squares line ``mean(b) = a + c * b`` (ms); the per-item cost ``c``.

    Used to check smoothness across batch sizes and reported in provenance; the
    simulator interpolates between fitted batch sizes itself.
    """
    b = np.asarray(batch_sizes, float)
    m = np.asarray(means, float)
    w = np.ones_like(b) if weights is None else np.asarray(weights, float)
    if len(b) == 1:
        return {"intercept_ms": float(m[0]), "per_item_ms": 0.0, "r2": 1.0}
    A = np.vstack([np.ones_like(b), b]).T * np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(A, m * np.sqrt(w), rcond=None)
    pred = coef[0] + coef[1] * b
    ss_res = float(np.sum(w * (m - pred) ** 2))
    ss_tot = float(np.sum(w * (m - np.average(m, weights=w)) ** 2))
    return {"intercept_ms": float(coef[0]), "per_item_ms": float(coef[1]),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}


# --------------------------------------------------------------------------- interference


def fit_interference(concurrency, slowdown, node_cores: int) -> dict:
    """Fit ``slowdown(k) = 1 + alpha * max(0, k - node_cores)`` by least squares through (k, slowdown).

    ``concurrency``: number of batches executing at once on the node; ``slowdown``:
    mean compute time at that concurrency divided by the mean at concurrency 1.
    Returns ``alpha`` (>= 0) and the fit's residual RMS.
    """
    k = np.asarray(concurrency, float)
    s = np.asarray(slowdown, float)
    x = np.maximum(0.0, k - node_cores)
    if not np.any(x > 0):
        return {"alpha": 0.0, "rms": float(np.sqrt(np.mean((s - 1) ** 2))) if len(s) else 0.0, "points": len(k)}
    alpha = max(0.0, float(np.sum(x * (s - 1)) / np.sum(x * x)))
    rms = float(np.sqrt(np.mean((1 + alpha * x - s) ** 2)))
    return {"alpha": alpha, "rms": rms, "points": len(k)}
