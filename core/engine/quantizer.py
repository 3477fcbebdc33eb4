"""The quantizer backend: LiteRT Quantizer recipes applied to the converter's one float32 `.tflite`.

The float32 model comes from `core.engine.convert` (and its content-hash cache), so every quantizer
variant of a run starts from the same bytes; each recipe then takes a fraction of a second
where a converter run takes seconds. Outputs are cached by content hash too: the float model's
bytes, the recipe (mode, I/O type, per-layer overrides), the calibration tensors and the
library versions. TensorFlow and LiteRT are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import re
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.engine.convert import ConversionResult, _check_calibration, tflite_from_converter
from core.engine.models import ReferenceModel
from core.errors import ConversionFailed
from core.inputs.convcache import read_cached, write_cached
from core.metrics.latency import usable_cpus
from core.types import Backend, IOType, Mode, VariantSpec

# Part of every quantizer cache key: bump it when QuantLens changes a recipe.
QUANTIZER_RECIPE_VERSION = 2  # 2: min/max calibration, as the converter
# Keras 3 names each layer's TF scope `<layer>_<n>` (conv2d -> conv2d_1, conv2d_1 -> conv2d_1_2).
_KERAS_SCOPE = re.compile(r"^(.+)_\d+$")
_INT8_ZERO_POINT_TO_UINT8 = 128


def tflite_from_quantizer(
    model: ReferenceModel,
    spec: VariantSpec,
    *,
    model_sha256: str,
    calibration: np.ndarray | None = None,
    preset: str | None = None,
    probe: np.ndarray | None = None,
    cache_dir: Path | None = None,
    float32: ConversionResult | None = None,
) -> ConversionResult:
    """Quantize the reference model's float32 `.tflite` with the recipe of `spec`.

    Args:
        model: the loaded reference model (converted once to float32 by the converter).
        spec: a quantizer-backend variant.
        model_sha256: content hash of the model files, for the float32 conversion's cache key.
        calibration: float32 [N,H,W,C] preprocessed images, the same the converter uses;
            required for int8 and int16x8.
        preset: the preprocessing preset, for the float32 conversion's cache key.
        probe: a few evaluation images the float32 conversion must answer finitely.
        cache_dir: where models are kept by content hash; None disables the cache.
        float32: this model's float32 conversion already made by the caller (the run's pivot,
            converted with the same preset and probe), used instead of converting again or
            reading the cache and re-running the probe check.

    Raises:
        ConversionFailed: the float conversion or the quantizer failed, a named layer does not
            exist, or calibration data is unusable.
    """
    if spec.backend is not Backend.QUANTIZER:
        raise ValueError(f"{spec.name} is not a quantizer variant")
    calibration = _check_calibration(spec, calibration)
    try:
        float_result = float32 or tflite_from_converter(
            model,
            VariantSpec(mode=Mode.FLOAT32),
            model_sha256=model_sha256,
            preset=preset,
            probe=probe,  # the float32 model is checked for NaN/Inf outputs like any variant
            cache_dir=cache_dir,
        )
    except ConversionFailed as exc:
        raise ConversionFailed(
            f"{spec.name}: the quantizer starts from the float32 model and that conversion "
            f"failed: {exc}"
        ) from None
    # A float conversion made for this variant is part of what it cost; a cached one, or the
    # pivot's, is not.
    float_seconds = 0.0 if float_result.cached or float32 is not None else float_result.seconds
    key = quantizer_cache_key(float_result.tflite, spec, calibration)
    cached_file = cache_dir / f"{key}.tflite" if cache_dir is not None else None
    hit = None if cached_file is None else read_cached(cached_file)
    if hit is not None:
        return ConversionResult(
            spec=spec,
            tflite=hit,
            seconds=float_seconds,
            cached=True,
            route=float_result.route,
        )
    started = time.perf_counter()
    data = quantize_float_tflite(float_result.tflite, spec, calibration)
    seconds = float_seconds + time.perf_counter() - started
    if cached_file is not None:
        write_cached(cached_file, data)
    return ConversionResult(
        spec=spec, tflite=data, seconds=seconds, cached=False, route=float_result.route
    )


def quantizer_cache_key(
    float_tflite: bytes, spec: VariantSpec, calibration: np.ndarray | None
) -> str:
    """Content hash of everything that determines the quantizer's output."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    digest.update(hashlib.sha256(float_tflite).digest())
    digest.update(
        json.dumps(
            {
                "variant": spec.to_dict(),
                "recipe": QUANTIZER_RECIPE_VERSION,
                "versions": {
                    "litert-quantizer": version("litert-quantizer"),
                    "litert": version("ai-edge-litert"),
                },
            },
            sort_keys=True,
        ).encode()
    )
    if calibration is not None:
        digest.update(np.ascontiguousarray(calibration, dtype=np.float32).tobytes())
    return digest.hexdigest()


