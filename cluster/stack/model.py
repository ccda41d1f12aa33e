"""MobileNetV4-Conv-Small and -Medium in plain torch (random weights) and their cached ONNX exports.

The architectures follow MobileNetV4 (Qin et al., 2024, "MobileNetV4 - Universal Models for the Mobile
Ecosystem", arXiv:2404.10518, Tables 10 and 11):

- ``mobilenetv4_conv_small`` ("MNv4-Conv-S"): a conv stem, two fused conv stages, then Universal Inverted
  Bottleneck (UIB) blocks in their ExtraDW / IR / ConvNext forms, a 1x1 conv to 960 channels, global pooling,
  a 1280-wide head and a 1000-class classifier (~3.8 M parameters, ~0.2 GFLOPs at 224x224);
- ``mobilenetv4_conv_medium`` ("MNv4-Conv-M"): a FusedIB (edge residual) stage, then deeper and wider UIB
  stages (ExtraDW / ConvNext / FFN forms) up to 256 channels, the same head (~9.7 M parameters, ~0.8 GFLOPs
  at 224x224).

ReLU + BatchNorm throughout. Weights are random (seeded): the served compute is what matters for latency,
not the accuracy. The two are the size variants of the built-in pipeline's first stage
(``configs/pipeline.yaml``, :mod:`cluster.stack.builtins`); their accuracies there, :data:`PUBLISHED_TOP1`,
are the paper's published ImageNet-1k top-1 figures (MNv4-Conv-S 73.8 % at 224 px, MNv4-Conv-M 79.9 % at 256 px; the
paper's Table 10/11 "Top-1" column), quoted, never measured here (the weights are random). Both are served at
224 px here, so a client sends the same image to either.

The exported graph takes what a client sends -- ``image``: UINT8
``[batch, 224, 224, 3]`` (HWC pixels) -- and does the usual preprocessing
inside the graph (cast, scale to [0, 1], ImageNet mean/std, HWC -> CHW), so
the server really does everything an image classifier deployment does. Output:
``logits`` FP32 ``[batch, 1000]``. The batch axis is dynamic.

The ONNX file is written once to the cache directory (``.cache/servesim/`` in the
repository, or ``$SERVESIM_CACHE``), keyed by a hash of the export settings, and
never committed; no download happens at any time. The weights are always drawn
from seed 0 (the served model is the same whatever a scenario's seed is).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

MODEL_NAME = "mobilenetv4_conv_small"
MEDIUM_NAME = "mobilenetv4_conv_medium"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
IMAGE_SHAPE = (224, 224, 3)
NUM_CLASSES = 1000
EXPORT_VERSION = 1          # bump when the architecture / export changes
OPSET = 17
PARAMETERS = 3_774_024   # count_parameters(build_model()); checked by the tests
MEDIUM_PARAMETERS = 9_715_512   # count_parameters(build_model(name=MEDIUM_NAME)); checked by the tests
# ImageNet-1k top-1 as published (Qin et al. 2024, Tables 10 / 11), not measured here: see the module docstring
PUBLISHED_TOP1 = {MODEL_NAME: 0.738, MEDIUM_NAME: 0.799}

# (block kind, repeats, start-dw kernel, mid-dw kernel, stride, expand ratio, out channels)
# 'cn' = conv-bn-relu (kernel = mid kernel); 'uir' = universal inverted residual; 'er' = FusedIB (edge
# residual: a mid-kernel conv expanding by the ratio, then a 1x1 projection).
ARCH = (
    # stage 0, 112x112 in
    ("cn", 1, 0, 3, 2, 1.0, 32), ("cn", 1, 0, 1, 1, 1.0, 32),
    # stage 1, 56x56 in
    ("cn", 1, 0, 3, 2, 1.0, 96), ("cn", 1, 0, 1, 1, 1.0, 64),
    # stage 2, 28x28 in
    ("uir", 1, 5, 5, 2, 3.0, 96),      # ExtraDW
    ("uir", 4, 0, 3, 1, 2.0, 96),      # IR
    ("uir", 1, 3, 0, 1, 4.0, 96),      # ConvNext
    # stage 3, 14x14 in
    ("uir", 1, 3, 3, 2, 6.0, 128),     # ExtraDW
    ("uir", 1, 5, 5, 1, 4.0, 128),     # ExtraDW
    ("uir", 1, 0, 5, 1, 4.0, 128),     # IR
    ("uir", 1, 0, 5, 1, 3.0, 128),     # IR
    ("uir", 2, 0, 3, 1, 4.0, 128),     # IR
    # stage 4, 7x7 in
    ("cn", 1, 0, 1, 1, 1.0, 960),
)
# MNv4-Conv-M (Table 11)
MEDIUM_ARCH = (
    # stage 0, 112x112 in
    ("er", 1, 0, 3, 2, 4.0, 48),       # FusedIB
    # stage 1, 56x56 in
    ("uir", 1, 3, 5, 2, 4.0, 80),      # ExtraDW
    ("uir", 1, 3, 3, 1, 2.0, 80),      # ExtraDW
    # stage 2, 28x28 in
    ("uir", 1, 3, 5, 2, 6.0, 160),     # ExtraDW
    ("uir", 2, 3, 3, 1, 4.0, 160),     # ExtraDW
    ("uir", 1, 3, 5, 1, 4.0, 160),     # ExtraDW
    ("uir", 1, 3, 3, 1, 4.0, 160),     # ExtraDW
    ("uir", 1, 3, 0, 1, 4.0, 160),     # ConvNext
    ("uir", 1, 0, 0, 1, 2.0, 160),     # FFN
    ("uir", 1, 3, 0, 1, 4.0, 160),     # ConvNext
    # stage 3, 14x14 in
    ("uir", 1, 5, 5, 2, 6.0, 256),     # ExtraDW
    ("uir", 1, 5, 5, 1, 4.0, 256),     # ExtraDW
    ("uir", 2, 3, 5, 1, 4.0, 256),     # ExtraDW
    ("uir", 1, 0, 0, 1, 4.0, 256),     # FFN
    ("uir", 1, 3, 0, 1, 4.0, 256),     # ConvNext
    ("uir", 1, 3, 5, 1, 2.0, 256),     # ExtraDW
    ("uir", 1, 5, 5, 1, 4.0, 256),     # ExtraDW
    ("uir", 2, 0, 0, 1, 4.0, 256),     # FFN
    ("uir", 1, 5, 0, 1, 2.0, 256),     # ConvNext
    # stage 4, 7x7 in
    ("cn", 1, 0, 1, 1, 1.0, 960),
)
ARCHS = {MODEL_NAME: ARCH, MEDIUM_NAME: MEDIUM_ARCH}
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def cache_dir() -> Path:
    """Where generated artefacts live (ONNX model, prepared Triton backend dir)."""
    d = Path(os.environ.get("SERVESIM_CACHE") or repo_root() / ".cache" / "servesim")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def build_model(seed: int = 0, name: str = MODEL_NAME):
    """The torch module of MobileNetV4 ``name`` (:data:`ARCHS`; eval mode, random weights drawn from ``seed``)."""
    arch = ARCHS[name]
    import torch
    from torch import nn

    def conv_bn(cin, cout, k, s=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        return nn.Sequential(*layers)

    class UIR(nn.Module):
        """Universal inverted bottleneck: [dw_start] -> pw expand -> [dw_mid] -> pw project (+ skip)."""

        def __init__(self, cin, cout, k_start, k_mid, stride, expand):
            super().__init__()
            mid = _make_divisible(cin * expand)
            self.dw_start = conv_bn(cin, cin, k_start, stride if not k_mid else 1, groups=cin, act=False) \
                if k_start else nn.Identity()
            self.pw_exp = conv_bn(cin, mid, 1)
            self.dw_mid = conv_bn(mid, mid, k_mid, stride, groups=mid) if k_mid else nn.Identity()
            self.pw_proj = conv_bn(mid, cout, 1, act=False)
            self.skip = stride == 1 and cin == cout

        def forward(self, x):
            y = self.pw_proj(self.dw_mid(self.pw_exp(self.dw_start(x))))
            return x + y if self.skip else y

    class FusedIB(nn.Module):
        """FusedIB (edge residual): k x k conv expanding to ``cin * expand`` channels, then a 1x1 projection."""

        def __init__(self, cin, cout, k, stride, expand):
            super().__init__()
            mid = _make_divisible(cin * expand)
            self.conv_exp = conv_bn(cin, mid, k, stride)
            self.pw_proj = conv_bn(mid, cout, 1, act=False)
            self.skip = stride == 1 and cin == cout

        def forward(self, x):
            y = self.pw_proj(self.conv_exp(x))
            return x + y if self.skip else y

    class MobileNetV4Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255.0)
            blocks = [conv_bn(3, STEM_CHANNELS, 3, 2)]
            c = STEM_CHANNELS
            for kind, reps, ks, km, s, e, cout in arch:
                for r in range(reps):
                    stride = s if r == 0 else 1
                    if kind == "cn":
                        blocks.append(conv_bn(c, cout, km, stride))
                    elif kind == "er":
                        blocks.append(FusedIB(c, cout, km, stride, e))
                    else:
                        blocks.append(UIR(c, cout, ks, km, stride, e))
                    c = cout
            self.features = nn.Sequential(*blocks)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = conv_bn(c, HEAD_CHANNELS, 1)
            self.classifier = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

        def forward(self, image):  # image: uint8 [B, H, W, 3]
            x = image.permute(0, 3, 1, 2).to(torch.float32)
            x = (x - self.mean) / self.std
            x = self.head(self.pool(self.features(x)))
            return self.classifier(torch.flatten(x, 1))

    torch.manual_seed(seed)
    m = MobileNetV4Conv()
    # random but well-scaled BatchNorm statistics, so activations stay finite
    g = torch.Generator().manual_seed(seed + 1)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m.eval()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def onnx_key(seed: int = 0, name: str = MODEL_NAME) -> str:
    spec = json.dumps({"arch": ARCHS[name], "v": EXPORT_VERSION, "opset": OPSET, "seed": seed}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def onnx_path(seed: int = 0, name: str = MODEL_NAME) -> Path:
    return cache_dir() / f"{name}-{onnx_key(seed, name)}.onnx"


def export_onnx(seed: int = 0, force: bool = False, verbose: bool = False, name: str = MODEL_NAME) -> Path:
    """Export MobileNetV4 ``name`` (small or medium) to ONNX (dynamic batch axis) once; return the cached path."""
    import torch
    params = PARAMETERS if name == MODEL_NAME else MEDIUM_PARAMETERS
    return export_cached(onnx_path(seed, name), lambda: build_model(seed, name),
                         torch.zeros((2, *IMAGE_SHAPE), dtype=torch.uint8), [INPUT_NAME], [OUTPUT_NAME], _check_onnx,
                         OPSET, force, f"{name} ({params / 1e6:.2f} M parameters)" if verbose else "")


def export_cached(out: Path, build, dummy, input_names, output_names, check, opset: int, force: bool = False,
                  announce: str = "") -> Path:
    """Export the torch module ``build()`` to ONNX at ``out`` once (every input and output with a dynamic
    batch axis), checked by ``check(path, module)``; return ``out``.

    Written to a temporary file and renamed, so an interrupted export never leaves a truncated model in the
    cache. ``announce``: print what was exported (when it was).
    """
    if out.exists() and not force:
        return out
    import torch

    model = build()
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        kw = dict(input_names=list(input_names), output_names=list(output_names),
                  dynamic_axes={n: {0: "batch"} for n in (*input_names, *output_names)}, opset_version=opset)
        try:
            torch.onnx.export(model, (dummy,), tmp, dynamo=False, **kw)
        except TypeError:  # older torch without the dynamo switch
            torch.onnx.export(model, (dummy,), tmp, **kw)
        check(tmp, model)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if announce:
        print(f"exported {announce} to {out}")
    return out


def _check_onnx(path: str, model) -> None:
    """The exported graph must match torch on a random batch of 3 (dynamic axis works)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(0).integers(0, 256, size=(3, *IMAGE_SHAPE), dtype=np.uint8)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    if got.shape != (3, NUM_CLASSES) or not np.allclose(got, want, rtol=1e-3, atol=1e-3):
        raise RuntimeError(f"ONNX export check failed: shape {got.shape}, "
                           f"max abs diff {float(np.abs(got - want).max()):.3g}")


def synthetic_images(n: int, seed: int = 0):
    """``n`` seeded random UINT8 images ``[n, 224, 224, 3]`` (the load's request payloads)."""
    import numpy as np
    return np.random.default_rng(seed).integers(0, 256, size=(n, *IMAGE_SHAPE), dtype=np.uint8)
