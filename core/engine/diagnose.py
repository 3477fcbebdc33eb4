"""Per-layer error of a quantized variant: which ops lose the most, on the calibration images and
on the images the variant flipped.

Two sources, one table:
- converter variants (int8 modes): TF's QuantizationDebugger. Its NumericVerify ops feed each
  float op the *quantized* input, so a row measures that op's own error (not what it inherited).
- quantizer variants: the LiteRT Quantizer's tensor comparison statistics (those of its
  `model_validator.compare_model`, computed by `tensor_comparison`), which run the float and the
  quantized model side by side, so a row measures the error that has *accumulated* up to that
  tensor.

Each row names its Keras layer (read from the TFLite tensor's scope names) and keeps the raw
tensor name. The debugger runs on at most MAX_IMAGES images per set, so a diagnosis costs about
one more conversion whatever the data set size. TensorFlow and LiteRT are imported inside
functions only.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.engine.flatbuffer import op_outputs, tensor_shapes
from core.engine.models import ReferenceModel
from core.engine.quantizer import keras3_scopes, layers_in_tensor_name
from core.errors import ConversionFailed
from core.inputs.rundir import LAYERS, write_atomic
from core.reporting import layer_rank
from core.types import Backend, Mode, VariantSpec

# Images each statistic is computed on, per set (calibration, flipped): the debugger costs about
# 5 ms per image on a MobileNetV2-0.35 here, the quantizer's comparison about 20 ms.
MAX_IMAGES = 50
TOP_SUSPECTS = 5
LAYERS_SUFFIX = LAYERS  # `<file_id>.layers.csv` in the run folder
# The TF guide's rule of thumb: rmse/scale above about 0.7 means the op loses more than a
# rounding step would explain.
RMSE_SCALE_SUSPICIOUS = 0.7
OUTPUT_LAYER = "(model output)"  # the softmax row the debugger names after the signature
CONVERTER_MODES = frozenset({Mode.INT8})  # the debugger re-quantizes with int8 activations only
SOURCE_DEBUGGER = "quantization debugger (per op, fed the quantized input)"
SOURCE_QUANTIZER = "LiteRT Quantizer comparison (accumulated from the input)"

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class TensorError:
    """Error statistics of one op's output tensor over one set of images."""

    rmse_per_scale: float | None
    mean_error: float | None
    max_abs_error: float | None
    cosine: float | None


@dataclass(frozen=True)
class LayerRow:
    """One op of the quantized model with its error on the calibration and flipped images."""

    order: int  # position of the op in the graph (depth)
    layer: str  # the Keras layer the op computes (last named in its scope), or OUTPUT_LAYER
    layers: tuple[str, ...]  # every Keras layer fused into the op
    tensor_name: str  # raw TFLite tensor name
    op: str
    shape: tuple[int, ...]
    scale: float | None
    zero_point: int | None
    calibration: TensorError
    flipped: TensorError | None  # None when the variant flipped no image


def can_diagnose(spec: VariantSpec) -> bool:
    """Whether per-layer statistics exist for this variant (a quantized mode the tools read)."""
    if spec.mode is Mode.FLOAT32 or spec.allow_select_tf_ops:
        return False  # nothing quantized; or TF ops this LiteRT cannot run for the debugger
    return spec.backend is Backend.QUANTIZER or spec.mode in CONVERTER_MODES