def quantize_float_tflite(
    float_tflite: bytes, spec: VariantSpec, calibration: np.ndarray | None
) -> bytes:
    """The quantized model for one variant, from float32 `.tflite` bytes.

    Raises:
        ConversionFailed: unknown layer names, or the quantizer refused the recipe.
    """
    from litert_quantizer import Quantizer

    from core.engine.flatbuffer import op_outputs

    layers = layer_scopes(float_tflite)
    keras3 = keras3_scopes(name for _, name in op_outputs(float_tflite))
    quantizer = Quantizer(bytearray(float_tflite))
    try:
        _configure(quantizer, spec, layers, keras3=keras3)
        with _quantizer_output_to_stderr():
            qsvs = None
            if quantizer.need_calibration:
                qsvs = _min_max_ranges(
                    float_tflite, quantizer, _calibration_inputs(float_tflite, calibration, spec)
                )
            result = quantizer.quantize(
                qsvs, enable_progress_bar=False, enable_progress_report=False
            )
    except ConversionFailed:
        raise
    except Exception as exc:  # ValueError / RuntimeError from the quantizer or LiteRT
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConversionFailed(
            f"{spec.name}: the LiteRT Quantizer failed: {first[:300]}; choose another mode or "
            "keep the failing layer in float (keep=)"
        ) from None
    data = bytes(result.quantized_model or b"")
    if spec.mode is Mode.INT8 and spec.io_type is IOType.UINT8:
        data = int8_io_to_uint8(data, name=spec.name)
    return data


def _min_max_ranges(
    float_tflite: bytes, quantizer: Any, inputs: dict[str, list[dict[str, np.ndarray]]]
) -> dict[str, Any]:
    """Activation ranges over all calibration images: the minimum and maximum, as the
    converter's calibrator takes them.

    The quantizer's own `calibrate` averages each image's range instead (a moving average over
    batch-1 steps), which clips what a few images reach: on a wide Dense model that cost 0.19
    in probability against the converter's 0.004. Same images, same statistic: the two
    backends then differ only in their recipes. The profiler-based calibrator tracks the
    ranges in C++ (3 s instead of 15 s for 100 MobileNetV2-224 images here); it keeps every
    tensor's range, which is all min/max needs.
    """
    from litert_quantizer import calibrator, recipe_manager
    from litert_quantizer.utils import qsv_utils

    recipes = recipe_manager.RecipeManager()
    recipes.load_quantization_recipe(quantizer.get_quantization_recipe())
    calib = calibrator.Calibrator(
        bytearray(float_tflite),
        num_threads=usable_cpus(),
        mode=calibrator.CalibrationMode.CALIBRATION_PROFILER_BASED,
        qsv_update_func=qsv_utils.min_max_update,
    )
    calib.calibrate(inputs, recipes)
    ranges: dict[str, Any] = calib.get_model_qsvs()
    return ranges


@contextlib.contextmanager
def _quantizer_output_to_stderr() -> Iterator[None]:
    """The quantizer prints reports and calibration bars no flag silences: send them to the
    worker log (stderr), never to stdout, which the CLI keeps for the result table."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _configure(
    quantizer: Any, spec: VariantSpec, layers: dict[str, list[str]], *, keras3: bool
) -> None:
    """Load the mode's recipe, then the I/O and per-layer overrides (later rules win)."""
    from litert_quantizer import recipe
    from litert_quantizer.algorithm_manager import AlgorithmName
    from litert_quantizer.qtyping import TFLOperationName

    every_op = TFLOperationName.ALL_SUPPORTED
    if spec.mode is Mode.FLOAT16:
        # No ready recipe: float16 weights are a weight-only config with float casting.
        quantizer.add_weight_only_config(
            ".*", every_op, num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING
        )
    elif spec.mode is Mode.DYNAMIC:
        # The legacy recipe skips small weights as the converter does; the default
        # dynamic_wi8_afp32 does not, and is not the converter's dynamic mode.
        quantizer.load_quantization_recipe(recipe.dynamic_legacy_wi8_afp32())
    elif spec.mode is Mode.INT8:
        quantizer.load_quantization_recipe(recipe.static_wi8_ai8())
    elif spec.mode is Mode.INT16X8:
        quantizer.load_quantization_recipe(recipe.static_wi8_ai16())
    elif spec.mode is Mode.INT4W:
        quantizer.load_quantization_recipe(recipe.weight_only_wi4_afp32())
    else:
        raise ConversionFailed(
            f"{spec.name}: float32 is the converter's own model; use float32 (converter backend)"
        )
    # int16x8 keeps float I/O, as the converter's int16x8 does; int8 keeps float I/O on request.
    if spec.mode is Mode.INT16X8 or spec.io_type is IOType.FLOAT32:
        for io_op in (TFLOperationName.INPUT, TFLOperationName.OUTPUT):
            quantizer.update_quantization_recipe(
                ".*", io_op, algorithm_key=AlgorithmName.NO_QUANTIZE
            )
    for layer in spec.float_layers:
        _require_layer(spec, layer, layers)
        quantizer.update_quantization_recipe(
            layer_regex(layer, keras3=keras3), every_op, algorithm_key=AlgorithmName.NO_QUANTIZE
        )
    for layer in spec.int16_layers:
        _require_layer(spec, layer, layers)
        quantizer.add_static_config(
            layer_regex(layer, keras3=keras3), every_op, activation_num_bits=16, weight_num_bits=8
        )
    for layer in spec.weight_only_layers:  # int8 weights, float activations and compute
        _require_layer(spec, layer, layers)
        quantizer.add_weight_only_config(layer_regex(layer, keras3=keras3), every_op, num_bits=8)


