"""The fix ladder's last rung: layers kept in float, and the measured search for which ones.

On the converter backend an int8 model keeps named Keras layers in float through the
QuantizationDebugger's denylist (`int8:keep=conv2d+dense`), reached through
`core.engine.backends.tflite_from_reference`; the quantizer backend does it with its own recipe
(core.engine.quantizer). `sensitivity_scan` and `greedy_fix` are the keep-float rung of
`--auto-fix` on either (core.engine.stages.auto_fix).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from core.engine.models import ReferenceModel
from core.errors import QuantLensError
from core.types import Backend, IOType, VariantSpec


def tflite_keeping_float(
    model: ReferenceModel, spec: VariantSpec, calibration: np.ndarray, route: str
) -> bytes:
    """The int8 model of `spec` with the ops of `spec.float_layers` left in float.

    The model is calibrated as the plain int8 conversion is (same converter settings and
    images), then re-quantized with those ops' output tensors denylisted. I/O follows the
    variant: int8 I/O is quantized fully, float32 I/O is left float, uint8 I/O is the int8
    model with uint8 ends (as on the quantizer backend).

    Raises:
        ConversionFailed: a named layer has no op in the model, or the converter refused it.
    """
    maker = ConverterKeepFloat(model, replace(spec, float_layers=()), calibration, route)
    return maker(spec.float_layers)


class ConverterKeepFloat:
    """Calibrate a converter int8 variant once, then re-quantize it with any layers kept float
    (about 0.1 s each: what makes a sensitivity scan affordable)."""

    def __init__(
        self, model: ReferenceModel, spec: VariantSpec, calibration: np.ndarray, route: str
    ) -> None:
        from core.engine.diagnose import converter_debugger

        self.spec = spec
        with contextlib.redirect_stdout(sys.stderr):
            self.debugger = converter_debugger(model, spec, route, calibration, calibration[:1])

    def __call__(self, layers: tuple[str, ...]) -> bytes:
        import tensorflow as tf

        from core.engine.diagnose import float_nodes
        from core.engine.quantizer import int8_io_to_uint8

        spec = replace(self.spec, float_layers=layers)
        self.debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=float_nodes(self.debugger.calibrated_model, spec),
            fully_quantize=spec.io_type is not IOType.FLOAT32,
        )
        with contextlib.redirect_stdout(sys.stderr):
            data = bytes(self.debugger.get_nondebug_quantized_model())
        if spec.io_type is IOType.UINT8:
            data = int8_io_to_uint8(data, name=spec.name)
        return data


def keep_float_maker(
    model: ReferenceModel,
    spec: VariantSpec,
    *,
    calibration: np.ndarray,
    route: str,
    float_tflite: bytes,
) -> Callable[[tuple[str, ...]], bytes]:
    """layers -> the `.tflite` of `spec` with those layers kept float, on the variant's backend."""
    if spec.backend is Backend.CONVERTER:
        return ConverterKeepFloat(model, spec, calibration, route)

    def quantize(layers: tuple[str, ...]) -> bytes:
        from core.engine.quantizer import quantize_float_tflite

        return quantize_float_tflite(float_tflite, replace(spec, float_layers=layers), calibration)

    return quantize


# -- measured sensitivity and auto-fix ---------------------------------------------------------

SCAN_CANDIDATES = 20  # layers the statistics propose for the scan
SCAN_IMAGES = 300  # evaluation images each candidate is measured on (the notes: ~300 suffice)


@dataclass(frozen=True)
class Measurement:
    """A model measured against the original on a set of images."""

    agreement_pct: float
    mean_kl: float
    size_bytes: int
    n: int  # images measured


Evaluate = Callable[[bytes], Measurement]


def sensitivity_scan(
    make: Callable[[tuple[str, ...]], bytes],
    evaluate: Evaluate,
    candidates: list[str],
    *,
    progress: Callable[[float, str], None],
    stat_ranks: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Keep one candidate layer float at a time and measure the model; the best first.

    The caller bounds the work by the candidates it passes (one evaluation each; the fix
    search's budget counts evaluations, never seconds, so a slower machine measures the same).
    Ranked by measured mean KL (lower is better), then agreement: a continuous measure, since a
    few flipped images out of a few hundred are within noise. Each entry keeps the candidate's
    rank by the statistics (`stat_rank`: from `stat_ranks`, the rank the Layers page shows,
    core.engine.diagnose.statistic_ranks; its place among the candidates without it), so both
    rankings can be shown.

    Raises:
        ConversionFailed: a candidate cannot be made (it is skipped with the others kept,
            unless none can be made).
    """
    measured: list[dict[str, Any]] = []
    for rank, layer in enumerate(candidates):
        progress(rank / max(len(candidates), 1), f"sensitivity: {layer} kept in float")
        try:
            result = evaluate(make((layer,)))
        except QuantLensError:  # that layer cannot be kept float, or LiteRT refuses the result
            continue
        stat_rank = rank + 1 if stat_ranks is None else stat_ranks[layer]
        measured.append({"layer": layer, "stat_rank": stat_rank, **asdict(result)})
    return sorted(measured, key=lambda m: (m["mean_kl"], -m["agreement_pct"]))


def greedy_fix(
    make: Callable[[tuple[str, ...]], bytes],
    evaluate: Evaluate,
    ranked: list[str],
    *,
    parent: Measurement,
    max_layers: int,
    meets: Callable[[Measurement], bool],
    progress: Callable[[float, str], None],
) -> list[dict[str, Any]]:
    """Walk the ranked layers in order, keeping each in float unless that makes the model worse
    than the best so far (the parent at first); stop when the kept set meets the bar, holds
    `max_layers` layers, or the ranked layers run out.

    "Worse" is lower agreement, or the same agreement with a higher mean KL. Taking the first K
    ranked layers blindly ended below its own first step on the MobileNetV2 demo (98.57 % with
    one layer, 98.09 % with five). A layer that changes nothing measurable is kept, because
    some damage needs two layers in float at once (an outlier channel and the op that reads it:
    tests/core/test_autofix.py's model), where either alone changes nothing.

    Returns every step tried, in order: its layers, agreement, mean KL, size, whether it met the
    bar and whether it was `kept`; core.engine.fixes.search.choose picks among the kept ones
    and the ladder's other rungs.
    """
    steps: list[dict[str, Any]] = []
    kept: tuple[str, ...] = ()
    best = parent
    for tried, layer in enumerate(ranked):
        if len(kept) >= max_layers:
            break
        layers = tuple(sorted((*kept, layer)))
        progress(tried / len(ranked), f"auto-fix: {layer} added, {len(layers)} layer(s) in float")
        result = evaluate(make(layers))
        keep = not _worse(result, best)
        met = keep and meets(result)
        steps.append(
            {"layers": list(layers), **asdict(result), "meets_threshold": met, "kept": keep}
        )
        if keep:
            kept, best = layers, result
        if met:
            break
    return steps


def _worse(candidate: Measurement, best: Measurement) -> bool:
    if candidate.agreement_pct != best.agreement_pct:
        return candidate.agreement_pct < best.agreement_pct
    return candidate.mean_kl > best.mean_kl