def diagnose_variant(
    model: ReferenceModel,
    spec: VariantSpec,
    tflite: bytes,
    *,
    float_tflite: bytes,
    route: str,
    calibration: np.ndarray,
    flipped: np.ndarray,
    out_csv: Path,
    progress: ProgressFn,
) -> dict[str, Any]:
    """Per-layer error of one finished quantized variant; writes `out_csv`, returns the summary.

    Args:
        model: the reference model (the converter re-calibrates it for the debugger).
        spec: the variant; `can_diagnose(spec)` must be True.
        tflite: the variant's own model (the quantizer's comparison reads it).
        float_tflite: the float32 TFLite model the quantizer started from.
        route: the conversion route the variant was made by (core.engine.convert).
        calibration: float32 [N,H,W,C] calibration images; the first MAX_IMAGES are used.
        flipped: float32 [M,H,W,C] images the variant disagrees on (M may be 0).
        out_csv: where the table goes (`<variant>.layers.csv`).
        progress: called with (fraction, message).

    Returns:
        The report's `diagnosis`: source, image counts, and the top suspects.
    """
    measured = calibration[:MAX_IMAGES]
    flipped = flipped[:MAX_IMAGES]
    if spec.backend is Backend.QUANTIZER:
        rows = _quantizer_rows(float_tflite, tflite, measured, flipped, progress)
        source = SOURCE_QUANTIZER
    else:
        rows = _converter_rows(model, spec, route, calibration, flipped, progress)
        source = SOURCE_DEBUGGER
    write_atomic(out_csv, layers_csv(rows).encode("utf-8"))
    return {
        "source": source,
        "calibration_images": len(measured),
        "flipped_images": len(flipped),
        "ranked_by": ranking_rule(rows),
        "suspects": [_suspect(row) for row in suspects(rows)],
        "table": out_csv.name,
    }


# -- converter: QuantizationDebugger --------------------------------------------------------


def converter_debugger(
    model: ReferenceModel,
    spec: VariantSpec,
    route: str,
    calibration: np.ndarray,
    debug_images: np.ndarray,
) -> Any:
    """A QuantizationDebugger calibrated exactly as the variant's own conversion is.

    The converter is configured by core.engine.convert for `spec` (same route, same
    calibration images), so the debugger's model is the variant's model; `debug_images` are
    the images its statistics are measured on.
    """
    import tensorflow as tf

    from core.engine.convert import _configure, _converter_for

    converter = _converter_for(model, route)
    _configure(converter, spec, calibration)
    try:
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=_batches_of_one(debug_images)
        )
    except Exception as exc:  # ConverterError, ValueError, RuntimeError from MLIR or LiteRT
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ConversionFailed(
            f"{spec.name}: the quantization debugger could not calibrate the model: {first}"
        ) from None
    if spec.float_layers:
        # A derived variant is measured as it was made: its float layers denylisted.
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=float_nodes(debugger.calibrated_model, spec)
        )
    return debugger


def float_nodes(calibrated_tflite: bytes, spec: VariantSpec) -> list[str]:
    """Output tensor names of the ops computing `spec.float_layers` (what the denylist takes).

    Raises:
        ConversionFailed: a named layer has no op in the model (with the nearest names).
    """
    from core.engine.quantizer import _require_layer, layer_scopes

    scopes = layer_scopes(calibrated_tflite)
    nodes: list[str] = []
    for layer in spec.float_layers:
        _require_layer(spec, layer, scopes)
        nodes.extend(n for n in scopes[layer] if n not in nodes)
    return nodes


