"""The real stack's pipeline, fast (no server): the built-in pipeline's models (ONNX export, graphs, what
stage 2 computes from stage 1's output), the chain check between stages, the measurement file's per-stage
model block and run overrides, bad input one line each."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cluster import config as ccfg
from simulator.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent

SCENARIO = """
scenario:
  seed: 0
  duration_s: 10
  slo_ms: 200
  workload: {kind: poisson, rate_rps: 10}
  pipeline:
    stages:
      - name: image
        variants:
          - {name: small, accuracy: 0.738, service: {mean_ms: 8}}
          - {name: medium, accuracy: 0.799, service: {mean_ms: 30}}
        cluster: {replicas: 1, max_replicas: 3}
      - name: labels
        service: {mean_ms: 11}
        cluster: {replicas: 1, max_replicas: 2}
"""
MODEL = """
model:
  stages:
    image: {variants: {small: {builtin: mobilenetv4_conv_small}, medium: {builtin: mobilenetv4_conv_medium}}}
    labels: {builtin: label_encoder_small}
"""


def _file(tmp_path, model: str = MODEL, runs: str = "    - name: base\n", scenario: str = SCENARIO) -> str:
    p = tmp_path / "p.yaml"
    p.write_text(scenario + model + "measure:\n  runs:\n" + runs)
    return str(p)


# --------------------------------------------------------------------------- the built-in models


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The two new built-ins exported into a fresh cache (each export checks ONNX against torch on a batch of 3)."""
    import os
    old = os.environ.get("SERVESIM_CACHE")
    os.environ["SERVESIM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        from cluster.stack.builtins import builtin_export
        yield {n: builtin_export(n) for n in ("mobilenetv4_conv_medium", "label_encoder_small")}
    finally:
        if old is None:
            os.environ.pop("SERVESIM_CACHE")
        else:
            os.environ["SERVESIM_CACHE"] = old


def test_medium_variant_architecture():
    from cluster.stack.model import MEDIUM_NAME, MEDIUM_PARAMETERS, PARAMETERS, build_model, count_parameters
    medium = build_model(0, MEDIUM_NAME)
    assert count_parameters(medium) == MEDIUM_PARAMETERS          # ~9.7 M (timm's mobilenetv4_conv_medium: 9.72 M)
    assert count_parameters(build_model()) == PARAMETERS          # the small one unchanged by the generalisation
    # MNv4-Conv-M: 1 FusedIB + 2 + 8 + 11 UIB blocks (Table 11), the stem and the 960-channel conv
    blocks = list(medium.features)
    assert len(blocks) == 1 + 1 + 2 + 8 + 11 + 1
    assert type(blocks[1]).__name__ == "FusedIB" and blocks[1].conv_exp[0].out_channels == 128   # 32 x 4


def test_pipeline_builtins_export_to_onnx(exported):
    from cluster.stack.served import Tensor, onnx_tensors
    ins, outs = onnx_tensors(exported["mobilenetv4_conv_medium"][0])
    assert ins == (Tensor("image", "UINT8", (224, 224, 3)),) and outs == (Tensor("logits", "FP32", (1000,)),)
    ins, outs = onnx_tensors(exported["label_encoder_small"][0])
    assert ins == (Tensor("logits", "FP32", (1000,)),) and outs == (Tensor("embedding", "FP32", (768,)),)
    assert exported["mobilenetv4_conv_medium"][1]["published_top1"] == 0.799


def test_label_encoder_embeds_the_top8_classes(exported):
    """Stage 2 reads only which 8 classes score highest and in what order: logits with the same top-8 give the
    same embedding whatever the other 992 scores; swapping two of the top-8 changes it."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(exported["label_encoder_small"][0]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 1000)).astype(np.float32)
    top = np.argsort(-a[0])[:8]
    b = rng.standard_normal((1, 1000)).astype(np.float32) - 10.0     # all far below the top-8 ...
    b[0, top] = a[0, top]                                             # ... which keep their scores
    c = a.copy()
    c[0, top[0]], c[0, top[1]] = a[0, top[1]], a[0, top[0]]          # the best two swapped
    ea, eb, ec = (sess.run(None, {"logits": x})[0] for x in (a, b, c))
    assert np.allclose(ea, eb, atol=1e-5)
    assert not np.allclose(ea, ec, atol=1e-3)


def _served(name: str, ins, outs):
    from cluster.stack.config import ModelSpec
    from cluster.stack.served import ServedModel, Tensor
    return ServedModel(ModelSpec(builtin=name), name, "python", tuple(Tensor(*t) for t in ins),
                       tuple(Tensor(*t) for t in outs))


def test_chain_check_between_stages():
    from cluster.stack.chain import check_links
    image = [("image", "UINT8", (224, 224, 3))], [("logits", "FP32", (1000,))]
    small, medium = _served("mobilenetv4_conv_small", *image), _served("mobilenetv4_conv_medium", *image)
    labels = _served("label_encoder_small", [("logits", "FP32", (1000,))], [("embedding", "FP32", (768,))])
    text = _served("text_encoder_small", [("input_ids", "INT64", (8,))], [("embedding", "FP32", (768,))])
    any_width = _served("mlp", [("x", "FP32", (-1,))], [("y", "FP32", (10,))])
    two = _served("two", [("a", "FP32", (1000,)), ("b", "FP32", (1000,))], [("y", "FP32", (10,))])
    check_links([[("small", small), ("medium", medium)], [("default", labels)]], ["image", "labels"])
    check_links([[("small", small)], [("a", any_width)]], ["image", "mlp"])          # -1: any size
    with pytest.raises(ConfigError, match=r"^model\.stages\.labels: input 'input_ids' INT64 \[8\] of model "
                                          r"'text_encoder_small' cannot take stage image \(small\)'s output "
                                          r"'logits' FP32 \[1000\]") as e:
        check_links([[("small", small)], [("default", text)]], ["image", "labels"])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^model\.stages\.second\.variants\.b: input 'image' UINT8"):
        check_links([[("default", small)], [("a", labels), ("b", small)]], ["first", "second"])
    with pytest.raises(ConfigError, match=r"^model\.stages\.labels: model 'two' has 2 inputs \(a, b\)"):
        check_links([[("small", small)], [("default", two)]], ["image", "labels"])


# --------------------------------------------------------------------------- the measurement file


def test_pipeline_measurement_file(tmp_path):
    cfg = ccfg.load_measure_config(_file(tmp_path, runs="""    - name: base
    - name: big
      stages: {image: {variant: medium, cluster: {replicas: 2}}}
      events: [{at_s: 5, scale: 2, stage: labels}, {at_s: 2, kill: 0, stage: image}]
"""))
    sm = cfg.stack.stage_models
    assert sm.variants("image") == ("small", "medium") and sm.variants("labels") == ("default",)
    assert sm.spec("image", "medium").builtin == "mobilenetv4_conv_medium"
    base, big = cfg.runs
    assert [st.variant for st in base.scenario.pipeline.stages] == ["small", "default"]
    img, lab = big.scenario.pipeline.stages
    assert (img.variant, img.cluster.replicas, img.cluster.max_replicas) == ("medium", 2, 3)
    assert lab == base.scenario.pipeline.stages[1]                      # the other stage untouched
    assert big.events == ((2.0, "kill", 0, "image"), (5.0, "scale", 2, "labels"))
    # stage k's settings: its variant's model, fixed ports moved out of the other stages' way
    st = cfg.stack.__class__(lb_port=9000, base_port=20000, stage_models=sm).for_stage(1, "labels", "default")
    assert (st.model.builtin, st.lb_port, st.base_port, st.stage_models) == ("label_encoder_small", 9001, 20200, None)
    from cluster.measure import deployments
    assert [d[0] for d in deployments(cfg)] == ["image/small", "image/medium", "labels/default"]
    assert deployments(cfg)[1][1].batching == img.batching


@pytest.mark.parametrize("model, runs, msg", [
    ("", None, r"model: a pipeline scenario needs a model per stage \(image, labels\)"),
    ("model: {builtin: mobilenetv4_conv_small}\n", None, r"model: a pipeline scenario gives one model per stage"),
    (MODEL.replace("label_encoder_small", "resnet"), None,
     r"model\.stages\.labels\.builtin: must be one of mobilenetv4_conv_small, "),
    (MODEL + "    detect: {builtin: mobilenetv4_conv_small}\n", None,
     r"model\.stages\.detect: no stage 'detect' in the pipeline \(its stages: image, labels\)"),
    (MODEL.replace("medium: {builtin", "large: {builtin"), None,
     r"model\.stages\.image\.variants\.large: no variant 'large' in stage image \(its variants: small, medium\)"),
    (MODEL.replace(", medium: {builtin: mobilenetv4_conv_medium}", ""), None,
     r"model\.stages\.image\.variants: no model for variant 'medium' of stage image"),
    (MODEL.replace("    labels: {builtin: label_encoder_small}\n", ""), None,
     r"model\.stages: no model for stage 'labels': give model\.stages\.labels: \{builtin: \.\.\.\}"),
    ("model: {stages: {image: {builtin: mobilenetv4_conv_small}, labels: {builtin: label_encoder_small}}}\n", None,
     r"model\.stages\.image: stage image has variants small, medium: give one model per variant"),
    (MODEL, "    - name: x\n      events: [{at_s: 1, scale: 2}]\n",
     r"measure\.runs\[0\]\.events\[0\]\.stage: is required"),
    (MODEL, "    - name: x\n      events: [{at_s: 1, scale: 2, stage: detect}]\n",
     r"measure\.runs\[0\]\.events\[0\]\.stage: must be one of the pipeline's stages: image, labels \(got 'detect'\)"),
    (MODEL, "    - name: x\n      events: [{at_s: 1, scale: 3, stage: labels}]\n",
     r"measure\.runs\[0\]\.events\[0\]\.scale: must be <= 2"),
    (MODEL, "    - name: x\n      stages: {detect: {variant: small}}\n",
     r"measure\.runs\[0\]\.stages\.detect: no stage 'detect' in the pipeline"),
    (MODEL, "    - name: x\n      stages: {image: {variant: large}}\n",
     r"measure\.runs\[0\]\.set \(scenario after overrides\): pipeline\.stages\[0\]\.variant: must be one of"),
])
def test_bad_pipeline_measurement_input_is_one_line(tmp_path, model, runs, msg):
    path = _file(tmp_path, model, runs or "    - name: base\n")
    with pytest.raises(ConfigError, match=msg) as e:
        ccfg.load_measure_config(path)
    assert "\n" not in str(e.value) and str(e.value).startswith(path + ": ")


def test_single_model_file_refuses_per_stage_keys(tmp_path):
    single = "scenario:\n  workload: {kind: poisson, rate_rps: 5}\n  service: {mean_ms: 5}\n"
    with pytest.raises(ConfigError, match=r"model\.stages: only with a pipeline scenario"):
        ccfg.load_measure_config(_file(tmp_path, MODEL, scenario=single))
    with pytest.raises(ConfigError, match=r"measure\.runs\[0\]\.stages: only for a pipeline scenario"):
        ccfg.load_measure_config(_file(tmp_path, "", "    - name: x\n      stages: {image: {variant: a}}\n", single))


def test_shipped_pipeline_measurement():
    cfg = ccfg.load_measure_config(str(ROOT / "configs" / "pipeline.yaml"))
    names = [r.name for r in cfg.runs]
    assert len(names) >= 5 and any(r.events for r in cfg.runs)
    pipe = cfg.scenario.pipeline
    assert [st.name for st in pipe.stages] == ["image", "labels"]
    from cluster.stack.model import PUBLISHED_TOP1
    image = pipe.stages[0]
    assert {v.name: v.accuracy for v in image.variants} == {
        "small": PUBLISHED_TOP1["mobilenetv4_conv_small"], "medium": PUBLISHED_TOP1["mobilenetv4_conv_medium"]}
    reps = {st.cluster.replicas for r in cfg.runs for st in r.scenario.pipeline.stages}
    assert reps == {1, 2}


# --------------------------------------------------------------------------- Kubernetes: a Deployment + Service per stage


def test_kubernetes_renders_one_deployment_and_service_per_stage(fake_api, tmp_path):
    import time

    import kubernetes_validate as kv

    from cluster.stack.chain import PipelineDeployment
    from cluster.stack.config import KubernetesSettings
    cfg = ccfg.load_measure_config(_file(tmp_path))
    stack = cfg.stack.__class__(backend="kubernetes", ready_timeout_s=10, stage_models=cfg.stack.stage_models,
                                kubernetes=KubernetesSettings(api_url=fake_api.url, namespace="ssim-test", hpa=True,
                                                              request_timeout_s=3))
    dep = PipelineDeployment(cfg.runs[0].scenario, stack, tmp_path / "k8s")
    try:
        dep.deploy()
        objs = fake_api.objects
        for k, (stage, model) in enumerate((("image", "mobilenetv4_conv_small"), ("labels", "label_encoder_small"))):
            app = f"servesim-triton-{stage}"
            d = objs[("deployments", "ssim-test", app)]
            assert d["spec"]["selector"]["matchLabels"] == {"app": app} == d["spec"]["template"]["metadata"]["labels"]
            pod = d["spec"]["template"]["spec"]
            assert {"name": "SERVESIM_MODEL", "value": model} in pod["initContainers"][0]["env"]
            assert [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v] == \
                [f"servesim-model-config-{stage}"]
            assert f'name: "{model}"' in objs[("configmaps", "ssim-test", f"servesim-model-config-{stage}")]["data"][
                "config.pbtxt"]
            svc = objs[("services", "ssim-test", app)]
            assert svc["spec"]["selector"] == {"app": app}
            assert [p.get("nodePort") for p in svc["spec"]["ports"]] == [30800 + k, None]
            assert objs[("horizontalpodautoscalers", "ssim-test", app)]["spec"]["scaleTargetRef"]["name"] == app
            assert dep.stages[k].backend.endpoints["lb"] == f"http://127.0.0.1:{30800 + k}"
            for r in dep.stages[k].backend.rendered():
                kv.validate(r, "1.30.0", strict=True)
        # scaled independently: the labels stage to 2, the image stage keeps 1
        dep.stage("labels").backend.scale(2)
        dep.stage("labels").backend.wait_ready(2, 5)
        time.sleep(0.3)
        assert [st.backend.ready_replicas for st in dep.stages] == [1, 2]
        assert sum(p["metadata"]["labels"]["app"] == "servesim-triton-labels" for p in fake_api.pods.values()) == 2
    finally:
        dep.teardown()
    assert not [key for key in fake_api.objects if key[0] in ("deployments", "services", "configmaps")]


def test_single_model_readers_refuse_a_pipeline_measurement_in_one_line(tmp_path):
    """calibration.fit reads a pipeline folder with calibration.pipeline; the single-model readers say so."""
    import json

    from calibration.measurements import CalibrationError, load_manifest, load_measurements
    from cluster.measure import FORMAT
    (tmp_path / "manifest.json").write_text(json.dumps({"format": FORMAT, "scenario": {"pipeline": {"stages": []}}}))
    assert load_manifest(tmp_path)["format"] == FORMAT
    with pytest.raises(CalibrationError, match=r"manifest\.json: a pipeline measurement .*reads single-model "
                                               r"measurements \(python -m calibration.fit calibrates a pipeline") as e:
        load_measurements(tmp_path)
    assert "\n" not in str(e.value)
