"""IPA-style joint configuration of an inference pipeline: per stage a variant, a batch size and a replica count.

Source: Ghafouri et al., "IPA: Inference Pipeline Adaptation to Achieve High Accuracy and Cost-Efficiency"
(2023; code: github.com/reconfigurable-ml-pipeline/ipa, ``optimizer/optimizer.py``). Every adaptation interval
IPA predicts the arrival rate ``lambda`` of the next interval and solves, over each stage's variant ``v``,
batch size ``b`` (powers of two up to a cap) and replicas ``n``::

    maximise   alpha * accuracy  -  beta * sum(replicas)  -  gamma * sum(batch sizes)
    subject to n_s * throughput_v(b) >= lambda                        (every stage keeps up)
               sum_s [ latency_v(b) + (b - 1) / lambda ] <= SLO      (batch compute + waiting to fill a batch)

with ``throughput_v(b) = b / latency_v(b)`` per model instance and the pipeline's accuracy the product of its
stages' (IPA's ``multiply``; ``mean`` is its ``average``). IPA hands this to Gurobi. Here it is solved by
**exact enumeration**, and that is exact, not a heuristic: the latency constraint does not depend on the
replica counts and the objective falls with every replica, so for each choice of (variant, batch) per stage
the best replica count is the smallest one meeting the throughput constraint (:func:`replicas_needed`); what is
left is at most (variants x batch sizes) ** stages combinations (3 stages x 3 variants x 5 batch sizes: 3375),
a few milliseconds of Python per decision. No solver dependency; ties are broken by a stated order (fewer
replicas, then smaller batches, then the earlier-listed variant).

As a policy (``autoscaler: {kind: ipa, ...}`` at the top of a pipeline scenario, :class:`IPAPolicy`): every
interval it forecasts the next interval's peak arrival rate from the end-to-end arrival rates of the last
``window_s`` seconds (:mod:`simulator.forecast`: IPA's max-of-window predictor, ``trend``, or ``lstm``, IPA's
LSTM predictor, whose horizon is the interval plus :func:`startup_lead`, with the max predictor as its fallback),
builds each
stage's options from the scenario's own service models (the mean compute of a batch of ``b`` of each variant),
and answers the configuration above.

Two departures from IPA, both stated: (1) the stage's hop (router / load balancer, per request) is part of the
latency sum (IPA folds it into profiled latencies); (2) ``max_utilization`` (default 0.8): a stage is provisioned
for ``lambda / max_utilization``, because IPA's latency constraint has no queueing term and a stage provisioned
at exactly its throughput is at utilisation 1, where queues grow without bound. When no combination meets the
SLO at the predicted load, the fastest configuration is taken: each stage's highest-throughput option at the
largest replica count it needs (capped at ``max_replicas``), so the pipeline sheds as little as it can.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

from simulator.forecast import FORECASTS, RateWindow, make_forecaster
from simulator.pipeline_policy import PipelinePolicy, StageDecision, register_pipeline


@dataclass(frozen=True)
class StageOption:
    """One (variant, batch size) of a stage with its profile: mean compute of a batch (ms), accuracy, the
    stage's hop (ms) and model instances per replica."""

    variant: str
    accuracy: float
    batch: int
    batch_ms: float
    hop_ms: float = 0.0
    instances: int = 1

    @property
    def throughput_rps(self) -> float:
        """Requests per second one replica serves at this batch size: ``instances * b / latency(b)``."""
        return self.instances * self.batch / (self.batch_ms * 1e-3)


@dataclass(frozen=True)
class StageChoice:
    variant: str
    batch: int
    replicas: int


def batch_wait_ms(batch: int, arrival_rps: float) -> float:
    """IPA's queueing term: the time to collect a batch of ``batch`` at ``arrival_rps``, ``(b - 1) / lambda``."""
    if batch <= 1:
        return 0.0
    return math.inf if arrival_rps <= 0 else (batch - 1) / arrival_rps * 1e3