def layer_scopes(float_tflite: bytes) -> dict[str, list[str]]:
    """Keras layer name -> output tensor names of the ops it produced, in the float model.

    A fused op (conv + batch norm + ReLU6) names every layer it fused, so it belongs to each.
    The names follow the model's scope convention (keras3_scopes).
    """
    from core.engine.flatbuffer import op_outputs

    names = [name for _, name in op_outputs(float_tflite)]
    keras3 = keras3_scopes(names)
    found: dict[str, list[str]] = {}
    for name in names:
        for layer in layers_in_tensor_name(name, keras3=keras3):
            found.setdefault(layer, []).append(name)
    return found


def _scope_components(name: str, *, outer: bool = False) -> list[str]:
    """The components of a tensor name between the model's own scope (first) and the TF op
    (last), for each `;`-joined part: the layer scopes (only the outermost with `outer`)."""
    return [c for part in name.split(";") for c in part.split("/")[1:-1][: 1 if outer else None]]


def keras3_scopes(names: Iterable[str]) -> bool:
    """Whether these op output names follow Keras 3's scopes, `<layer>_<n>` for every layer
    (conv2d -> conv2d_1, conv2d_1 -> conv2d_1_2), one scope per layer.

    Not so for bare names (tf.keras 2 exports, a plain tf.Module's name scopes: conv2d and
    conv2d_1 side by side), where stripping the suffix would report conv2d_1 as conv2d and drop
    conv2d: there the scope names are the layer names as they are.
    """
    layer_of: dict[str, str] = {}
    for name in names:
        # The scope right under the model's is a layer's (deeper ones may be TF's own, such as
        # a batch norm's `batchnorm`).
        for component in _scope_components(name, outer=True):
            match = _KERAS_SCOPE.match(component)
            if match is None:
                return False
            if layer_of.setdefault(match.group(1), component) != component:
                return False  # two scopes would name one layer: not one-to-one
    return True


def layers_in_tensor_name(name: str, *, keras3: bool = True) -> list[str]:
    """The Keras layer names in a TFLite tensor name such as
    `functional_1/re_lu_1_2/Relu6;functional_1/conv2d_1_2/convolution` -> re_lu_1, conv2d_1.

    The first path component is the model's own scope and the last is the TF op, so only the
    components between them name layers: with Keras's `_<n>` scope suffix removed when the
    model's scopes are Keras 3's (keras3_scopes), as they are otherwise.
    """
    layers = []
    # Raw scopes: the outermost names the layer; deeper ones are TF's own (a batch norm's
    # `batchnorm`) or a sub-block's.
    for component in _scope_components(name, outer=not keras3):
        match = _KERAS_SCOPE.match(component) if keras3 else None
        layer = match.group(1) if match else component if not keras3 else None
        if layer is not None and layer not in layers:
            layers.append(layer)
    return layers


def layer_regex(layer: str, *, keras3: bool = True) -> str:
    """The quantizer's scope regex for one layer: the op scope (its output tensor names) holds
    `/<layer>_<n>/` under Keras 3's scopes, `/<layer>/` otherwise (layers_in_tensor_name)."""
    return f"/{re.escape(layer)}_\\d+/" if keras3 else f"/{re.escape(layer)}/"


