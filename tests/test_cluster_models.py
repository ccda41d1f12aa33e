"""Bring your own model, fast (no server): the model: block, ONNX graphs, input synthesis, the merge of a
user's config.pbtxt, GPU settings, the Kubernetes GPU variant, and the batching comparison."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cluster import config as ccfg
from cluster.stack.config import ModelSpec, parse_model
from cluster.stack.served import Tensor, load_sample, merge_config, onnx_tensors, resolve, synthesise
from helpers import k8s_scenario, k8s_stack, tiny_onnx, tiny_repository
from simulator.config import BatchingSpec, ConfigError

BATCH = BatchingSpec(max_batch_size=8, preferred_batch_sizes=(4,), max_queue_delay_us=700, instances=2,
                     max_queue_size=16)


def _measure_file(tmp_path, model: str, stack: str = "", batching: str = "") -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(f"""
scenario:
  workload: {{kind: poisson, rate_rps: 5}}
  service: {{mean_ms: 5}}
  batching: {{max_batch_size: 4 {batching}}}
model: {model}
stack: {{backend: local {stack}}}
""")
    return p


# --------------------------------------------------------------------------- the model: block


def test_model_block_default_and_kinds(tmp_path):
    assert parse_model(None) == ModelSpec() and ModelSpec().kind == "builtin"
    f = tiny_onnx(tmp_path / "m.onnx")
    cfg = ccfg.load_measure_config(str(_measure_file(tmp_path, "{onnx: m.onnx}")))
    assert cfg.stack.model.kind == "onnx" and cfg.stack.model.onnx == str(f)      # relative to the file
    repo = tiny_repository(tmp_path / "repo", "tiny")
    cfg = ccfg.load_measure_config(str(_measure_file(tmp_path, f"{{repository: {repo}, name: tiny}}")))
    assert cfg.stack.model.kind == "repository" and cfg.stack.model.name == "tiny"
    # the README's configs have no model: block: the built-in MobileNetV4
    base = ccfg.load_measure_config(str(Path(__file__).resolve().parent.parent / "configs" / "baseline.yaml"))
    assert base.stack.model == ModelSpec()


@pytest.mark.parametrize("model, msg", [
    ("{onnx: missing.onnx}", r"model\.onnx: ONNX model file not found: .*missing\.onnx"),
    ("{builtin: resnet}", r"model\.builtin: must be one of mobilenetv4_conv_small, text_encoder_small"),
    ("{onnx: m.onnx, builtin: mobilenetv4_conv_small}", r"model: give one of builtin, onnx or repository"),
    ("{repository: repo}", r"model\.name: is required with repository"),
    ("{repository: repo, name: other}", r"model\.name: no model 'other' in repository .*repo \(it holds: tiny\)"),
    ("{repository: nowhere, name: x}", r"model\.repository: model repository not found"),
    ("{repository: repo, name: tiny, backend: python}", r"model\.backend: not used with repository"),
    ("{onnx: m.onnx, inputs: sample.txt}", r"model\.inputs: sample input file \(\.npz\) not found"),
])
def test_model_block_bad_input_is_one_line(tmp_path, model, msg):
    tiny_onnx(tmp_path / "m.onnx")
    tiny_repository(tmp_path / "repo", "tiny")
    with pytest.raises(ConfigError, match=msg) as e:
        ccfg.load_measure_config(str(_measure_file(tmp_path, model)))
    assert "\n" not in str(e.value) and str(e.value).startswith(str(tmp_path / "m.yaml"))


def test_server_binary_and_gpu_settings(tmp_path):
    with pytest.raises(ConfigError, match=r"stack\.tritonserver: tritonserver binary not found: /no/such/tritonserver"):
        ccfg.load_measure_config(str(_measure_file(tmp_path, "{builtin: mobilenetv4_conv_small}",
                                                   ", tritonserver: /no/such/tritonserver")))
    # a GPU with the bundled (CPU-only) server
    with pytest.raises(ConfigError, match=r"batching\.device: gpu needs a GPU build of tritonserver"):
        ccfg.load_measure_config(str(_measure_file(tmp_path, "{builtin: mobilenetv4_conv_small}",
                                                   batching=", device: gpu")))
    with pytest.raises(ConfigError, match=r"batching\.gpus: only with device: gpu"):
        ccfg.load_measure_config(str(_measure_file(tmp_path, "{builtin: mobilenetv4_conv_small}",
                                                   batching=", gpus: [0]")))
    cfg = ccfg.load_measure_config(str(_measure_file(tmp_path, "{builtin: mobilenetv4_conv_small}",
                                                     ", tritonserver: /bin/true", ", device: gpu, gpus: [1, 0]")))
    assert cfg.scenario.batching.device == "gpu" and cfg.scenario.batching.gpus == (0, 1)
    assert cfg.stack.tritonserver == "/bin/true"


def test_gpu_requested_where_none_is_visible(tmp_path, monkeypatch):
    from cluster import measure
    from cluster.stack import triton
    monkeypatch.setattr(triton.shutil, "which", lambda name: None)     # no nvidia-smi: no GPU visible
    cfg = ccfg.load_measure_config(str(_measure_file(tmp_path, "{builtin: mobilenetv4_conv_small}",
                                                     ", tritonserver: /bin/true", ", device: gpu")))
    with pytest.raises(ConfigError, match=r"batching\.device: gpu, but no GPU is visible on this machine"):
        measure.preflight(cfg, quiet=True)
    rc = measure.main([str(tmp_path / "m.yaml"), "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 2 and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- ONNX graphs and inputs


def test_onnx_graph_inputs_outputs_and_generated_config(tmp_path):
    f = tiny_onnx(tmp_path / "m.onnx", in_dims=(3,), out_dims=(2,))
    ins, outs = onnx_tensors(f)
    assert ins == (Tensor("x", "FP32", (3,)),) and outs == (Tensor("y", "FP32", (2,)),)
    m = resolve(ModelSpec(onnx=str(f)))
    assert m.name == "m" and m.backend == "python" and m.client_outputs == ["y", "replica"]
    pb = m.config_pbtxt(BATCH)
    for want in ('name: "m"', 'backend: "python"', "max_batch_size: 8", 'name: "x"', "TYPE_FP32", "dims: [ 3 ]",
                 'name: "replica"', "count: 2", "KIND_CPU", "preferred_batch_size: [ 4 ]",
                 "max_queue_delay_microseconds: 700", "max_queue_size: 16"):
        assert want in pb, want
    native = resolve(ModelSpec(onnx=str(f)), bundled_server=False)
    assert native.backend == "onnxruntime" and native.client_outputs == ["y"]
    pb = native.config_pbtxt(BatchingSpec(max_batch_size=4, device="gpu", gpus=(0, 1)))
    assert 'backend: "onnxruntime"' in pb and "KIND_GPU" in pb and "gpus: [ 0, 1 ]" in pb and "replica" not in pb
    # the repository the server loads
    repo = m.write_repository(tmp_path / "r", BATCH)
    assert (repo / "m" / "1" / "model.py").exists() and (repo / "m" / "1" / "model.onnx").resolve() == f.resolve()


def test_onnx_graph_without_batch_axis_or_with_an_unsynthesisable_input(tmp_path):
    fixed = tiny_onnx(tmp_path / "fixed.onnx", batch=4)
    with pytest.raises(ConfigError, match=r"fixed\.onnx: input 'x' has no dynamic batch axis \(shape \[4, 3\]\)"):
        resolve(ModelSpec(onnx=str(fixed)))
    text = tiny_onnx(tmp_path / "text.onnx", elem="string")
    with pytest.raises(ConfigError, match=r"text\.onnx: input 'x' has data type BYTES, which servesim cannot "
                                          r"synthesise .* give model\.inputs: sample\.npz"):
        resolve(ModelSpec(onnx=str(text)))
    ragged = tiny_onnx(tmp_path / "ragged.onnx", in_dims=("seq",))
    with pytest.raises(ConfigError, match=r"ragged\.onnx: input 'x' has a dynamic dimension besides the batch axis"):
        resolve(ModelSpec(onnx=str(ragged)))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match=r"junk\.onnx: not an ONNX model"):
        resolve(ModelSpec(onnx=str(junk)))
    # ... a sample file makes the ragged model usable
    np.savez(tmp_path / "s.npz", x=np.ones((5, 7), np.float32))
    m = resolve(ModelSpec(onnx=str(ragged), inputs=str(tmp_path / "s.npz")))
    it = m.items(8, seed=2)
    assert it["x"].shape == (8, 7) and it["x"].dtype == np.float32


def test_synthesis_rule():
    rng = np.random.default_rng(0)
    px = synthesise(Tensor("img", "UINT8", (4, 4)), 50, rng, "w")
    assert px.shape == (50, 4, 4) and px.dtype == np.uint8 and px.max() > 200 and px.min() < 50
    ids = synthesise(Tensor("ids", "INT64", (16,)), 50, rng, "w")
    assert ids.dtype == np.int64 and set(np.unique(ids)) == {0, 1}      # a valid id, mask or type id anywhere
    f = synthesise(Tensor("f", "FP16", (3,)), 2000, rng, "w")
    assert f.dtype == np.float16 and abs(float(f.astype(np.float32).std()) - 1) < 0.1
    assert synthesise(Tensor("b", "BOOL", (2,)), 4, rng, "w").dtype == np.bool_


def test_sample_file_checks(tmp_path):
    ins = (Tensor("a", "INT64", (4,)), Tensor("m", "INT64", (-1,)))
    np.savez(tmp_path / "ok.npz", a=np.zeros((3, 4), np.int32), m=np.ones((3, 9), np.int64))
    got = load_sample(str(tmp_path / "ok.npz"), ins)
    assert got["a"].dtype == np.int64 and got["m"].shape == (3, 9)
    np.savez(tmp_path / "miss.npz", a=np.zeros((3, 4)))
    with pytest.raises(ConfigError, match=r"miss\.npz: no array for input 'm'"):
        load_sample(str(tmp_path / "miss.npz"), ins)
    np.savez(tmp_path / "dims.npz", a=np.zeros((3, 5)), m=np.ones((3, 2)))
    with pytest.raises(ConfigError, match=r"dims\.npz: array 'a' has shape \[3, 5\]; the model wants \[items, 4, -1\]|"
                                          r"dims\.npz: array 'a' has shape \[3, 5\]; the model wants \[items, 4\]"):
        load_sample(str(tmp_path / "dims.npz"), ins)


# --------------------------------------------------------------------------- a user's config.pbtxt


USER_CONFIG = """
name: "tiny"
backend: "python"
max_batch_size: 2
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
instance_group [ { count: 4 kind: KIND_GPU gpus: [ 3 ] } ]
dynamic_batching { preferred_batch_size: [ 2 ] max_queue_delay_microseconds: 99 priority_levels: 2
                   default_priority_level: 1 default_queue_policy { max_queue_size: 3 } }
