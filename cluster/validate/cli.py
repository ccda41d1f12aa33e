"""``python -m cluster.validate``: the command (arguments, error policy, console summary)."""
from __future__ import annotations

import argparse
import sys

from rl import sanity

from . import __doc__ as DOC
from .contenders import COMPARE
from .pipeline import PIPELINE_CONTENDERS, pipeline_table_lines
from .report import table_lines
from .workload import DEFAULT_LENGTH_S, DEFAULT_START_S, DEFAULT_TRACE


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m cluster.validate", description=DOC.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", help="policy.pt written by rl.train (the policy under test); with a pipeline --stack "
                                   "file: a pipeline policy.pt or one of hpa, per_stage, ipa (see cluster.validate.pipeline)")
    ap.add_argument("--backend", choices=("local", "kubernetes"), default=None,
                    help="real stack (default: the --stack file's, local)")
    ap.add_argument("--compare", default=None,
                    help=f"comparison policies run on the same backend: comma list of {', '.join(COMPARE)}, or none "
                         f"(default hpa,static); a pipeline: of {', '.join(PIPELINE_CONTENDERS)} (default none)")
    ap.add_argument("--scenario", default=None, help="calibrated scenario (default: the one the policy was trained on)")
    ap.add_argument("--stack", default="configs/baseline.yaml",
                    help="measurement file whose stack: block configures the real stack (default configs/baseline.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the --stack file, e.g. --set stack.drain_timeout_s=5")
    ap.add_argument("--tuned", default=None, help="tuned baselines JSON (rl.baselines --out); default: tune the HPA now")
    ap.add_argument("--workload", default=None, help="YAML file with a simulator workload block (instead of the trace slice)")
    ap.add_argument("--trace", default=None, help=f"rate trace CSV (default {DEFAULT_TRACE})")
    ap.add_argument("--start", type=float, default=None, help=f"trace slice start, trace seconds (default {DEFAULT_START_S})")
    ap.add_argument("--length", type=float, default=None, help=f"trace slice length, trace seconds (default {DEFAULT_LENGTH_S:g})")
    ap.add_argument("--duration", type=float, default=None, help="seconds of real load per policy (default 120)")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds at the start left out of the summaries (default 10)")
    ap.add_argument("--peak-rps", type=float, default=None, help="p99 rate of the scaled slice (default: see module doc)")
    ap.add_argument("--slo-target", type=float, default=0.01, help="SLO-violation target for the static count (default 0.01)")
    ap.add_argument("--equal-slo-pts", type=float, default=0.5, help="violation rates within this many points count as equal SLO")
    ap.add_argument("--sim-seeds", type=int, default=3, help="simulated runs per policy (pooled; default 3)")
    ap.add_argument("--out", default="validate", help="output folder (default validate/)")
    ap.add_argument("--force", action="store_true",
                    help="replace --out if an earlier cluster.validate wrote it (never another folder)")
    ap.add_argument("--quiet", action="store_true")
    pp = ap.add_argument_group("pipelines (a --stack file with a pipeline: scenario)")
    pp.add_argument("--interval", type=float, default=None,
                    help="control interval of hpa / per_stage / ipa in seconds (default: the scenario's)")
    pp.add_argument("--hpa-target", type=float, default=0.8,
                    help="per-stage HPA target: this x the stage's simulated per-replica capacity (default 0.8)")
    pp.add_argument("--hpa-window", type=float, default=60.0, help="per-stage HPA scale-down window, s (default 60)")
    pp.add_argument("--ipa-util", type=float, default=None, help="IPA's max_utilization (default: the scenario's or 0.8)")
    ap.add_argument("--allow-degenerate", action="store_true",
                    help="exit 0 even when a sanity check fails (the section is still printed and recorded)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from ..controller import PolicyRejected
    from ..stack import procs
    from .run import ValidateError, validate
    a = parse_args(argv)

    def body() -> int:
        try:
            s = validate(a)
        except PolicyRejected as e:
            raise PolicyRejected(f"policy rejected before any scaling: {e}") from None
        if s.get("pipeline"):
            return pipeline_console(s)
        print("\n".join(table_lines(s, markdown=False)))
        t = s["targets"]
        rk = s["ranking"]
        print(f"targets: cost within 10 % {'met' if t['cost'] else 'NOT met'}; p95 within 15 % "
              f"{'met' if t['p95'] else 'NOT met'}; ranking {'agrees' if rk['agrees'] else 'DIFFERS'} "
              f"(real cost order {' < '.join(rk['cost_order_real'])}, sim {' < '.join(rk['cost_order_sim'])})")
        checks = s.pop("_checks")
        print("\n".join(sanity.section(checks)))
        print(f"wrote {a.out}/summary.json, report.md, overlay.png ({s['wall_s']:.0f} s)")
        return finish(checks)

    def pipeline_console(s: dict) -> int:
        print("\n".join(pipeline_table_lines(s, markdown=False)))
        t = s["targets"]
        print(f"targets: end-to-end cost within 10 % {'met' if t['cost'] else 'NOT met'}; end-to-end p95 within 15 % "
              f"{'met' if t['p95'] else 'NOT met'}")
        checks = s.pop("_checks")
        print("\n".join(sanity.section(checks)))
        print(f"wrote {a.out}/summary.json, report.md, overlay.png ({s['wall_s']:.0f} s)")
        return finish(checks)

    def finish(checks) -> int:
        bad = sanity.failure(checks)
        if bad and not a.allow_degenerate:
            raise sanity.DegenerateResult(f"{bad} (results written to {a.out}; --allow-degenerate accepts them)")
        return 0
    return procs.run_guarded(body, errors=(sanity.DegenerateResult,), runtime_errors=(ValidateError,))


if __name__ == "__main__":
    sys.exit(main())