def _require_layer(spec: VariantSpec, layer: str, layers: dict[str, list[str]]) -> None:
    if layer in layers:
        return
    nearest = difflib.get_close_matches(layer, list(layers), n=5, cutoff=0.3)
    hint = ", ".join(nearest) if nearest else ", ".join(sorted(layers)[:8])
    raise ConversionFailed(
        f"{spec.name}: no op of the converted model comes from a layer named {layer!r} (batch "
        f"norms fold into the conv before them); nearest layer names: {hint}"
    )


def _calibration_inputs(
    float_tflite: bytes, calibration: np.ndarray | None, spec: VariantSpec
) -> dict[str, list[dict[str, np.ndarray]]]:
    """The calibration images as the quantizer wants them: per signature, one dict per image."""
    from ai_edge_litert.interpreter import Interpreter

    if calibration is None:
        raise ConversionFailed(f"{spec.name} needs calibration images; pick a data set")
    signatures = Interpreter(model_content=float_tflite).get_signature_list()
    if len(signatures) != 1:
        raise ConversionFailed(
            f"{spec.name}: the float32 model has {len(signatures)} signatures and the quantizer "
            "calibrates one; export the model with a single serving signature"
        )
    key, io = next(iter(signatures.items()))
    (input_name,) = io["inputs"]
    images = np.ascontiguousarray(calibration, dtype=np.float32)
    return {key: [{input_name: images[i : i + 1]} for i in range(len(images))]}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value or "")


def int8_io_to_uint8(tflite: bytes, *, name: str = "model") -> bytes:
    """Give an int8-I/O model uint8 input and output, with QUANTIZE ops at both ends.

    The uint8 tensors keep the int8 scale with the zero point moved by 128, so the int8 graph
    sees exactly the values it saw before. The model is read and written with ai_edge_litert's
    flatbuffer utilities, which keep the weight buffers the quantizer stores after the
    flatbuffer (TF's modify_model_io_type silently drops them).

    Raises:
        ConversionFailed: the model's input or output is not a per-tensor int8 tensor.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    graph = model.subgraphs[0]
    quantize_op = _opcode_index(model, schema.BuiltinOperator.QUANTIZE, schema)
    (old_input,) = graph.inputs
    (old_output,) = graph.outputs
    new_input = _uint8_twin(graph, int(old_input), name, schema)
    new_output = _uint8_twin(graph, int(old_output), name, schema)
    graph.operators.insert(0, _quantize(quantize_op, new_input, int(old_input), schema))
    graph.operators.append(_quantize(quantize_op, int(old_output), new_output, schema))
    graph.inputs = [new_input]
    graph.outputs = [new_output]
    for signature in model.signatureDefs or []:
        if signature.subgraphIndex != 0:
            continue
        for item in signature.inputs or []:
            if item.tensorIndex == old_input:
                item.tensorIndex = new_input
        for item in signature.outputs or []:
            if item.tensorIndex == old_output:
                item.tensorIndex = new_output
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _opcode_index(model: Any, builtin: int, schema: Any) -> int:
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = builtin
    code.version = 2  # QUANTIZE v2 requantizes between int8 and uint8
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _uint8_twin(graph: Any, index: int, name: str, schema: Any) -> int:
    """Append a uint8 copy of int8 tensor `index`; it takes the public name, the int8 one a
    suffix. Returns the new tensor's index."""
    tensor = graph.tensors[index]
    q = tensor.quantization
    scales = [] if q is None or q.scale is None else list(q.scale)
    zeros = [] if q is None or q.zeroPoint is None else [int(z) for z in q.zeroPoint]
    if tensor.type != schema.TensorType.INT8 or len(scales) != 1 or len(zeros) != 1:
        raise ConversionFailed(
            f"{name}: uint8 I/O needs a per-tensor int8 input and output, and "
            f"{_text(tensor.name)!r} is not one; choose int8 or float32 I/O"
        )
    twin = schema.TensorT()
    twin.shape = list(tensor.shape)
    twin.shapeSignature = None if tensor.shapeSignature is None else list(tensor.shapeSignature)
    twin.type = schema.TensorType.UINT8
    twin.buffer = 0  # the empty buffer: an activation holds no data
    twin.name = _text(tensor.name)
    tensor.name = twin.name + "_int8"
    params = schema.QuantizationParametersT()
    params.scale = scales
    params.zeroPoint = [zeros[0] + _INT8_ZERO_POINT_TO_UINT8]
    twin.quantization = params
    graph.tensors.append(twin)
    return len(graph.tensors) - 1


def _quantize(opcode: int, source: int, target: int, schema: Any) -> Any:
    op = schema.OperatorT()
    op.opcodeIndex = opcode
    op.inputs = [source]
    op.outputs = [target]
    return op
