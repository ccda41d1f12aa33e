"""Close the loop: ``python -m cluster.validate POLICY.pt [--backend local|kubernetes] [--compare hpa,static]``.

The policy trained in simulation drives the real Triton deployment under real
load; the same workload is run under the comparison policies (default: the tuned
HPA and the best static count) on the same backend; then every real run is
replayed in the calibrated simulator with the same arrivals, the same policy
objects (reset) and the same initial replicas, and servesim reports how reality
compares with what the simulator promised.

Per policy (``--compare`` picks the others: ``hpa`` tuned HPA, ``hpa_default``,
``static``; ``none`` for the policy alone):

1. **real run**: deploy the backend with the run's initial replicas, start the
   load generator (open loop: precomputed arrivals; its live feed of sends and
   completions goes to the controller), and run :class:`cluster.controller.Controller`
   every ``interval_s`` of the policy: Observation from live Triton counters and
   client latencies (the simulator's definitions), ``policy.decide``, clamp,
   ``backend.scale``. Recorded: every request, every decision (observation,
   answer, held / clamped), every replica's lifecycle.
2. **simulated run(s)**: the calibrated scenario (``--scenario``; default the
   scenario the policy was trained on) with a ``timestamps`` workload holding the
   real run's actual send times (closed loop: the same users), the real run's
   initial replicas, the same policy at the same interval, ``--sim-seeds`` seeds.
3. **comparison**: over requests sent in ``[warmup_s, duration_s)`` and replica
   time clipped to that window (same definitions on both sides):
   replica-seconds (request -> gone), SLO-violation rate ((late successes +
   failures) / requests), p50 / p95 / p99 client latency of successes,
   failures; relative errors ``(sim - real) / real``. Targets: replica-seconds
   within 10 %, p95 within 15 %, and the same ranking of policies -- for every
   pair, the same winner (cheaper at equal SLO, i.e. violation rates within
   ``--equal-slo-pts`` points; or cheaper *and* fewer violations; no winner when
   it is a trade-off or a tie).

Default workload: a slice of the Twitter 2021 trace from the held-out days (day
13, 09:20-10:10: a steady stretch, a 20-minute burst of ~3.3x, the decline, a
quieter stretch) compressed to ``--duration`` seconds (120) and scaled so its
p99 rate is ``--peak-rps``; by default the study's validation load (:mod:`rl.study`
rule 8, recorded in the deployment scenario's ``provenance.study``): ``target_util``
x what ``max_replicas`` serve at the SLO, capped at the highest rate the measured
stack was seen to serve (``provenance.stack.max_served_rps``, from the
measurement). A scenario without a study gets the same rule computed here.
``--workload FILE`` takes any simulator workload block instead (poisson, schedule,
trace, timestamps, closed_loop).

A "sanity" section (:mod:`rl.sanity`) ends the run, recorded in ``summary.json``:
every policy's real load must have needed more than ``min_replicas`` for 5 % of
the run (by the calibrated fleet capacities) and the load generator must have
sent what was planned; otherwise the command exits 3 naming the check, unless
``--allow-degenerate``.

The static count is the smallest one whose *simulated* SLO-violation rate on
this workload is within ``--slo-target`` (the rest of servesim's
``static_best``; max_replicas when none is). The tuned HPA comes from
``--tuned`` (``python -m rl.baselines --out tuned.json``) or, without it, from
the same HPA grid tuned on the tuning days of the trace (about 20 s).

Output (``--out``, default ``validate/``; written to a temporary folder and
renamed at the end; ``--force`` replaces an earlier validation's folder, never
another folder, and ``--out`` is checked before anything starts): ``summary.json`` (everything),
``report.md``, ``overlay.png`` (all policies: real vs simulated replicas and
p95 latency over time), ``overlay_<policy>.png``, and per policy
``<policy>/requests.csv``, ``decisions.csv`` (every tick: observation, answer,
replicas asked, held), ``replicas.csv``, ``sim_timeline.csv``,
``controller.log`` and ``logs/``.

Bad input is one line ``error: ...`` and exit code 2; a policy that fails its
pre-flight check is rejected the same way before any server starts. Ctrl-C
tears the servers down and writes nothing.

**Pipelines.** With a ``--stack`` file whose scenario has a ``pipeline:`` (``configs/pipeline.yaml``), the
policy is a pipeline policy (a ``servesim-pipeline-policy/1`` file, or ``hpa`` / ``per_stage`` / ``ipa``) and
the validation is :mod:`~cluster.validate.pipeline`'s: per stage real-vs-simulated replica-seconds and visit
latency, end to end p50 / p95 / p99, throughput, SLO violations and accuracy, overlays per stage; the live
controller is :class:`cluster.controller_pipeline.PipelineController` (variant / batch-size switches are
refused on the real stack).

Modules (one home each): :mod:`~cluster.validate.contenders` (the policies under test),
:mod:`~cluster.validate.workload` (the validation load), :mod:`~cluster.validate.stats` (the ranking
of policies, replica and latency curves; the per-side summary and the error table are
:mod:`calibration.compare`'s), :mod:`~cluster.validate.run` (the real and simulated runs, the
orchestration), :mod:`~cluster.validate.report` (``report.md``, the table, the plots),
:mod:`~cluster.validate.cli` (the command), :mod:`~cluster.validate.pipeline` (pipelines).
"""
from __future__ import annotations

import sys

FORMAT = "servesim-validate/1"


def say(quiet: bool, msg: str) -> None:
    """A progress line on stderr (unless ``quiet``)."""
    if not quiet:
        print(msg, file=sys.stderr, flush=True)