def _batches_of_one(images: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    def generate() -> Iterator[list[np.ndarray]]:
        for i in range(len(images)):
            yield [images[i : i + 1]]

    return generate


def _converter_rows(
    model: ReferenceModel,
    spec: VariantSpec,
    route: str,
    calibration: np.ndarray,
    flipped: np.ndarray,
    progress: ProgressFn,
) -> list[LayerRow]:
    progress(0.0, f"{spec.name}: calibrating the quantization debugger")
    measured = calibration[:MAX_IMAGES]
    debugger = converter_debugger(model, spec, route, calibration, measured)
    progress(0.3, f"{spec.name}: per-layer error on {len(measured)} calibration images")
    on_calibration = _debugger_stats(debugger)
    on_flipped: dict[int, dict[str, str]] = {}
    if len(flipped):
        progress(0.6, f"{spec.name}: per-layer error on {len(flipped)} flipped images")
        on_flipped = _debugger_stats(_debugger_on(debugger, flipped))
    # The stats' tensor indices are those of the debugger's instrumented model.
    shapes = tensor_shapes(debugger.quant_model)
    keras3 = keras3_scopes(name for _, name in op_outputs(debugger.calibrated_model))
    rows = []
    for order, (index, stats) in enumerate(sorted(on_calibration.items())):
        name = stats["tensor_name"]
        flip = on_flipped.get(index)
        rows.append(
            LayerRow(
                order=order,
                layer=_main_layer(name, keras3=keras3),
                layers=tuple(layers_in_tensor_name(name, keras3=keras3)),
                tensor_name=name,
                op=stats["op_name"],
                shape=shapes[index],
                scale=float(stats["scale"]),
                zero_point=int(float(stats["zero_point"])),
                calibration=_debugger_error(stats),
                flipped=None if flip is None else _debugger_error(flip),
            )
        )
    return rows


def _debugger_on(debugger: Any, images: np.ndarray) -> Any:
    """A debugger measuring the same instrumented model (`quant_model`: calibrated, with the
    same options) on other images, without calibrating again."""
    import tensorflow as tf

    return tf.lite.experimental.QuantizationDebugger(
        quant_debug_model_content=debugger.quant_model,
        debug_dataset=_batches_of_one(images),
        debug_options=debugger.options,
    )


def _debugger_stats(debugger: Any) -> dict[int, dict[str, str]]:
    """The debugger's layer statistics, by quantized tensor index."""
    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr):  # keep the CLI's stdout for its table
        debugger.run()
    text = io.StringIO()
    debugger.layer_statistics_dump(text)
    return {int(row["tensor_idx"]): row for row in csv.DictReader(io.StringIO(text.getvalue()))}


def _debugger_error(stats: dict[str, str]) -> TensorError:
    scale = float(stats["scale"])
    mse = float(stats["mean_squared_error"])
    return TensorError(
        rmse_per_scale=_finite(math.sqrt(mse) / scale) if scale > 0 and mse >= 0 else None,
        mean_error=_finite(float(stats["mean_error"])),
        max_abs_error=_finite(float(stats["max_abs_error"])),
        cosine=None,  # the debugger's per-op metrics see only the difference, not both tensors
    )


# -- quantizer: the LiteRT Quantizer's tensor comparison -------------------------------------


def _quantizer_rows(
    float_tflite: bytes,
    tflite: bytes,
    calibration: np.ndarray,
    flipped: np.ndarray,
    progress: ProgressFn,
) -> list[LayerRow]:
    ops = _float_ops(float_tflite)
    names = [name for _, name, _ in ops]
    progress(0.0, f"per-tensor comparison on {len(calibration)} calibration images")
    on_calibration = tensor_comparison(float_tflite, tflite, calibration, names)
    on_flipped: dict[str, dict[str, float]] = {}
    if len(flipped):
        progress(0.5, f"per-tensor comparison on {len(flipped)} flipped images")
        on_flipped = tensor_comparison(float_tflite, tflite, flipped, names)
    quantization = _tensor_quantization(tflite)
    keras3 = keras3_scopes(names)
    rows: list[LayerRow] = []
    for op, name, shape in ops:
        if name not in on_calibration:
            continue
        scale, zero_point = quantization.get(name, (None, None))
        flip = on_flipped.get(name)
        rows.append(
            LayerRow(
                order=len(rows),
                layer=_main_layer(name, keras3=keras3),
                layers=tuple(layers_in_tensor_name(name, keras3=keras3)),
                tensor_name=name,
                op=op,
                shape=shape,
                scale=scale,
                zero_point=zero_point,
                calibration=_quantizer_error(on_calibration[name], scale),
                flipped=None if flip is None else _quantizer_error(flip, scale),
            )
        )
    return rows