parameters [ { key: "mine", value: { string_value: "kept" } } ]
version_policy { latest { num_versions: 1 } }
"""


def test_merge_keeps_the_users_config_and_overrides_only_the_batcher_keys():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc
    out = text_format.Parse(merge_config(USER_CONFIG, BATCH, "config.pbtxt"), mc.ModelConfig())
    assert out.max_batch_size == 8
    assert [(g.count, g.kind, list(g.gpus)) for g in out.instance_group] == [(2, mc.ModelInstanceGroup.KIND_CPU, [])]
    db = out.dynamic_batching
    assert list(db.preferred_batch_size) == [4] and db.max_queue_delay_microseconds == 700
    assert db.default_queue_policy.max_queue_size == 16 and db.default_queue_policy.default_timeout_microseconds == 0
    # everything else as the user wrote it
    assert out.name == "tiny" and out.backend == "python" and out.input[0].dims == [3]
    assert db.priority_levels == 2 and db.default_priority_level == 1
    assert out.parameters["mine"].string_value == "kept" and out.version_policy.latest.num_versions == 1
    gpu = text_format.Parse(merge_config(USER_CONFIG, BatchingSpec(max_batch_size=4, device="gpu", gpus=(0,),
                                                                   queue_timeout_us=5000), "c"), mc.ModelConfig())
    assert [(g.kind, list(g.gpus)) for g in gpu.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, [0])]
    assert gpu.dynamic_batching.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert not gpu.dynamic_batching.default_queue_policy.max_queue_size and not gpu.dynamic_batching.preferred_batch_size
    with pytest.raises(ConfigError, match=r"c\.pbtxt: max_batch_size is 0 \(the model does not batch\)"):
        merge_config('name: "x" max_batch_size: 0', BATCH, "c.pbtxt")
    with pytest.raises(ConfigError, match=r"c\.pbtxt: not a valid Triton model configuration"):
        merge_config('name: "x" max_batch_size: [', BATCH, "c.pbtxt")


def test_repository_model_layout_and_server_config(tmp_path):
    repo = tiny_repository(tmp_path / "repo", "tiny")
    m = resolve(ModelSpec(builtin="", repository=str(repo), name="tiny"))
    assert m.kind == "repository" and not m.inputs           # learnt from the server
    out = m.write_repository(tmp_path / "served", BATCH)
    assert (out / "tiny" / "1").is_symlink() and (out / "tiny" / "1" / "model.py").exists()
    assert "max_batch_size: 8" in (out / "tiny" / "config.pbtxt").read_text()
    assert "max_batch_size: 4" in (repo / "tiny" / "config.pbtxt").read_text()     # the user's file untouched
    m.learn_from_server({"name": "tiny", "max_batch_size": 8,
                         "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}],
                         "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}]})
    assert m.inputs == (Tensor("x", "FP32", (3,)),) and m.client_outputs == ["y"]
    with pytest.raises(ConfigError, match=r"input 'x' has data type BYTES"):
        m.learn_from_server({"max_batch_size": 8, "input": [{"name": "x", "data_type": "TYPE_STRING", "dims": [1]}]})
    with pytest.raises(ConfigError, match=r"reports max_batch_size 0 for model 'tiny'"):
        m.learn_from_server({"max_batch_size": 0, "input": []})


# --------------------------------------------------------------------------- Kubernetes: official image, GPU


def test_kubernetes_gpu_variant_renders_and_validates(fake_api, tmp_path):
    import dataclasses

    import kubernetes_validate as kv
    from cluster.stack.kubernetes import KubernetesBackend
    sc = k8s_scenario(2)
    sc = sc.replace(batching=dataclasses.replace(sc.batching, device="gpu", gpus=(0, 1)))
    st = dataclasses.replace(k8s_stack(fake_api.url), model=ModelSpec(builtin="text_encoder_small"))
    be = KubernetesBackend(sc, st, tmp_path)
    res = be.rendered()
    for r in res:
        kv.validate(r, "1.30.0", strict=True)
    cm, dep = res[0], res[1]
    pb = cm["data"]["config.pbtxt"]
    assert 'name: "text_encoder_small"' in pb and 'backend: "onnxruntime"' in pb and "KIND_GPU" in pb
    assert "gpus: [ 0, 1 ]" in pb
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3" and c["command"][0] == "tritonserver"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2" and "--allow-gpu-metrics=true" in c["command"]
    init = pod["initContainers"][0]
    assert init["image"] == "localhost:32000/servesim-models:0.1"
    assert {"name": "SERVESIM_MODEL", "value": "text_encoder_small"} in init["env"]
    # deployed on the API double: the ConfigMap the init container reads holds the GPU config
    try:
        be.deploy()
        assert "KIND_GPU" in fake_api.objects[("configmaps", "ssim-test", "servesim-model-config")]["data"]["config.pbtxt"]
        d = fake_api.objects[("deployments", "ssim-test", "servesim-triton")]
        assert d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    finally:
        be.teardown()


def test_kubernetes_pytriton_image_for_cpu_clusters(fake_api, tmp_path):
    import dataclasses

    import kubernetes_validate as kv
    from cluster.stack.config import KubernetesSettings, StackSettings
    from cluster.stack.kubernetes import KubernetesBackend
    k = KubernetesSettings(api_url=fake_api.url, namespace="ssim-test", request_timeout_s=3, image_kind="pytriton")
    be = KubernetesBackend(k8s_scenario(1), StackSettings(backend="kubernetes", kubernetes=k), tmp_path)
    res = be.rendered()
    for r in res:
        kv.validate(r, "1.30.0", strict=True)
    pod = res[1]["spec"]["template"]["spec"]
    assert "initContainers" not in pod and pod["containers"][0]["image"] == "localhost:32000/servesim-triton:0.1"
    assert pod["containers"][0]["command"][:4] == ["python", "-m", "cluster.stack.triton", "serve"]
    assert 'backend: "python"' in res[0]["data"]["config.pbtxt"]
    f = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match=r"image_kind: pytriton serves servesim's built-in models only"):
        KubernetesBackend(k8s_scenario(1), StackSettings(backend="kubernetes", kubernetes=k,
                                                         model=ModelSpec(onnx=str(f))), tmp_path)
    assert dataclasses.replace(k, image="x/y:1").server_image == "x/y:1"


# --------------------------------------------------------------------------- batching, measured vs simulated


def test_simulated_batching_closed_form():
    from calibration.compare import batch_distance, simulated_batching, targets_for
    # 3 batches of 4 and 2 batches of 1 (requests in [0, 10)), one request outside the window
    arr = np.array([1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 5, 11.0])
    disp = arr + np.array([0.01] * 12 + [0.0, 0.0, 0.0])
    bs = np.array([4] * 12 + [1, 1, 8])
    ok = np.ones(15, bool)
    s = simulated_batching(arr, disp, bs, ok, 0.0, 10.0)
    assert s["batch_shares"] == {1: pytest.approx(0.4), 4: pytest.approx(0.6)}
    assert s["mean_batch_size"] == pytest.approx(14 / 5)
    assert s["queue_ms"] == pytest.approx(12 * 10 / 14)
    assert batch_distance({1: 0.4, 4: 0.6}, {1: 0.4, 4: 0.6}) == 0
    assert batch_distance({1: 1.0}, {8: 1.0}) == 1
    assert batch_distance({1: 0.5, 2: 0.5}, {1: 0.25, 2: 0.75}) == pytest.approx(0.25)
    assert math.isnan(batch_distance({}, {1: 1.0}))
    assert targets_for([{"mean_batch_size": 1.03}])[0] == "calibration"
    name, t = targets_for([{"mean_batch_size": 1.03}, {"mean_batch_size": 3.2}])
    assert name == "batching" and t["p99_ms"] == ("rel", 0.20) and t["mean_batch_size"] == ("rel", 0.10)


def test_measured_batching_from_triton_statistics(tmp_path):
    import pandas as pd

    from calibration.measurements import RunData, batch_histogram, measured_batching
    from simulator.config import scenario_from_dict
    sc = scenario_from_dict({"workload": {"kind": "poisson", "rate_rps": 1}, "service": {"mean_ms": 1}})
    # replica r0 counts before the window (t 4.5) and after (t 20.8); r1 appears mid-run (counts from 0);
    # a scrape after duration + 1.5 s is not used
    rows = [(4.5, "r0", 1, 10), (4.5, "r0", 4, 2), (20.8, "r0", 1, 30), (20.8, "r0", 4, 12),
            (12.0, "r1", 2, 5), (20.8, "r1", 2, 15), (25.0, "r0", 1, 999)]
    bat = pd.DataFrame(rows, columns=["t_s", "replica", "batch_size", "batches"])
    met = pd.DataFrame([(4.5, "r0", "nv_inference_request_success", 0.0), (20.8, "r0", "nv_inference_request_success", 100.0),
                        (4.5, "r0", "nv_inference_queue_duration_us", 0.0),
                        (20.8, "r0", "nv_inference_queue_duration_us", 250_000.0)],
                       columns=["t_s", "replica", "metric", "value"])
    run = RunData(name="r", dir=tmp_path, scenario=sc, duration_s=20.0, warmup_s=5.0, slo_ms=100, requests=None,
                  replicas=None, events=[], metrics=met, summary={}, batches=bat)
    assert batch_histogram(run) == {1: 20.0, 2: 15.0, 4: 10.0}
    m = measured_batching(run)
    assert m["mean_batch_size"] == pytest.approx((20 + 30 + 40) / 45)
    assert m["batch_shares"][4] == pytest.approx(10 / 45) and m["queue_ms"] == pytest.approx(2.5)
    run.batches = None
    assert measured_batching(run)["batch_shares"] == {}
