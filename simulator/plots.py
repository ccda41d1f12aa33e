"""PNG plots of a run: latency CDF, and the replica / load / latency timeline."""
from __future__ import annotations

import math
import os

import numpy as np

from simulator.metrics import H_BINS, H_LO, H_PER_DECADE


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def latency_cdf(result, path: str) -> None:
    plt = _plt()
    sc = result.scenario
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if result.records is not None:
        r = result.records
        m = (r["arrival_s"] >= sc.warmup_s) & (r["status"] == 0)
        x = np.sort((r["completion_s"][m] - r["arrival_s"][m]) * 1e3)
        y = np.arange(1, len(x) + 1) / max(len(x), 1)
    else:
        h = result._gh if hasattr(result, "_gh") else None
        x, y = np.array([]), np.array([])
        if h is not None and h.sum():
            edges = 10 ** (H_LO + np.arange(1, H_BINS + 1) / H_PER_DECADE)
            x, y = edges, np.cumsum(h) / h.sum()
    if len(x):
        ax.plot(x, y, lw=1.5, label="simulated")
        ax.set_xscale("log")
    ax.axvline(sc.slo_ms, color="crimson", ls="--", lw=1, label=f"SLO {sc.slo_ms:g} ms")
    for q in (0.5, 0.95, 0.99):
        ax.axhline(q, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("client latency (ms)")
    ax.set_ylabel("fraction of requests ≤ x")
    ax.set_title(f"Latency CDF — {sc.name or 'scenario'} (seed {sc.seed})")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timeline(result, path: str) -> None:
    plt = _plt()
    sc = result.scenario
    tl = result.timeline
    t = np.array([r["time_s"] for r in tl])
    fig, axes = plt.subplots(3, 1, figsize=(8, 7.5), sharex=True)
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
    ax = axes[2]
    for k, lab in (("latency_p50_ms", "p50"), ("latency_p95_ms", "p95"), ("latency_p99_ms", "p99")):
        ax.plot(t, [r[k] for r in tl], label=lab, lw=1)
    ax.axhline(sc.slo_ms, color="crimson", ls="--", lw=1, label="SLO")
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.set_xlabel("simulated time (s)")
    ax.legend(loc="upper left")
    for a in axes:
        a.grid(alpha=0.3)
        if sc.warmup_s > 0:
            a.axvspan(0, sc.warmup_s, color="grey", alpha=0.1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