def tensor_comparison(
    float_tflite: bytes, tflite: bytes, images: np.ndarray, names: list[str]
) -> dict[str, dict[str, float]]:
    """Per named tensor: the mean over `images` of the MSE and the cosine similarity between
    the float model's values and the quantized model's (dequantized), both fed each image.

    These are the LiteRT Quantizer's `model_validator.compare_model` statistics (MSE and
    COSINE_SIMILARITY on float32 values, NaN and inf clipped as there), computed with one
    interpreter per model for all images. compare_model builds two new interpreters for every
    image and compares every tensor, the weights included: 3-4x slower on MobileNetV2. An
    integer input is quantized as the run's evaluation does (half away from zero, where
    compare_model rounds half to even), so the statistics describe the images the run scored.
    Tensors missing from the quantized model, or empty, are left out, as there.

    Raises:
        ConversionFailed: LiteRT cannot run one of the two models on these images.
    """
    from core.engine.intermediates import IntermediateTensors

    try:
        reference = IntermediateTensors(float_tflite)
        target = IntermediateTensors(tflite)
        shared = [n for n in names if n in reference.details and n in target.details]
        sums = {name: [0.0, 0.0] for name in shared}
        for image in images:
            reference.run(image)
            target.run(image)
            for name in shared:
                mse, cosine = _mse_and_cosine(target.values(name), reference.values(name))
                sums[name][0] += mse
                sums[name][1] += cosine
    except (ValueError, RuntimeError) as exc:  # LiteRT cannot run a model on these inputs
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ConversionFailed(f"the per-tensor comparison failed: {first}") from None
    count = max(len(images), 1)
    return {
        name: {"mse": mse / count, "cosine_similarity": cosine / count}
        for name, (mse, cosine) in sums.items()
    }