def replicas_needed(opt: StageOption, arrival_rps: float, max_utilization: float, min_replicas: int) -> int:
    """The smallest replica count with ``n * throughput * max_utilization >= lambda`` (at least ``min_replicas``)."""
    need = math.ceil(round(arrival_rps / (opt.throughput_rps * max_utilization), 9)) if arrival_rps > 0 else 0
    return max(int(min_replicas), need)


def path_latency_ms(opts: Sequence[StageOption], arrival_rps: float) -> float:
    """IPA's end-to-end latency estimate: per stage the batch compute, the batch-filling wait and the hop."""
    return sum(o.batch_ms + batch_wait_ms(o.batch, arrival_rps) + o.hop_ms for o in opts)


def pipeline_accuracy(accuracies: Sequence[float], rule: str) -> float:
    """``product`` (IPA's ``multiply``) or ``mean`` (IPA's ``average``) of the stages' accuracies."""
    return math.prod(accuracies) if rule == "product" else sum(accuracies) / len(accuracies)


def configure(options: Sequence[Sequence[StageOption]], arrival_rps: float, slo_ms: float, *,
              accuracy_rule: str = "product", accuracy_weight: float = 1.0, replica_weight: float = 0.01,
              batch_weight: float = 1e-4, max_utilization: float = 0.8,
              min_replicas: Sequence[int] | None = None, max_replicas: Sequence[int] | None = None,
              ) -> tuple[list[StageChoice], bool]:
    """The best configuration for ``arrival_rps`` by exact enumeration (module docstring). Returns one choice
    per stage and whether it meets the constraints (False: the fastest-configuration fallback)."""
    k = len(options)
    lo = list(min_replicas) if min_replicas is not None else [1] * k
    hi = list(max_replicas) if max_replicas is not None else [10 ** 9] * k
    best, best_key = None, None
    for combo in itertools.product(*options):
        reps = [replicas_needed(o, arrival_rps, max_utilization, lo[s]) for s, o in enumerate(combo)]
        if any(r > hi[s] for s, r in enumerate(reps)):
            continue
        if path_latency_ms(combo, arrival_rps) > slo_ms:
            continue
        acc = pipeline_accuracy([o.accuracy for o in combo], accuracy_rule)
        value = accuracy_weight * acc - replica_weight * sum(reps) - batch_weight * sum(o.batch for o in combo)
        key = (-value, sum(reps), sum(o.batch for o in combo))
        if best_key is None or key < best_key:
            best, best_key = (combo, reps), key
    if best is not None:
        combo, reps = best
        return [StageChoice(o.variant, o.batch, r) for o, r in zip(combo, reps)], True
    out = []
    for s, opts in enumerate(options):
        o = max(opts, key=lambda x: (x.throughput_rps, -x.batch))
        out.append(StageChoice(o.variant, o.batch, min(hi[s], replicas_needed(o, arrival_rps, max_utilization, lo[s]))))
    return out, False


def stage_options(stage, batch_sizes: Sequence[int] | None = None) -> list[StageOption]:
    """Every (variant, batch size) of a :class:`simulator.config.StageSpec`, profiled from its service models:
    batch sizes ``batch_sizes`` (default: the powers of two up to the stage's ``max_batch_size``, as IPA) not
    above ``max_batch_size``."""
    from simulator.service import build_service_model
    mbs = stage.batching.max_batch_size
    sizes = sorted({b for b in (batch_sizes or [2 ** i for i in range(int(math.log2(mbs)) + 1)]) if 1 <= b <= mbs})
    out = []
    for v in stage.variants:
        model = build_service_model(v.service, mbs)
        for b in sizes:
            out.append(StageOption(v.name, v.accuracy, b, model.mean_ms(b), stage.hop.mean_value,
                                   stage.batching.instances))
    return out


