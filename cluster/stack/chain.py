"""A pipeline on the real stack: one deployment per stage, chained by the client.

Each stage of a pipeline scenario (:class:`simulator.config.PipelineSpec`) is deployed exactly as a
single model is: its own replicas serving its own Triton model (the model of the stage's current variant,
``model: {stages: ...}``: :class:`cluster.stack.config.StageModels`), its own batcher, its own load balancer,
scaled on its own -- one :class:`~cluster.stack.backends.Backend` per stage (:func:`make_backend` of the
stage as a single-model scenario, :func:`simulator.pipeline.stage_scenario`), on the local backend one
HAProxy and one set of ``tritonserver`` processes per stage.

**How a request goes through the stages: chained client calls.** The load generator sends the payload to
stage 1's load balancer, takes stage 1's first output from the response and sends it as stage 2's only input
to stage 2's load balancer, and so on (:mod:`cluster.stack.loadgen`, ``plan["stages"]``). Chosen over a small
router process (which would be closer to how IPA's deployments call their stages) because (1) on a 2-core
machine a router is one more Python process on every request's path, competing with the replicas for the
cores, and its own queue would be a stage nothing models; (2) the client's log holds the end-to-end latency
*and* every stage's own client latency (send to the stage's load balancer -> its response) on one clock, so
the hop between stages is measured per request, not inferred: ``gap_ms`` is the client's time from one
stage's response to the next stage's send (taking the output, building the next request). Either way a
stage's hop (client or router -> load balancer -> Triton -> back) is what calibration fits per stage.

The forwarded tensor: stage k's first output (the model's, e.g. ``logits``) becomes stage k+1's only input
(renamed to its input name); :func:`check_links` refuses a pipeline whose stages do not fit (data type or
dimensions), before anything runs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from simulator.config import ConfigError, Scenario
from simulator.pipeline import stage_scenario

from .deploy import make_backend
from .served import ServedModel, served_for


def variant_scenario(sc: Scenario, k: int, variant: str | None = None) -> Scenario:
    """Stage ``k`` of pipeline scenario ``sc`` as a single-model scenario (:func:`stage_scenario`), serving
    ``variant`` (default: the stage's own)."""
    if variant is None:
        return stage_scenario(sc, k)
    stages = list(sc.pipeline.stages)
    stages[k] = dataclasses.replace(stages[k], variant=variant)
    return stage_scenario(sc.replace(pipeline=dataclasses.replace(sc.pipeline, stages=tuple(stages))), k)


@dataclass
class Stage:
    """One stage of a pipeline on the real stack: its single-model ``scenario`` (batcher, cluster), its
    ``stack`` settings (its model, its ports), what it serves, and its ``backend`` once made."""

    index: int
    name: str
    variant: str
    scenario: Scenario
    stack: object
    served: ServedModel
    backend: object = None


def pipeline_stages(sc: Scenario, stack, local: bool = False) -> list[Stage]:
    """The stages of pipeline scenario ``sc`` on ``stack`` (its ``stage_models``), each with its current
    variant's model resolved (:func:`served_for`; ``local``: as this machine's server runs it)."""
    out = []
    for k, st in enumerate(sc.pipeline.stages):
        s = stack.for_stage(k, st.name, st.variant)
        out.append(Stage(k, st.name, st.variant, stage_scenario(sc, k), s, served_for(s, local)))
    return out


def forwarded(served: ServedModel):
    """The tensor a stage hands on: its model's first output."""
    return served.outputs[0]


def check_links(stages: list[list[tuple[str, ServedModel]]], names: list[str]) -> None:
    """Every variant of stage k must hand on what every variant of stage k+1 takes: stage k's first output,
    sent as stage k+1's only input, with equal data type and dimensions (-1 = any). ``stages``: per stage,
    its (variant, served model) pairs; ``names``: the stage names. Bad input is one line naming the key."""
    for k in range(len(stages) - 1):
        for v, a in stages[k]:
            out = forwarded(a)
            for w, b in stages[k + 1]:
                where = f"model.stages.{names[k + 1]}" + (f".variants.{w}" if len(stages[k + 1]) > 1 else "")
                if len(b.inputs) != 1:
                    raise ConfigError(f"{where}: model {b.name!r} has {len(b.inputs)} inputs "
                                      f"({', '.join(t.name for t in b.inputs)}); a stage after the first takes one: "
                                      f"the previous stage's first output")
                inp = b.inputs[0]
                fits = inp.datatype == out.datatype and len(inp.dims) == len(out.dims) and all(
                    x < 0 or y < 0 or x == y for x, y in zip(inp.dims, out.dims))
                if not fits:
                    raise ConfigError(f"{where}: input {inp.name!r} {inp.datatype} {list(inp.dims)} of model "
                                      f"{b.name!r} cannot take stage {names[k]} ({v})'s output {out.name!r} "
                                      f"{out.datatype} {list(out.dims)} (the client sends stage k's first output "
                                      f"as stage k+1's input)")


def chain_plan(stages: list[Stage], workdir: str | Path, seed: int = 0) -> dict:
    """The load generator's plan keys for a pipeline (:func:`cluster.stack.loadgen.run_load`): stage 1's
    ``url``, ``model``, payloads and outputs as for a single model, and ``stages``: per stage its load
    balancer ``url``, ``model``, the ``outputs`` to ask for, the ``input`` it takes (after the first) and
    the output it hands on (``forward``, before the last)."""
    plan = {"url": stages[0].backend.endpoints["lb"], **stages[0].served.load_plan(workdir, seed), "stages": []}
    for k, st in enumerate(stages):
        e = {"name": st.name, "url": st.backend.endpoints["lb"], "model": st.served.name,
             "outputs": st.served.client_outputs}
        if k:
            e["input"] = st.served.inputs[0].name
        if k + 1 < len(stages):
            e["forward"] = forwarded(st.served).name
        plan["stages"].append(e)
    return plan


class PipelineDeployment:
    """Every stage of a pipeline deployed on ``stack.backend``, each stage its own backend in
    ``workdir/<stage>``: ``deploy()`` starts them all and waits until each has its replicas ready;
    ``teardown()`` stops them all (idempotent); ``stage(name)`` is one :class:`Stage`."""

    def __init__(self, sc: Scenario, stack, workdir: str | Path):
        self.scenario = sc
        self.stack = stack
        self.workdir = Path(workdir)
        self.stages = pipeline_stages(sc, stack)
        for st in self.stages:
            st.backend = make_backend(st.stack, st.scenario, self.workdir / st.name)

    def stage(self, name: str) -> Stage:
        return next(st for st in self.stages if st.name == name)

    def deploy(self) -> None:
        for st in self.stages:                   # every stage's replicas start at once ...
            st.backend.deploy(wait=False)
        for st in self.stages:                   # ... then each stage must reach its count
            st.backend.wait_ready(st.scenario.cluster.replicas, st.stack.ready_timeout_s)

    def teardown(self) -> None:
        for st in self.stages:
            if st.backend is not None:
                st.backend.teardown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.teardown()
        return False