def _mse_and_cosine(target: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """validation_utils.mean_squared_difference and cosine_similarity of the LiteRT Quantizer,
    in float32, with NaN and inf clipped as its _preprocess_same_size_arrays does."""
    target = np.nan_to_num(target, nan=1e-9, neginf=-1e9, posinf=1e9)
    reference = np.nan_to_num(reference, nan=1e-9, neginf=-1e9, posinf=1e9)
    mse = float(np.square(np.subtract(target, reference)).mean()) if target.size else 0.0
    norm_target = float(np.linalg.norm(target))
    norm_reference = float(np.linalg.norm(reference))
    if norm_target == 0 and norm_reference == 0:
        return mse, 1.0
    if norm_target == 0 or norm_reference == 0:
        return mse, 0.0
    return mse, float(np.dot(target, reference)) / (norm_target * norm_reference)


def _float_ops(tflite: bytes) -> list[tuple[str, str, tuple[int, ...]]]:
    """(op type, output tensor name, shape) of every op, in graph order."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    graph = model.subgraphs[0]
    ops = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        op_type = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        for index in op.outputs:
            tensor = graph.tensors[index]
            ops.append((op_type, _text(tensor.name), tuple(int(d) for d in tensor.shape)))
    return ops


def _tensor_quantization(tflite: bytes) -> dict[str, tuple[float | None, int | None]]:
    """Tensor name -> (scale, zero point) of the per-tensor quantized tensors of a model."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    found: dict[str, tuple[float | None, int | None]] = {}
    for tensor in model.subgraphs[0].tensors:
        q = tensor.quantization
        if q is None or q.scale is None or len(q.scale) != 1:
            continue
        found[_text(tensor.name)] = (float(q.scale[0]), int(q.zeroPoint[0]))
    return found


def _quantizer_error(stats: dict[str, float], scale: float | None) -> TensorError:
    mse = stats.get("mse")
    rmse_scale = None
    if mse is not None and scale and scale > 0:
        rmse_scale = _finite(math.sqrt(max(mse, 0.0)) / scale)
    cosine = stats.get("cosine_similarity")
    return TensorError(
        rmse_per_scale=rmse_scale,
        mean_error=None,
        max_abs_error=None,
        cosine=None if cosine is None else _finite(cosine),
    )


# -- naming, ranking, the table ---------------------------------------------------------------


def _main_layer(tensor_name: str, *, keras3: bool) -> str:
    """The layer an op computes: TF lists a fused op's scopes activation first, the layer that
    owns the op (conv, dense) last. The model's output tensor carries no layer scope."""
    layers = layers_in_tensor_name(tensor_name, keras3=keras3)
    return layers[-1] if layers else OUTPUT_LAYER


def ranking_rule(rows: list[LayerRow]) -> str:
    """rmse/scale when the variant quantizes activations; otherwise 1 − cosine similarity
    (core.reporting.layer_rank.ranking_rule, on the table these rows make)."""
    return layer_rank.ranking_rule(table_rows(rows))


def suspects(rows: list[LayerRow], *, count: int = TOP_SUSPECTS) -> list[LayerRow]:
    """The `count` best-ranked rows (core.reporting.layer_rank: the largest error on the flipped
    images, the calibration images' when the variant flipped none) with an error above zero."""
    table = table_rows(rows)
    by = layer_rank.ranking_rule(table)
    ranks = layer_rank.op_ranks(table, ranked_by=by)
    by_order = {str(row.order): row for row in rows}
    found = [
        by_order[str(r["order"])]
        for r in layer_rank.ranked_rows(table, ranks)
        if str(r["order"]) in ranks and (layer_rank.statistic(r, ranked_by=by) or 0.0) > 0
    ]
    return found[:count]


def statistic_ranks(table: Path) -> dict[str, int]:
    """Keras layer -> its rank by the statistics in a `<variant>.layers.csv` (the rank of its
    best-ranked op, as the Layers page shows it), most suspect first; the model output row is
    no layer. The sensitivity scan records it as each candidate's `stat_rank`."""
    with table.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by = layer_rank.ranking_rule(rows)
    return layer_rank.layer_ranks(rows, layer_rank.table_ranks(rows, ranked_by=by))


def _suspect(row: LayerRow) -> dict[str, Any]:
    return {
        "layer": row.layer,
        "op": row.op,
        "order": row.order,
        "tensor_name": row.tensor_name,
        "calibration": asdict(row.calibration),
        "flipped": None if row.flipped is None else asdict(row.flipped),
    }


LAYER_COLUMNS = (
    "order",
    "layer",
    "layers",
    "op",
    "shape",
    "scale",
    "zero_point",
    "rmse_per_scale",
    "mean_error",
    "max_abs_error",
    "cosine",
    "flipped_rmse_per_scale",
    "flipped_mean_error",
    "flipped_max_abs_error",
    "flipped_cosine",
    "tensor_name",
    layer_rank.STAT_RANK,  # last: core.reporting.layer_rank's rank of the op, "" when unranked
)


def table_rows(rows: list[LayerRow]) -> list[dict[str, str]]:
    """The rows as `<variant>.layers.csv` holds them (text cells, "" where a value is missing),
    without the rank."""
    empty = TensorError(None, None, None, None)
    table = []
    for row in rows:
        flip = row.flipped or empty
        cells = [
            str(row.order),
            row.layer,
            "+".join(row.layers),
            row.op,
            "x".join(str(d) for d in row.shape),
            _cell(row.scale),
            "" if row.zero_point is None else str(row.zero_point),
            *(_cell(v) for v in astuple_error(row.calibration)),
            *(_cell(v) for v in astuple_error(flip)),
            row.tensor_name,
        ]
        table.append(dict(zip(LAYER_COLUMNS, cells, strict=False)))
    return table


def layers_csv(rows: list[LayerRow]) -> str:
    """The `<variant>.layers.csv` text: one row per op, empty cells where a value is missing,
    and each op's rank by the statistics (core.reporting.layer_rank; empty when unranked)."""
    table = table_rows(rows)
    ranks = layer_rank.op_ranks(table, ranked_by=layer_rank.ranking_rule(table))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LAYER_COLUMNS)
    for row in table:
        writer.writerow([*row.values(), ranks.get(row["order"], "")])
    return out.getvalue()


def astuple_error(error: TensorError) -> tuple[float | None, ...]:
    return (error.rmse_per_scale, error.mean_error, error.max_abs_error, error.cosine)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.9g}"


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value or "")
