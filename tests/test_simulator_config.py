import pytest

from simulator.config import ConfigError, load_scenario, scenario_from_dict

BASE = {"workload": {"kind": "poisson", "rate_rps": 5}, "service": {"mean_ms": 10}}


def err(d):
    with pytest.raises(ConfigError) as e:
        scenario_from_dict(d, source="s.yaml")
    return str(e.value)


def with_(section, **kw):
    d = {k: dict(v) for k, v in BASE.items()}
    d.setdefault(section, {}).update(kw)
    return d


def test_defaults_resolve():
    sc = scenario_from_dict(BASE)
    assert sc.batching.max_batch_size == 1 and sc.cluster.load_balancer == "round_robin"
    assert sc.autoscaler.kind == "static"
    # round trip: the resolved dict loads back to the same scenario
    assert scenario_from_dict(sc.to_dict()) == sc


@pytest.mark.parametrize("d,needle", [
    ({**BASE, "bogus": 1}, "s.yaml: bogus: unknown key"),
    (with_("batching", max_batch_size=0), "batching.max_batch_size: must be >= 1 (got 0)"),
    (with_("batching", max_batch_size=8, preferred_batch_sizes=[4, 16]),
     "batching.preferred_batch_sizes[1]: must be a whole number in 1..max_batch_size=8"),
    (with_("batching", max_queue_delay_us=-5), "batching.max_queue_delay_us: must be >= 0"),
    (with_("cluster", load_balancer="rr"),
     "cluster.load_balancer: must be one of round_robin, random, least_outstanding (got 'rr')"),
    (with_("cluster", replicas=5, max_replicas=3), "cluster.replicas: must be within"),
    ({**BASE, "workload": {"kind": "poison"}}, "workload.kind: must be one of poisson, schedule"),
    ({**BASE, "workload": {"kind": "poisson"}}, "workload.rate_rps: is required"),
    ({**BASE, "workload": {"kind": "poisson", "rate_rps": 3, "users": 4}}, "workload.users: not used by kind 'poisson'"),
    ({**BASE, "service": {"kind": "gamma", "mean_ms": 10, "cv": -1}}, "service.cv: must be > 0"),
    ({**BASE, "service": {"kind": "weird", "mean_ms": 10}}, "service.kind: must be one of deterministic"),
    ({**BASE, "service": {"per_batch": {"x": {"mean_ms": 1}}}}, "service.per_batch.x: batch size keys"),
    ({**BASE, "service": {"kind": "empirical", "quantiles_ms": [3, 2]}}, "non-decreasing"),
    ({**BASE, "duration_s": 10, "warmup_s": 10}, "warmup_s: must be < duration_s"),
    ({**BASE, "autoscaler": {"kind": "magic"}}, "autoscaler.kind: must be one of"),
    ({**BASE, "workload": {"kind": "schedule", "segments": [{"kind": "ramp", "duration_s": 5, "rate_rps": 1}]}},
     "workload.segments[0].to_rps: is required"),
])
def test_errors_name_key_and_allowed_values(d, needle):
    msg = err(d)
    assert msg.startswith("s.yaml: ")
    assert needle in msg, msg


def test_load_scenario_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_scenario(str(tmp_path / "none.yaml"))
    p = tmp_path / "bad.yaml"
    p.write_text("workload: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_scenario(str(p))
    p.write_text("workload: {kind: poisson, rate_rps: 5}\nservice: {mean_ms: 3}\n")
    sc = load_scenario(str(p), ["workload.rate_rps=9", "batching.max_batch_size=4"], seed=42)
    assert sc.workload.rate_rps == 9 and sc.batching.max_batch_size == 4 and sc.seed == 42
    with pytest.raises(ConfigError, match="expected key=value"):
        load_scenario(str(p), ["workload.rate_rps"])


def test_every_shipped_scenario_loads():
    """configs/*.yaml that are plain scenarios must load (catches broken YAML in shipped files)."""
    import glob
    import os
    import yaml
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    n = 0
    for p in sorted(glob.glob(os.path.join(root, "configs", "**", "*.yaml"), recursive=True)):
        docs = list(yaml.safe_load_all(open(p)))
        d = docs[0] if len(docs) == 1 else None
        if isinstance(d, dict) and "workload" in d and "service" in d:
            load_scenario(p)
            n += 1
    assert n >= 2
