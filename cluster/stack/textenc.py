"""A small transformer text encoder in plain torch (random weights): the built-in model where batching matters.

Chosen because its cost per item falls strongly with batch size on a CPU: short inputs (``SEQ_LEN`` = 8
tokens, a search query or a short sentence) through ``LAYERS`` pre-norm encoder layers of width ``WIDTH``
(BERT-base's width, 12 heads). At batch 1 each layer's matrix products are ``[8, W] x [W, k]``: the weights
(~``PARAMETERS`` x 4 bytes, larger than the caches) are streamed from memory for 8 rows of work and the
matrix kernels run far below their peak on so few rows; a batch of ``b`` requests reuses every weight for
``8 b`` rows. Sized by measuring candidates with onnxruntime on one thread of this 2-core VM (median ms per
batch at b = 1 / 16, per item at 16): 16 tokens x 512 wide x 4 layers 10.6 / 104.6 (6.5 per item, only 1.6x
cheaper per item); 8 x 768 x 2 layers 10.4 / 57.6 (3.6, 2.9x cheaper: this one); 4 x 1024 x 2 12.8 / 57.5
(3.6); 4 x 768 x 3 11.3 / 53.6 (3.4). Its curve: ``python -m cluster.stack.builtins curve text_encoder_small``
(README).

Input ``input_ids``: INT64 ``[batch, SEQ_LEN]`` token ids in ``[0, VOCAB)``; output ``embedding``: FP32
``[batch, WIDTH]`` (mean-pooled last hidden state). The batch axis is dynamic. Exported to ONNX once into the
cache (``.cache/servesim/``), never committed; weights from seed 0.

``label_encoder_small`` (:func:`build_label_encoder`) is the second stage of the built-in two-stage pipeline
(``configs/pipeline.yaml``): it takes what the image stage answers -- ``logits`` FP32 ``[batch, 1000]``, as the
client receives them -- keeps the ``SEQ_LEN`` = 8 highest-scoring ImageNet class ids (an ONNX ``TopK`` inside the
graph) and embeds that label sequence with this text encoder (class ``c`` is token ``c``; 1000 < ``VOCAB``):
an image -> predicted-labels embedding, as a retrieval or captioning pipeline would index it. The client
forwards stage 1's output tensor unchanged, so the pipeline needs no glue code between the stages; the
top-k costs ~nothing beside the encoder, so its compute curve is the text encoder's (it batches well, where
the image stage hardly does). Same weights as ``text_encoder_small`` (seed 0).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

MODEL_NAME = "text_encoder_small"
INPUT_NAME = "input_ids"
OUTPUT_NAME = "embedding"
VOCAB = 8192
SEQ_LEN = 8
WIDTH = 768
HEADS = 12
FFN = 3072
LAYERS = 2
EXPORT_VERSION = 1
OPSET = 17
PARAMETERS = 20_474_880   # count_parameters(build_model()); checked by the tests
LABEL_NAME = "label_encoder_small"
LABEL_INPUT = "logits"        # the image models' output name: the client forwards it as is
LABEL_CLASSES = 1000


def build_model(seed: int = 0):
    import torch
    from torch import nn

    class Layer(nn.Module):
        """Pre-norm encoder layer: x + attn(ln(x)); x + ffn(ln(x)) (GELU)."""

        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
            self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
            self.proj = nn.Linear(WIDTH, WIDTH)
            self.up, self.down = nn.Linear(WIDTH, FFN), nn.Linear(FFN, WIDTH)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(WIDTH // HEADS), dim=-1)
            x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, WIDTH))
            return x + self.down(torch.nn.functional.gelu(self.up(self.ln2(x))))

    class TextEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(VOCAB, WIDTH)
            self.pos = nn.Parameter(torch.zeros(1, SEQ_LEN, WIDTH))
            self.layers = nn.ModuleList([Layer() for _ in range(LAYERS)])
            self.ln = nn.LayerNorm(WIDTH)

        def forward(self, input_ids):
            x = self.tok(input_ids) + self.pos
            for layer in self.layers:
                x = layer(x)
            return self.ln(x).mean(dim=1)

    torch.manual_seed(seed)
    m = TextEncoder()
    with torch.no_grad():
        m.pos.normal_(0.0, 0.02)
    return m.eval()


def build_label_encoder(seed: int = 0):
    """``label_encoder_small``: the top-``SEQ_LEN`` class ids of the ``logits`` input -> the text encoder."""
    import torch
    from torch import nn

    class LabelEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = build_model(seed)

        def forward(self, logits):
            return self.encoder(torch.topk(logits, SEQ_LEN, dim=1).indices)

    return LabelEncoder().eval()


def onnx_key(seed: int = 0, name: str = MODEL_NAME) -> str:
    spec = {"v": EXPORT_VERSION, "opset": OPSET, "seed": seed, "vocab": VOCAB, "seq": SEQ_LEN,
            "width": WIDTH, "heads": HEADS, "ffn": FFN, "layers": LAYERS}
    if name != MODEL_NAME:
        spec["front"] = f"topk({LABEL_INPUT}[{LABEL_CLASSES}])"
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def example_input(batch: int, seed: int = 0):
    import torch
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, SEQ_LEN), generator=g, dtype=torch.int64)


def token_ids(n: int, seed: int = 0):
    """``n`` seeded random token-id sequences ``[n, SEQ_LEN]`` (the load's request payloads)."""
    import numpy as np
    return np.random.default_rng([seed, 11]).integers(0, VOCAB, size=(n, SEQ_LEN), dtype=np.int64)


def example_logits(batch: int, seed: int = 0):
    """``batch`` seeded standard-normal logits ``[batch, LABEL_CLASSES]`` (FP32)."""
    import numpy as np
    return np.random.default_rng([seed, 12]).standard_normal((batch, LABEL_CLASSES)).astype(np.float32)


def check_onnx(path: str | Path, model) -> None:
    """The exported graph must match torch on a random batch of 3 (the dynamic axis works)."""
    _check(path, model, INPUT_NAME, token_ids(3, 1))


def check_label_onnx(path: str | Path, model) -> None:
    """As :func:`check_onnx`, for the label encoder (logits in)."""
    _check(path, model, LABEL_INPUT, example_logits(3, 1))


def _check(path, model, input_name: str, x) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run([OUTPUT_NAME], {input_name: x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    if got.shape != (3, WIDTH) or not np.allclose(got, want, rtol=1e-3, atol=1e-3):
        raise RuntimeError(f"ONNX export check failed: shape {got.shape}, max abs diff "
                           f"{float(np.abs(got - want).max()):.3g}")