IPA_KEYS = {"accuracy_weight", "replica_weight", "batch_weight", "max_utilization", "batch_sizes", "forecast",
            "window_s"}


class IPAPolicy(PipelinePolicy):
    """The IPA-style configurator as a pipeline policy (module docstring)."""

    kind = "ipa"

    def __init__(self, options, slo_ms: float, accuracy_rule: str, min_replicas, max_replicas,
                 accuracy_weight: float = 1.0, replica_weight: float = 0.01, batch_weight: float = 1e-4,
                 max_utilization: float = 0.8, forecast: str = "max", window_s: float = 120.0,
                 interval_s: float = 10.0, lead_s: float = 0.0):
        self.options = options
        self.slo_ms = float(slo_ms)
        self.rule = accuracy_rule
        self.lo, self.hi = list(min_replicas), list(max_replicas)
        self.weights = dict(accuracy_weight=accuracy_weight, replica_weight=replica_weight, batch_weight=batch_weight,
                            max_utilization=max_utilization)
        self.forecast_kind = forecast
        self.forecaster = make_forecaster(forecast, interval_s, lead_s)
        self.window = RateWindow(window_s)
        self.last_forecast = math.nan
        self.feasible = True

    def reset(self) -> None:
        self.window.clear()

    def decide(self, obs) -> list[StageDecision]:
        rate = float(obs.e2e.arrival_rps)
        if math.isfinite(rate):
            self.window.add(obs.time_s, rate)
        else:
            self.window.trim(obs.time_s)
        pts = self.window.points
        lam = self.forecaster(pts, obs.time_s + obs.interval_s)
        self.last_forecast = lam
        choice, self.feasible = configure(self.options, lam, self.slo_ms, accuracy_rule=self.rule,
                                          min_replicas=self.lo, max_replicas=self.hi, **self.weights)
        return [StageDecision(c.replicas, c.variant, c.batch) for c in choice]

    @classmethod
    def _parse(cls, params, path):
        from simulator.schema import check_keys, choice, int_list, number
        check_keys(params, IPA_KEYS, path)
        return dict(accuracy_weight=number(params, "accuracy_weight", path, 1.0, lo=0),
                    replica_weight=number(params, "replica_weight", path, 0.01, lo=0),
                    batch_weight=number(params, "batch_weight", path, 1e-4, lo=0),
                    max_utilization=number(params, "max_utilization", path, 0.8, lo=0, hi=1, lo_open=True),
                    forecast=choice(params, "forecast", path, FORECASTS, "max"),
                    window_s=number(params, "window_s", path, 120.0, lo=0, lo_open=True)), \
            (int_list(params, "batch_sizes", path, (), lo=1) if params.get("batch_sizes") else None)

    @classmethod
    def validate_params(cls, params, path):
        cls._parse(params, path)

    @classmethod
    def build(cls, params, sc) -> "IPAPolicy":
        kw, sizes = cls._parse(params, "autoscaler")
        stages = sc.pipeline.stages
        return cls([stage_options(st, sizes) for st in stages], sc.slo_ms, sc.pipeline.accuracy,
                   [st.cluster.min_replicas for st in stages], [st.cluster.max_replicas for st in stages], **kw,
                   interval_s=sc.autoscaler.interval_s, lead_s=startup_lead(sc))


def startup_lead(sc) -> float:
    """The longest mean start-up delay of any stage's variants of pipeline scenario ``sc`` (s): how long before
    a replica asked for now can serve."""
    out = 0.0
    for st in sc.pipeline.stages:
        for v in st.variants:
            out = max(out, (v.startup or st.cluster.startup).mean_value)
    return out

register_pipeline(IPAPolicy)

__all__ = ["IPAPolicy", "StageChoice", "startup_lead", "StageOption", "stage_options", "batch_wait_ms", "configure", "path_latency_ms", "pipeline_accuracy",
           "replicas_needed"]
