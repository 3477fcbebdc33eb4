"""Details of each op of a diagnosed variant (issue 12 item 5): the range of its weights, and a
histogram of its output activations in the float32 model and in the quantized one, on the
images the variant flipped (the calibration images when it flipped none).

Written by the diagnose stage as `<variant>.layer_details.json`, so the Layers page shows them
without TensorFlow or LiteRT. Histograms, not values: a MobileNet conv output is tens of
thousands of values per image, a histogram is 2 x BINS numbers whatever the data set size.
The float activations are the float32 TFLite model's tensor of the same name (the converter
and the quantizer keep the float model's tensor names); an op without one has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.engine.tensors import dequantize_per_channel
from core.inputs.rundir import LAYER_DETAILS

DETAILS_SUFFIX = LAYER_DETAILS  # `<file_id>.layer_details.json` in the run folder
BINS = 40
# Values per op and model a histogram counts: a 40-bin shape is steady long before this, and a
# large model's tensors are sampled down to it (core.engine.layer_details._activations).
MAX_VALUES = 100_000


def layer_details(
    float_tflite: bytes,
    tflite: bytes,
    rows: list[tuple[int, str]],
    images: np.ndarray,
    *,
    images_are: str,
    max_values: int = MAX_VALUES,
) -> dict[str, Any]:
    """Weight range and float/quantized activation histograms per op.

    Args:
        float_tflite: the float32 TFLite model (the pivot).
        tflite: the variant's model.
        rows: (order, output tensor name) of the ops of `<variant>.layers.csv`.
        images: preprocessed float32 [N,H,W,C] images the activations are measured on.
        images_are: "flipped" or "calibration", said on the page.
        max_values: at most this many values per op and model; a larger tensor is sampled
            (seeded, uniform per image, the same positions in both models).

    Returns:
        {"images": images_are, "n_images": N, "ops": {order: {...}}}; an op's `histogram` is
        None when the float model has no tensor of its name.
    """
    names = [name for _, name in rows]
    floated, quantized = _activations(float_tflite, tflite, names, images, max_values)
    weights = weight_ranges(tflite)
    ops: dict[str, Any] = {}
    for order, name in rows:
        low_high = weights.get(name)
        ops[str(order)] = {
            "tensor_name": name,
            "weight_min": None if low_high is None else low_high[0],
            "weight_max": None if low_high is None else low_high[1],
            "histogram": _histogram(floated.get(name), quantized.get(name)),
        }
    return {"images": images_are, "n_images": len(images), "ops": ops}


def _histogram(floated: _Sampled | None, quantized: _Sampled | None) -> dict[str, Any] | None:
    """Counts of both on the same BINS edges spanning both (so the bars overlay exactly)."""
    if floated is None or quantized is None or not floated.values.size:
        return None
    finite_f = floated.values[np.isfinite(floated.values)]
    finite_q = quantized.values[np.isfinite(quantized.values)]
    both = np.concatenate([finite_f, finite_q])
    if not both.size:
        return None
    low, high = float(both.min()), float(both.max())
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, BINS + 1)
    return {
        "edges": edges.tolist(),
        "float": np.histogram(finite_f, bins=edges)[0].tolist(),
        "quantized": np.histogram(finite_q, bins=edges)[0].tolist(),
        "values": int(floated.values.size),  # per model: what the counts are counted over
        "tensor_values": floated.tensor_values,  # every element on every image: more if sampled
    }


@dataclass(frozen=True)
class _Sampled:
    values: np.ndarray  # flat float32, the sampled elements of every image
    tensor_values: int  # elements of the tensor on every image


def _activations(
    float_tflite: bytes, tflite: bytes, names: list[str], images: np.ndarray, max_values: int
) -> tuple[dict[str, _Sampled], dict[str, _Sampled]]:
    """Per named tensor both models have: its float values (dequantized) on every image, in
    each model, at most `max_values` of them, streamed so no whole tensor is kept.

    A MobileNetV2 at 224x224 has about 7 million activation values per image: keeping them
    all for 50 images took gigabytes and minutes of histogramming. The same positions are
    read in both models, so the two histograms count the same elements.
    """
    from core.engine.intermediates import IntermediateTensors

    float_model, quantized_model = IntermediateTensors(float_tflite), IntermediateTensors(tflite)
    per_image = max(1, max_values // max(len(images), 1))
    rng = np.random.default_rng(0)
    sizes = {
        name: float_model.size(name)
        for name in names
        if name in float_model.details
        and name in quantized_model.details
        and float_model.size(name) == quantized_model.size(name)  # the same tensor in both
    }
    found: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {n: ([], []) for n in sizes}
    for image in images:
        float_model.run(image)
        quantized_model.run(image)
        for name, size in sizes.items():
            # A fresh uniform draw per image (with replacement: i.i.d., and cheap on millions).
            at = None if size <= per_image else rng.integers(0, size, per_image)
            found[name][0].append(float_model.values(name, at=at))
            found[name][1].append(quantized_model.values(name, at=at))
    total = {n: size * len(images) for n, size in sizes.items()}
    floated = {n: _Sampled(np.concatenate(f), total[n]) for n, (f, _) in found.items() if f}
    quantized = {n: _Sampled(np.concatenate(q), total[n]) for n, (_, q) in found.items() if q}
    return floated, quantized


def weight_ranges(tflite: bytes) -> dict[str, tuple[float, float]]:
    """Output tensor name -> (min, max) of each op's weights in float units: its constant
    inputs of rank 2 or more (kernels, not biases), dequantized per channel where quantized."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    graph = model.subgraphs[0]
    # float16 weights reach their op through a DEQUANTIZE op (float16 -> float32): the
    # weights are that op's constant input.
    dequantized = {
        op.outputs[0]: op.inputs[0]
        for op in graph.operators
        if _builtin(model, op) == DEQUANTIZE and len(op.inputs) and len(op.outputs)
    }
    ranges: dict[str, tuple[float, float]] = {}
    for op in graph.operators:
        values = [
            _constant(model, graph.tensors[dequantized.get(i, i)])
            for i in op.inputs
            if i >= 0 and i < len(graph.tensors)
        ]
        kernels = [v for v in values if v is not None and v.ndim >= 2 and v.size]
        if not kernels or not len(op.outputs):
            continue
        name = _text(graph.tensors[op.outputs[0]].name)
        ranges[name] = (
            float(min(v.min() for v in kernels)),
            float(max(v.max() for v in kernels)),
        )
    return ranges


DEQUANTIZE = 6  # schema.BuiltinOperator.DEQUANTIZE


def _builtin(model: Any, op: Any) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return int(max(code.builtinCode, code.deprecatedBuiltinCode))


_TYPES = {0: np.float32, 1: np.float16, 9: np.int8, 3: np.uint8}  # schema.TensorType


def _constant(model: Any, tensor: Any) -> np.ndarray | None:
    """A constant tensor's values in float units, or None (not constant, or a type not read)."""
    buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    dtype = _TYPES.get(int(tensor.type))
    if buffer is None or buffer.data is None or dtype is None or not len(buffer.data):
        return None
    raw = np.frombuffer(np.asarray(buffer.data, dtype=np.uint8).tobytes(), dtype=dtype)
    shape = tuple(int(d) for d in tensor.shape)
    if int(np.prod(shape)) != raw.size:
        return None
    values = raw.reshape(shape)
    q = tensor.quantization
    if np.dtype(dtype).kind not in "iu" or q is None or q.scale is None or not len(q.scale):
        return values.astype(np.float32)
    zero = q.zeroPoint if q.zeroPoint is not None else [0]
    return dequantize_per_channel(values, q.scale, zero, int(q.quantizedDimension))


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value or "")
