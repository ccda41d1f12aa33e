"""servesim's built-in models (``model: {builtin: NAME}``), each exported to ONNX once into the cache:

- ``mobilenetv4_conv_small`` (:mod:`cluster.stack.model`): an image classifier, UINT8 pixels in; on a CPU its
  cost per image hardly falls with batch size (Triton rarely batches it);
- ``mobilenetv4_conv_medium`` (:mod:`cluster.stack.model`): the larger MobileNetV4 (same input and output):
  the slower, more accurate variant of the built-in pipeline's first stage;
- ``text_encoder_small`` (:mod:`cluster.stack.textenc`): a transformer text encoder, token ids in; its cost
  per item falls strongly with batch size, so the dynamic batcher matters;
- ``label_encoder_small`` (:mod:`cluster.stack.textenc`): the text encoder over the top-8 classes of an image
  model's ``logits`` (what the image models answer): the built-in pipeline's second stage.

The built-in two-stage pipeline (``configs/pipeline.yaml``): stage ``image`` serves
``mobilenetv4_conv_small`` or ``mobilenetv4_conv_medium`` (the variants, with the published ImageNet top-1 of
their architectures, :data:`cluster.stack.model.PUBLISHED_TOP1`), stage ``labels`` serves
``label_encoder_small`` fed stage 1's ``logits`` unchanged.

``python -m cluster.stack.builtins curve NAME`` measures a model's per-batch compute curve with onnxruntime
directly (one intra-op thread, as a Triton instance runs it): median milliseconds per batch and per item
for each batch size -- how the text encoder's size was chosen.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import model as mobilenet
from . import textenc
from .config import BUILTIN_MODELS


def builtin_export(name: str, seed: int = 0, force: bool = False, verbose: bool = False) -> tuple[Path, dict]:
    """(cached ONNX path, description) of built-in ``name``; exported now if missing."""
    if name in mobilenet.ARCHS:
        small = name == mobilenet.MODEL_NAME
        return mobilenet.export_onnx(seed, force, verbose, name), {
            "architecture": f"MobileNetV4-Conv-{'Small' if small else 'Medium'} (random weights)",
            "parameters": mobilenet.PARAMETERS if small else mobilenet.MEDIUM_PARAMETERS,
            "published_top1": mobilenet.PUBLISHED_TOP1[name]}
    enc = (f"transformer text encoder, {textenc.LAYERS} layers x {textenc.WIDTH} wide, {textenc.SEQ_LEN} tokens "
           f"(random weights)")
    if name == textenc.MODEL_NAME:
        build, dummy, inp, check = (lambda: textenc.build_model(seed), textenc.example_input(2, seed),
                                    textenc.INPUT_NAME, textenc.check_onnx)
    elif name == textenc.LABEL_NAME:
        import torch
        build, dummy, inp, check = (lambda: textenc.build_label_encoder(seed),
                                    torch.from_numpy(textenc.example_logits(2, seed)), textenc.LABEL_INPUT,
                                    textenc.check_label_onnx)
        enc = f"top-{textenc.SEQ_LEN} classes of {textenc.LABEL_INPUT} -> {enc}"
    else:
        raise ValueError(f"unknown built-in model {name!r} (built-ins: {', '.join(BUILTIN_MODELS)})")
    out = mobilenet.cache_dir() / f"{name}-{textenc.onnx_key(seed, name)}.onnx"
    path = mobilenet.export_cached(out, build, dummy, [inp], [textenc.OUTPUT_NAME], check, textenc.OPSET, force,
                                   f"{name} ({textenc.PARAMETERS / 1e6:.2f} M parameters)" if verbose else "")
    return path, {"architecture": enc, "parameters": textenc.PARAMETERS}


def builtin_items(name: str, n: int, seed: int = 0):
    """``n`` request items of built-in ``name`` from its own generator (``{input: array}``), or None to use
    the generic synthesiser (:func:`cluster.stack.served.synthesise`)."""
    if name == textenc.MODEL_NAME:
        return {textenc.INPUT_NAME: textenc.token_ids(n, seed)}
    if name in mobilenet.ARCHS:
        return {mobilenet.INPUT_NAME: mobilenet.synthetic_images(n, seed)}
    if name == textenc.LABEL_NAME:
        return {textenc.LABEL_INPUT: textenc.example_logits(n, seed)}
    return None


def compute_curve(name: str, batch_sizes=(1, 2, 4, 8, 12, 16), seconds: float = 2.0, threads: int = 1) -> list[dict]:
    """Median compute time per batch of built-in ``name`` under onnxruntime (``threads`` intra-op threads),
    for each batch size: ``[{batch_size, ms_per_batch, ms_per_item, runs}]``."""
    import numpy as np
    import onnxruntime as ort
    path, _ = builtin_export(name)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rows = []
    for b in batch_sizes:
        feed = builtin_items(name, b, 0)
        for _ in range(3):
            sess.run(None, feed)
        ts = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(ts) < 5:
            t0 = time.perf_counter()
            sess.run(None, feed)
            ts.append(time.perf_counter() - t0)
        ms = float(np.median(ts)) * 1e3
        rows.append({"batch_size": b, "ms_per_batch": ms, "ms_per_item": ms / b, "runs": len(ts)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster.stack.builtins", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curve", help="per-batch compute curve of a built-in model (onnxruntime, this CPU)")
    c.add_argument("name", choices=BUILTIN_MODELS)
    c.add_argument("--batch-sizes", default="1,2,4,8,12,16")
    c.add_argument("--seconds", type=float, default=2.0, help="timing per batch size (default 2)")
    c.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    sizes = tuple(int(x) for x in a.batch_sizes.split(","))
    rows = compute_curve(a.name, sizes, a.seconds, a.threads)
    base = rows[0]["ms_per_item"]
    print(f"{a.name}: onnxruntime, {a.threads} thread(s), median of >= 5 runs per size")
    print(f"{'batch':>5} {'ms/batch':>9} {'ms/item':>8} {'per item vs b=' + str(rows[0]['batch_size']):>18}")
    for r in rows:
        print(f"{r['batch_size']:>5} {r['ms_per_batch']:9.2f} {r['ms_per_item']:8.2f} {r['ms_per_item'] / base:18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
