"""PNG plots of a run: latency CDF, and the replica / load / latency timeline.

Both are drawn from data whose size does not grow with the number of requests: the CDF from
the run's latency histogram (:attr:`~simulator.engine.Result.latency_histogram`: 200 bins per
decade, so the curve is within 0.6% of the exact one in latency), the timeline from one row per
control interval. Figures are built without ``pyplot`` (no GUI backend, no global state).
"""
from __future__ import annotations

import numpy as np

from simulator.metrics import H_LO, H_PER_DECADE


def _figure(**kw):
    from matplotlib.figure import Figure
    return Figure(**kw)


def _plain_log_labels(axis) -> None:
    """Label a log axis 0.1, 1, 10 (and 20, 50 ... on a short axis) as plain numbers, not 10^k in
    mathtext, which costs ~0.5 s to typeset."""
    from matplotlib.ticker import LogFormatter
    axis.set_major_formatter(LogFormatter())
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def latency_cdf_points(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(latency ms, fraction of requests <= it) at the upper edge of every non-empty histogram bin."""
    total = hist.sum() if hist is not None else 0
    if not total:
        return np.array([]), np.array([])
    keep = np.flatnonzero(hist)
    edges = 10 ** (H_LO + (keep + 1) / H_PER_DECADE)
    return edges, np.cumsum(hist)[keep] / total


def latency_cdf(result, path: str) -> None:
    sc = result.scenario
    fig = _figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    _cdf_axes(ax, [("simulated", result.latency_histogram, 1.5)], sc.slo_ms, f"SLO {sc.slo_ms:g} ms",
              "client latency (ms)", f"Latency CDF — {sc.name or 'scenario'} (seed {sc.seed})")
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.12, top=0.92)   # fixed: tight_layout costs ~1 s
    fig.savefig(path, dpi=110)


def _cdf_axes(ax, curves, slo_ms: float, slo_label: str, xlabel: str, title: str) -> None:
    """Latency CDFs ``curves`` ((label, histogram, line width), ...) on a log axis, the SLO and p50/95/99 lines."""
    drawn = False
    for label, h, lw in curves:
        x, y = latency_cdf_points(h)
        if len(x):
            ax.plot(np.concatenate([[x[0] / 10 ** (1 / H_PER_DECADE)], x]), np.concatenate([[0.0], y]), lw=lw,
                    label=label)
            drawn = True
    if drawn:
        ax.set_xscale("log")
        _plain_log_labels(ax.xaxis)
    ax.axvline(slo_ms, color="crimson", ls="--", lw=1, label=slo_label)
    for q in (0.5, 0.95, 0.99):
        ax.axhline(q, color="grey", lw=0.5, ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of requests ≤ x")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)


def timeline(result, path: str) -> None:
    sc = result.scenario
    tl = result.timeline
    t = np.array([r["time_s"] for r in tl])
    fig = _figure(figsize=(8, 7.5))
    axes = fig.subplots(3, 1, sharex=True)
    ax = axes[0]
    ax.step(t, [r["desired"] for r in tl], where="post", label="desired", lw=1.2)
    ax.step(t, [r["replicas_ready"] for r in tl], where="post", label="ready", lw=1.2)
    ax.set_ylabel("replicas")
    ax.legend(loc="upper left")
    ax.set_title(f"{sc.name or 'scenario'} — {sc.autoscaler.kind} autoscaler (seed {sc.seed})")
    ax = axes[1]
    ax.plot(t, [r["arrival_rps"] for r in tl], label="arrivals", lw=1)
    ax.plot(t, [r["completion_rps"] for r in tl], label="completions", lw=1, alpha=0.8)
    ax.set_ylabel("requests/s")
    ax.legend(loc="upper left")
    _latency_panel(axes[2], t, tl, sc.slo_ms, "")
    for a in axes:
        a.grid(alpha=0.3)
        if sc.warmup_s > 0:
            a.axvspan(0, sc.warmup_s, color="grey", alpha=0.1)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.07, top=0.96, hspace=0.08)
    fig.savefig(path, dpi=110)


def _latency_panel(ax, t, rows, slo_ms: float, prefix: str) -> None:
    """p50 / p95 / p99 per interval (``rows``: timeline rows at times ``t``) on a log axis against the SLO."""
    for k, lab in (("latency_p50_ms", "p50"), ("latency_p95_ms", "p95"), ("latency_p99_ms", "p99")):
        ax.plot(t, [r[k] for r in rows], label=f"{prefix}{lab}", lw=1)
    ax.axhline(slo_ms, color="crimson", ls="--", lw=1, label="SLO")
    ax.set_yscale("log")
    _plain_log_labels(ax.yaxis)
    ax.set_ylabel("latency (ms)")
    ax.set_xlabel("simulated time (s)")
    ax.legend(loc="upper left")


def pipeline_latency_cdf(result, path: str) -> None:
    """End-to-end latency CDF of a pipeline run, with each stage's own (arrival at the stage -> its response)."""
    sc = result.scenario
    fig = _figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    curves = [("end to end", result.latency_histogram, 2.0)] + \
        [(f"stage {st.name}", r.latency_histogram, 1.0) for st, r in zip(sc.pipeline.stages, result.stage_results)]
    _cdf_axes(ax, curves, sc.slo_ms, f"SLO {sc.slo_ms:g} ms (end to end)", "latency (ms)",
              f"Latency CDF — {sc.name or 'pipeline'} (seed {sc.seed})")
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.12, top=0.92)
    fig.savefig(path, dpi=110)


def pipeline_timeline(result, path: str) -> None:
    """Per stage: desired and ready replicas and arrivals; end to end: latency percentiles against the SLO."""
    sc = result.scenario
    names = [st.name for st in sc.pipeline.stages]
    rows = {n: [r for r in result.timeline if r["stage"] == n] for n in names + ["e2e"]}
    fig = _figure(figsize=(8, 2.4 * (len(names) + 1) + 0.6))
    axes = fig.subplots(len(names) + 1, 1, sharex=True)
    for ax, n in zip(axes, names):
        tl = rows[n]
        t = np.array([r["time_s"] for r in tl])
        ax.step(t, [r["desired"] for r in tl], where="post", label="desired", lw=1.2)
        ax.step(t, [r["replicas_ready"] for r in tl], where="post", label="ready", lw=1.2)
        ax.set_ylabel(f"{n}: replicas")
        ax2 = ax.twinx()
        ax2.plot(t, [r["arrival_rps"] for r in tl], color="grey", lw=0.8, label="arrivals (req/s)")
        ax2.set_ylabel("req/s")
        ax.legend(loc="upper left")
        ax2.legend(loc="upper right")
    tl = rows["e2e"]
    _latency_panel(axes[-1], np.array([r["time_s"] for r in tl]), tl, sc.slo_ms, "end-to-end ")
    axes[0].set_title(f"{sc.name or 'pipeline'}: {' -> '.join(names)} (seed {sc.seed})")
    for a in axes:
        a.grid(alpha=0.3)
        if sc.warmup_s > 0:
            a.axvspan(0, sc.warmup_s, color="grey", alpha=0.1)
    fig.subplots_adjust(left=0.1, right=0.9, bottom=0.06, top=0.96, hspace=0.1)
    fig.savefig(path, dpi=110)
