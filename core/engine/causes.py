"""Why a quantized variant loses accuracy: cheap signals per tensor and per op, and the cause
they name, in words, with the evidence and the fixes that apply.

Signals (all from the float32 `.tflite` run with every tensor kept, and the quantized model's
flatbuffer; the quantized model is never run):
- activation range ratio across channels on the calibration images: max / median of the
  per-channel max |a| (one channel that dwarfs the others sets the per-tensor int8 scale);
- the levels the typical channel uses: its 0.1-99.9 percentile span / the tensor's scale;
- activation clipping rate on the evaluated images: the share of the float values that fall
  outside the quantized tensor's representable range (scale, zero point);
- weight range ratio across output channels, weight kurtosis, and, per quantization group of
  the variant (an output channel when per channel, the tensor when per tensor), how far its
  largest |w| is above its typical |w|;
- passed in by the caller: the original's accuracy under the chosen preset and the best
  preset's, and the agreement per runtime.

The float model's tensors are matched to the quantized model's by name (the converter and the
LiteRT Quantizer keep the float model's tensor names). TensorFlow is never imported; LiteRT
inside functions only.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from core.errors import ConversionFailed
from core.fix_variants import FIX_ORDER, FixKind

CauseKind = Literal[
    "outlier_channel",
    "weight_outliers",
    "clipping",
    "range_collapse",
    "preprocessing",
    "runtime_only",
    "diffuse",
    "biased_error",  # core.engine.biased_error: measured by running the quantized model
]

# Images per set the signals are measured on (evenly spaced through each set): the same bound
# as the per-layer diagnosis, so the signals describe the images the diagnosis measured.
MAX_IMAGES = 50
# Values per tensor kept for the per-channel percentiles (sampled by spatial position): enough
# for a steady 99.9th percentile on a narrow tensor, bounded memory on a wide one.
SAMPLES_PER_TENSOR = 20_000
# A channel's range statistics need a few channels to have a "typical" one.
MIN_CHANNELS = 4

# -- thresholds ---------------------------------------------------------------------------------
# Outlier channel: with one channel at R x the median channel's range, the per-tensor scale
# leaves the typical channel about 255 / R levels. At R = 16 that is 16 levels (4 bits), where
# rounding noise starts to rival the signal. Ordinary layers of a trained MobileNetV2 stay
# below this (see bench/causes.py, which prints the largest ratio it met). Scaled by the grid:
# 16-bit activations leave 256 x more levels, so only a 256 x larger ratio costs as much.
ACTIVATION_RANGE_RATIO = 16.0
# Range collapse: the typical channel spans fewer than 4 grid steps (2 bits) although no single
# channel stands out: the range is set by rare extreme values, and most values round to the
# same few levels.
COLLAPSE_LEVELS = 4.0
# Clipping: calibration sets the range to the calibration images' min and max, so on those
# images nothing clips; on images of the same distribution the values beyond that range are a
# vanishing share. A thousandth of a tensor's values cut off means the calibration images do
# not cover the evaluated ones.
CLIP_RATE = 1e-3
# ... and by more than a fifth of the range: a new image's extremes overshoot 50 calibration
# images' extremes by a little (a tiny logits tensor does so at a rate above CLIP_RATE), and
# saturating a value a few percent early costs about a rounding step.
CLIP_OVER = 1.2
# ... and on a tenth of the evaluated images: an image of the calibration images' own
# distribution goes beyond the range of N of them with chance about 1 / (N + 1), 2 % for 50.
CLIP_IMAGES = 0.1
# Ops whose output range is fixed by the op (softmax in [0, 1)), not by calibration.
FIXED_RANGE = frozenset({"SOFTMAX", "LOG_SOFTMAX", "LOGISTIC", "TANH"})
# Weight outliers: in a quantization group whose largest |w| is 32 x its median |w|, the
# typical weight keeps fewer than 4 of the 127 steps (Gaussian weights give 4-6 x, Laplacian
# about 11 x). Groups of fewer than 32 weights (a 3x3 depthwise channel has 9) are too small
# for a typical value: they are not judged.
WEIGHT_SPREAD = 32.0
MIN_GROUP = 32
# Preprocessing: the original model itself scores this many points better under another preset
# on the same labelled images: more than sampling noise on a few hundred images.
PRESET_GAP_POINTS = 5.0
# Runtime only: the same `.tflite` agrees this many points less under one runtime than under
# another (XNNPACK vs built-in kernels flipped 2 % of a MobileNetV2's images, see the notes).
RUNTIME_GAP_POINTS = 1.0
# Biased error (core.engine.biased_error): a channel is shifted when its mean int8 error is at
# least half its spread (standard deviation) and at least half of the output's step; a layer is
# named when at least a quarter of its live channels are. Below half a step a channel's shift
# rarely outweighs its own rounding (at most half a step). On the MobileNetV2 demo (int8, 50
# calibration images) 5 of its 53 weighted ops meet this, all in its first two blocks, and
# correcting those 5 leaves none; a test model built to round every weight one way meets it
# with every channel at about 3x its spread.
BIAS_SPREAD_RATIO = 0.5
BIAS_MIN_STEPS = 0.5
BIASED_SHARE = 0.25
THRESHOLDS = {
    "activation_range_ratio": ACTIVATION_RANGE_RATIO,
    "collapse_levels": COLLAPSE_LEVELS,
    "clip_rate": CLIP_RATE,
    "clip_over": CLIP_OVER,
    "clip_images": CLIP_IMAGES,
    "weight_spread": WEIGHT_SPREAD,
    "min_group": MIN_GROUP,
    "preset_gap_points": PRESET_GAP_POINTS,
    "runtime_gap_points": RUNTIME_GAP_POINTS,
    "bias_spread_ratio": BIAS_SPREAD_RATIO,
    "bias_min_steps": BIAS_MIN_STEPS,
    "biased_share": BIASED_SHARE,
}

# Ops a channel passes through unchanged in meaning (per channel, positively homogeneous or a
# re-layout): an outlier channel's consumer is found across them, and they belong to the chain
# a 16-bit-activation fix must cover.
PASS_THROUGH = frozenset(
    {"MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "PAD", "PADV2", "RELU", "RELU6", "RESHAPE"}
)
# Cross-layer equalization is exact through these (ReLU, identity, max/average pooling,
# zero padding, a per-channel mean): scaling a channel by s > 0 before them scales it after.
EQUALIZE_THROUGH = frozenset({"MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "PAD", "RELU"})
WEIGHTED = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"})
_ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH"}
# Fused activations equalization can pass: ReLU exactly, ReLU6 when the clip is not reached or
# after replacing it by ReLU (the ladder measures which).
_EQUALIZE_ACTIVATIONS = frozenset({"NONE", "RELU", "RELU6"})
_GRID = {9: (-128, 127), 3: (0, 255), 7: (-32768, 32767)}  # TensorType INT8, UINT8, INT16
INPUT_LAYER = "(model input)"
RUNTIME_LAYER = "(runtime)"


# -- inputs the caller passes --------------------------------------------------------------------


@dataclass(frozen=True)
class PresetCheck:
    """The original model's accuracy under the run's preset and under the best preset tried."""

    preset: str
    accuracy_pct: float
    best_preset: str
    best_accuracy_pct: float


# -- signals -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationSignals:
    """One per-tensor quantized activation of the variant, measured in the float model."""

    tensor: str  # the quantized model's tensor name
    layer: str  # the Keras layer whose op writes it (INPUT_LAYER for the quantized input)
    op: str
    chain: tuple[str, ...]  # its layer, pass-through layers, the layers that read it
    equalizable: bool  # producer and consumer can be equalized (conv-like, exact path)
    channels: int
    range_ratio: float | None  # max / median of per-channel max |a|; None under MIN_CHANNELS
    outlier_channels: tuple[int, ...]  # channels at or above ACTIVATION_RANGE_RATIO x median
    used_levels: float | None  # the typical channel's 0.1-99.9 percentile span / scale
    grid_levels: int  # 256 for int8, 65536 for int16
    scale: float
    zero_point: int
    calibration_images: int
    clip_rate: float | None  # share of values outside the representable range (evaluated)
    calibration_clip_rate: float  # the same on the calibration images
    max_over_range: float | None  # largest evaluated |a| / the representable edge on its side
    clipped_images: float  # share of the evaluated images with a value outside the range
    evaluated_images: int
    input_clip_rate: float | None  # the largest clip rate among its op's activation inputs
    # Per-channel max |a| on the calibration images, in the activation's float units: the
    # evidence a reader plots (one bar per channel) and re-derives range_ratio from.
    channel_max_abs: tuple[float, ...] = ()


@dataclass(frozen=True)
class WeightSignals:
    """The kernel of one weighted op, in float, grouped as the variant quantizes it."""

    tensor: str  # the op's output tensor name
    layer: str
    op: str
    weights: int
    output_channels: int
    range_ratio: float | None  # max / median of per-output-channel max |w|
    kurtosis: float | None  # excess kurtosis of the whole tensor (0 for a Gaussian)
    per_channel: bool  # the variant quantizes it per output channel
    worst_group: int | None  # the output channel with the largest spread (None: per tensor)
    group_size: int
    group_spread: float | None  # largest |w| / median |w| in the worst group
    group_kurtosis: float | None


# -- causes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cause:
    """One named cause: where, what, the numbers behind it, one sentence, and the fixes."""

    layer: str
    layers: tuple[str, ...]  # the layers the cause and its fixes involve, in graph order
    cause: CauseKind
    evidence: Mapping[str, Any] = field(hash=False)
    words: str
    fixes: tuple[FixKind, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "layers": list(self.layers),
            "cause": self.cause,
            "evidence": dict(self.evidence),
            "fixes": list(self.fixes),
            "words": self.words,
        }


@dataclass(frozen=True)
class VariantCauses:
    """The causes of one variant and the signals they were named from."""

    causes: tuple[Cause, ...]
    activations: tuple[ActivationSignals, ...]
    weights: tuple[WeightSignals, ...]
    calibration_images: int
    evaluated_images: int

    def to_dict(self) -> dict[str, Any]:
        """`causes` for report.json's `diagnosis` of the variant, and what they were measured on."""
        return {
            "causes": [c.to_dict() for c in self.causes],
            "causes_measured_on": {
                "calibration_images": self.calibration_images,
                "evaluated_images": self.evaluated_images,
                "thresholds": THRESHOLDS,  # so a reader can re-apply the rules to the evidence
            },
        }


def find_causes(
    float_tflite: bytes,
    tflite: bytes,
    *,
    calibration: np.ndarray,
    evaluated: np.ndarray,
    suspects: Collection[str] | None = None,
    preset: PresetCheck | None = None,
    runtimes: Mapping[str, float] | None = None,
) -> VariantCauses:
    """Measure the signals of one quantized variant and name its causes.

    Args:
        float_tflite: the float32 `.tflite` the variant was quantized from (or converted beside).
        tflite: the quantized variant's `.tflite`.
        calibration: preprocessed float32 [N,H,W,C] calibration images (at most MAX_IMAGES of
            them, evenly spaced, are run).
        evaluated: preprocessed float32 [M,H,W,C] images the variant was evaluated on (the same
            bound).
        suspects: layer names (or tensor names) the per-layer diagnosis flagged; when given,
            only causes involving them (and the data-level ones: clipping, preprocessing,
            runtime) are kept, and `diffuse` is named when none is found.
        preset: the original's accuracy under the run's preset and the best preset's.
        runtimes: top-1 agreement (%) per runtime, when the runtime matrix measured it.

    Raises:
        ConversionFailed: LiteRT cannot read either model or run the float one on these images.
    """
    calibration = evenly_spaced(calibration, MAX_IMAGES)
    evaluated = evenly_spaced(evaluated, MAX_IMAGES)
    try:
        activations, weights = measure_signals(float_tflite, tflite, calibration, evaluated)
    except (ValueError, RuntimeError, IndexError) as exc:  # from LiteRT or the flatbuffer
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ConversionFailed(
            f"the root-cause signals could not be measured: {first}; check that the images "
            "are preprocessed to the model's input shape"
        ) from None
    causes = name_causes(activations, weights, suspects=suspects, preset=preset, runtimes=runtimes)
    return VariantCauses(
        causes=tuple(causes),
        activations=tuple(activations),
        weights=tuple(weights),
        calibration_images=len(calibration),
        evaluated_images=len(evaluated),
    )


# -- naming (pure) -------------------------------------------------------------------------------


def name_causes(
    activations: Sequence[ActivationSignals],
    weights: Sequence[WeightSignals],
    *,
    suspects: Collection[str] | None = None,
    preset: PresetCheck | None = None,
    runtimes: Mapping[str, float] | None = None,
) -> list[Cause]:
    """The causes the signals name, data-level ones first, then in graph order."""
    local: list[Cause] = []
    for signals in activations:
        found = outlier_channel_cause(signals) or range_collapse_cause(signals)
        if found is not None:
            local.append(found)
    local.extend(c for c in map(weight_outliers_cause, weights) if c is not None)
    data = [c for c in map(clipping_cause, activations) if c is not None]
    data.extend(c for c in (preprocessing_cause(preset), runtime_only_cause(runtimes)) if c)
    if suspects is None:
        return data + local
    wanted = set(suspects)
    kept = data + [c for c in local if wanted & set(c.layers) or c.evidence.get("tensor") in wanted]
    if not kept and wanted:
        kept.append(diffuse_cause(list(suspects)))
    return kept


def outlier_channel_cause(s: ActivationSignals) -> Cause | None:
    """A few channels whose calibration range dwarfs the rest: they set the per-tensor scale,
    and the other channels round onto a sliver of the grid."""
    if s.range_ratio is None or s.range_ratio < ACTIVATION_RANGE_RATIO * s.grid_levels / 256:
        return None
    if s.op in PASS_THROUGH:  # inherited from the op before, whose chain already covers it
        return None
    outliers = len(s.outlier_channels) or 1
    others = s.channels - outliers
    grid = _grid_fraction(s)
    who = "one channel spans" if outliers == 1 else f"{outliers} channels span"
    words = f"{' → '.join(s.chain)}: {who} {s.range_ratio:.0f}× the range of the others"
    if grid is not None:
        words += (
            f"; {_bits(s)} keeps about {_pct(grid)} % of the grid for the other {others} channels"
        )
    fixes: list[FixKind] = ["int16_activations", "weight_only", "keep_float"]
    if s.equalizable:
        fixes.insert(0, "equalize")
    return Cause(
        layer=s.layer,
        layers=s.chain,
        cause="outlier_channel",
        evidence={
            "tensor": s.tensor,
            "channels": s.channels,
            "range_ratio": s.range_ratio,
            "outlier_channels": list(s.outlier_channels),
            "typical_channel_levels": s.used_levels,
            "grid_fraction": grid,
            "scale": s.scale,
            "zero_point": s.zero_point,
            "equalizable": s.equalizable,
            "calibration_images": s.calibration_images,
            "channel_max_abs": list(s.channel_max_abs),
        },
        words=words,
        fixes=in_fix_order(fixes),
    )


def range_collapse_cause(s: ActivationSignals) -> Cause | None:
    """The typical channel uses only a few grid levels although no channel stands out."""
    if s.used_levels is None or s.used_levels >= COLLAPSE_LEVELS or s.op in PASS_THROUGH:
        return None
    return Cause(
        layer=s.layer,
        layers=s.chain,
        cause="range_collapse",
        evidence={
            "tensor": s.tensor,
            "typical_channel_levels": s.used_levels,
            "grid_levels": s.grid_levels,
            "range_ratio": s.range_ratio,
            "scale": s.scale,
            "zero_point": s.zero_point,
            "calibration_images": s.calibration_images,
        },
        words=(
            f"{s.layer}: the typical channel uses about {s.used_levels:.2g} of the "
            f"{s.grid_levels} {_bits(s)} levels; rare extreme values set the range and the "
            "rest round to the same few levels"
        ),
        fixes=in_fix_order(["int16_activations", "weight_only", "keep_float"]),
    )


def clipping_cause(s: ActivationSignals) -> Cause | None:
    """Values on the evaluated images beyond the calibrated range, where the op's inputs do not
    already clip (clipping propagates: the cause is named where it starts)."""
    if s.clip_rate is None or s.clip_rate < CLIP_RATE or s.op in FIXED_RANGE:
        return None
    if s.max_over_range is None or s.max_over_range < CLIP_OVER:
        return None
    if s.clipped_images < CLIP_IMAGES:
        return None
    if s.input_clip_rate is not None and s.input_clip_rate >= CLIP_RATE:
        return None
    over = f" (up to {s.max_over_range:.1f}× the edge)"  # None was refused above
    return Cause(
        layer=s.layer,
        layers=(s.layer,),
        cause="clipping",
        evidence={
            "tensor": s.tensor,
            "clip_rate": s.clip_rate,
            "calibration_clip_rate": s.calibration_clip_rate,
            "max_over_range": s.max_over_range,
            "clipped_images": s.clipped_images,
            "scale": s.scale,
            "zero_point": s.zero_point,
            "evaluated_images": s.evaluated_images,
            "calibration_images": s.calibration_images,
        },
        words=(
            f"{s.layer}: {_pct(s.clip_rate)} % of its values on the evaluated images fall "
            f"outside the {_bits(s)} range calibrated for it{over}; the calibration images do "
            "not cover the evaluated ones"
        ),
        fixes=in_fix_order(["weight_only", "keep_float"]),
    )


def weight_outliers_cause(w: WeightSignals) -> Cause | None:
    """A few weights dwarf the rest of their quantization group: the rest round to a few steps."""
    if w.group_spread is None or w.group_spread < WEIGHT_SPREAD:
        return None
    where = f"output channel {w.worst_group}" if w.per_channel else "the kernel"
    kurtosis = "" if w.group_kurtosis is None else f" (kurtosis {w.group_kurtosis:.0f})"
    return Cause(
        layer=w.layer,
        layers=(w.layer,),
        cause="weight_outliers",
        evidence={
            "tensor": w.tensor,
            "group_spread": w.group_spread,
            "group_kurtosis": w.group_kurtosis,
            "group_size": w.group_size,
            "worst_output_channel": w.worst_group,
            "per_channel": w.per_channel,
            "weight_range_ratio": w.range_ratio,
            "kurtosis": w.kurtosis,
        },
        words=(
            f"{w.layer}: the largest weight of {where} is {w.group_spread:.0f}× its typical "
            f"weight{kurtosis}; int8 keeps about {127 / w.group_spread:.1f} of 127 steps for "
            "the typical weight"
        ),
        fixes=in_fix_order(["keep_float"]),
    )


def preprocessing_cause(preset: PresetCheck | None) -> Cause | None:
    """The original itself does much better under another preset: the inputs are off."""
    if preset is None or preset.best_preset == preset.preset:
        return None
    gap = preset.best_accuracy_pct - preset.accuracy_pct
    if gap < PRESET_GAP_POINTS:
        return None
    return Cause(
        layer=INPUT_LAYER,
        layers=(INPUT_LAYER,),
        cause="preprocessing",
        evidence={
            "preset": preset.preset,
            "accuracy_pct": preset.accuracy_pct,
            "best_preset": preset.best_preset,
            "best_accuracy_pct": preset.best_accuracy_pct,
            "gap_points": gap,
        },
        words=(
            f"{INPUT_LAYER}: the original scores {preset.accuracy_pct:.1f} % with preset "
            f"{preset.preset!r} but {preset.best_accuracy_pct:.1f} % with "
            f"{preset.best_preset!r}; the images are likely preprocessed differently from "
            "training"
        ),
        fixes=(),
    )


def runtime_only_cause(runtimes: Mapping[str, float] | None) -> Cause | None:
    """The same model agrees less under one runtime: its kernels, not the quantization."""
    if not runtimes or len(runtimes) < 2:
        return None
    worst = min(runtimes, key=lambda r: runtimes[r])
    best = max(runtimes, key=lambda r: runtimes[r])
    gap = runtimes[best] - runtimes[worst]
    if gap < RUNTIME_GAP_POINTS:
        return None
    return Cause(
        layer=RUNTIME_LAYER,
        layers=(RUNTIME_LAYER,),
        cause="runtime_only",
        evidence={"agreement_pct": dict(runtimes), "worst": worst, "best": best, "gap": gap},
        words=(
            f"{RUNTIME_LAYER}: agreement is {runtimes[worst]:.1f} % under {worst} but "
            f"{runtimes[best]:.1f} % under {best}; the error comes from one runtime's kernels"
        ),
        fixes=(),
    )


def diffuse_cause(suspects: list[str]) -> Cause:
    """The flagged layers show none of the signals: the loss is spread over many layers."""
    return Cause(
        layer=suspects[0],
        layers=tuple(suspects),
        cause="diffuse",
        evidence={"suspects": suspects},
        words=(
            f"{', '.join(suspects[:3])}{' …' if len(suspects) > 3 else ''}: no outlier "
            "channel, weight outlier, clipping or collapsed range; the error is spread "
            "across layers"
        ),
        fixes=in_fix_order(["int16_activations", "keep_float"]),
    )


def in_fix_order(fixes: Collection[FixKind]) -> tuple[FixKind, ...]:
    return tuple(f for f in FIX_ORDER if f in fixes)


def _grid_fraction(s: ActivationSignals) -> float | None:
    return None if s.used_levels is None else s.used_levels / s.grid_levels


def _bits(s: ActivationSignals) -> str:
    return "int16" if s.grid_levels > 256 else "int8"


def _pct(fraction: float) -> str:
    """A share as a percentage with two significant digits (0.25, 3.2, 41)."""
    value = 100.0 * fraction
    return f"{value:.2g}" if value < 10 else f"{value:.0f}"


# -- measuring -----------------------------------------------------------------------------------


def measure_signals(
    float_tflite: bytes, tflite: bytes, calibration: np.ndarray, evaluated: np.ndarray
) -> tuple[list[ActivationSignals], list[WeightSignals]]:
    """The signals of every per-tensor quantized activation and every weighted op (graph order).

    Runs the float model once per image with every tensor kept and XNNPACK off (it may leave
    the tensors inside its fused nodes unwritten); reads only the flatbuffer of `tflite`.
    """
    quantized = TFLiteGraph(tflite)
    floated = TFLiteGraph(float_tflite)
    activations = _activation_signals(float_tflite, quantized, calibration, evaluated)
    return activations, _weight_signals(quantized, floated)


class TFLiteGraph:
    """The ops and tensors of a `.tflite` (subgraph 0), read in place from its flatbuffer.

    The generated accessors read only what is asked for: unpacking a whole MobileNetV2 into
    objects (flatbuffer_utils) took 0.2 s per model, most of the time budget.
    """

    def __init__(self, tflite: bytes) -> None:
        from ai_edge_litert import schema_py_generated as schema

        self._schema = schema
        kinds = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self.model = schema.Model.GetRootAs(tflite, 0)
        graph = self.model.Subgraphs(0)
        self._tensors = [graph.Tensors(i) for i in range(graph.TensorsLength())]
        self.names = [_text(t.Name()) for t in self._tensors]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.inputs = [int(i) for i in _ints(graph.InputsAsNumpy())]
        self._ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
        self.op_inputs = [_ints(op.InputsAsNumpy()) for op in self._ops]
        self.op_outputs = [_ints(op.OutputsAsNumpy()) for op in self._ops]
        codes = [self.model.OperatorCodes(i) for i in range(self.model.OperatorCodesLength())]
        self.kinds = [
            kinds.get(
                max(
                    codes[op.OpcodeIndex()].BuiltinCode(),
                    codes[op.OpcodeIndex()].DeprecatedBuiltinCode(),
                ),
                "CUSTOM",
            )
            for op in self._ops
        ]
        self.producer = {o: n for n, outs in enumerate(self.op_outputs) for o in outs}
        self._keras3: bool | None = None
        self.consumers: dict[int, list[int]] = {}
        for n, ins in enumerate(self.op_inputs):
            for i in ins:
                self.consumers.setdefault(i, []).append(n)

    def activation(self, op: int) -> str:
        """The op's fused activation (NONE when it has no such option)."""
        options = {
            "CONV_2D": self._schema.Conv2DOptions,
            "DEPTHWISE_CONV_2D": self._schema.DepthwiseConv2DOptions,
            "FULLY_CONNECTED": self._schema.FullyConnectedOptions,
        }.get(self.kinds[op])
        table = self._ops[op].BuiltinOptions()
        if options is None or table is None:
            return "NONE"
        parsed = options()
        parsed.Init(table.Bytes, table.Pos)
        code = int(parsed.FusedActivationFunction())
        return _ACTIVATIONS.get(code, str(code))

    def layer(self, tensor: int) -> str:
        from core.engine.diagnose import _main_layer
        from core.engine.quantizer import keras3_scopes

        if tensor in self.inputs:
            return INPUT_LAYER
        if self._keras3 is None:  # decided once per model, from its op outputs, as diagnose does
            self._keras3 = keras3_scopes(self.names[o] for outs in self.op_outputs for o in outs)
        return _main_layer(self.names[tensor], keras3=self._keras3)

    def shape(self, tensor: int) -> tuple[int, ...]:
        return tuple(int(d) for d in _ints(self._tensors[tensor].ShapeAsNumpy()))

    def dtype(self, tensor: int) -> int:
        return int(self._tensors[tensor].Type())

    def quantization(self, tensor: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(scales, zero points, quantized dimension), or None when not quantized."""
        q = self._tensors[tensor].Quantization()
        if q is None or not q.ScaleLength():
            return None
        zero = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(1, dtype=np.int64)
        return np.asarray(q.ScaleAsNumpy()), np.asarray(zero), int(q.QuantizedDimension())

    def constant(self, tensor: int) -> np.ndarray | None:
        """A float32 constant's values (a float model's kernel), or None."""
        t = self._tensors[tensor]
        if int(t.Type()) != 0 or t.Buffer() >= self.model.BuffersLength():
            return None  # 0: TensorType.FLOAT32
        data = self.model.Buffers(t.Buffer()).DataAsNumpy()
        shape = self.shape(tensor)
        if isinstance(data, int) or data.size != 4 * int(np.prod(shape)):
            return None  # no data: not a constant
        return np.asarray(data.view(np.float32).reshape(shape))


def _ints(values: Any) -> list[int]:
    """A flatbuffer int vector as a list (the accessors give 0 for an empty one)."""
    return [] if isinstance(values, int) else [int(v) for v in values]


@dataclass
class _Tracked:
    """Running statistics of one activation while the images stream through."""

    tensor: int  # index in the quantized graph
    float_name: str
    channels: int
    low: float  # representable range, half a step widened (values inside round into it)
    high: float
    scale: float
    zero_point: int
    qmin: int
    qmax: int
    channel_max: np.ndarray
    samples: list[np.ndarray] = field(default_factory=list)
    clipped_calibration: int = 0
    clipped: int = 0
    clipped_images: int = 0
    values_calibration: int = 0
    values: int = 0
    largest_over: float = 0.0


def _activation_signals(
    float_tflite: bytes,
    quantized: TFLiteGraph,
    calibration: np.ndarray,
    evaluated: np.ndarray,
) -> list[ActivationSignals]:
    from core.engine.intermediates import IntermediateTensors

    model = IntermediateTensors(float_tflite, xnnpack=False)
    tracked = _tracked_tensors(quantized, model.details)
    # Cheap per image (the budget is about 1 s for a MobileNetV2 on 100 images): per-channel
    # max and min, every step-th spatial position kept for the percentiles (a different offset
    # per image), and values counted against the range only when the extremes leave it.
    for n, image in enumerate(calibration):
        model.run(image)
        for t in tracked:
            v = model.values(t.float_name).reshape(-1, t.channels)
            top, bottom = v.max(axis=0), v.min(axis=0)
            np.maximum(t.channel_max, np.maximum(top, -bottom), out=t.channel_max)
            step = max(1, len(v) * len(calibration) * t.channels // SAMPLES_PER_TENSOR)
            t.samples.append(v if step == 1 else v[n % step :: step].copy())
            if top.max() > t.high or bottom.min() < t.low:
                t.clipped_calibration += int(np.count_nonzero((v < t.low) | (v > t.high)))
            t.values_calibration += v.size
    for image in evaluated:
        model.run(image)
        for t in tracked:
            v = model.values(t.float_name)
            t.values += v.size
            if float(v.max()) > t.high or float(v.min()) < t.low:
                t.clipped += int(np.count_nonzero((v < t.low) | (v > t.high)))
                t.clipped_images += 1
                t.largest_over = max(t.largest_over, _over_range(v, t))
    clip_rates = {t.tensor: (t.clipped / t.values if t.values else None) for t in tracked}
    return [_finish(t, quantized, clip_rates, len(calibration), len(evaluated)) for t in tracked]


def _tracked_tensors(
    quantized: TFLiteGraph, float_details: Mapping[str, Mapping[str, Any]]
) -> list[_Tracked]:
    """Every op output the variant quantizes per tensor (int8, uint8, int16), with its float
    twin: the same name, or for a QUANTIZE op the float tensor it quantizes."""
    tracked = []
    for n, outputs in enumerate(quantized.op_outputs):
        for out in outputs:
            grid = _GRID.get(quantized.dtype(out))
            q = quantized.quantization(out)
            if grid is None or q is None or len(q[0]) != 1:
                continue
            name = quantized.names[out]
            if quantized.kinds[n] == "QUANTIZE" and quantized.op_inputs[n]:
                name = quantized.names[quantized.op_inputs[n][0]]
            detail = float_details.get(name)
            shape = quantized.shape(out)
            if detail is None or int(np.prod(detail["shape"])) != int(np.prod(shape)):
                continue
            scale, zero = float(q[0][0]), int(q[1][0])
            if not (scale > 0 and math.isfinite(scale)):
                continue
            channels = int(shape[-1]) if shape else 1
            tracked.append(
                _Tracked(
                    tensor=out,
                    float_name=name,
                    channels=channels,
                    low=(grid[0] - zero - 0.5) * scale,
                    high=(grid[1] - zero + 0.5) * scale,
                    scale=scale,
                    zero_point=zero,
                    qmin=grid[0],
                    qmax=grid[1],
                    channel_max=np.zeros(channels, dtype=np.float32),
                )
            )
    return tracked


def _over_range(v: np.ndarray, t: _Tracked) -> float:
    """The largest |a| beyond the representable range, as a multiple of that edge (0: none)."""
    top, bottom = (t.qmax - t.zero_point) * t.scale, (t.qmin - t.zero_point) * t.scale
    worst = 0.0
    if top > 0 and float(v.max()) > t.high:
        worst = float(v.max()) / top
    if bottom < 0 and float(v.min()) < t.low:
        worst = max(worst, float(v.min()) / bottom)
    return worst


def _finish(
    t: _Tracked,
    quantized: TFLiteGraph,
    clip_rates: Mapping[int, float | None],
    calibration_images: int,
    evaluated_images: int,
) -> ActivationSignals:
    live = t.channel_max[t.channel_max > 0]  # dead channels (always 0) have no range to compare
    ratio: float | None = None
    outliers: tuple[int, ...] = ()
    if t.channels >= MIN_CHANNELS and live.size >= MIN_CHANNELS:
        median = float(np.median(live))
        ratio = float(t.channel_max.max()) / median
        outliers = tuple(
            int(c) for c in np.flatnonzero(t.channel_max >= ACTIVATION_RANGE_RATIO * median)
        )
    used: float | None = None
    if t.samples and live.size:
        samples = np.ascontiguousarray(np.concatenate(t.samples).T)  # channel-major
        # Nearest-rank percentiles by one partition (np.percentile sorts more than it needs).
        last = samples.shape[1] - 1
        k_low, k_high = round(0.001 * last), round(0.999 * last)
        parted = np.partition(samples, sorted({k_low, k_high}), axis=1)
        low, high = parted[:, k_low], parted[:, k_high]
        span = (np.maximum(high, 0) - np.minimum(low, 0))[t.channel_max > 0]
        used = float(np.median(span)) / t.scale
    producer = quantized.producer.get(t.tensor)
    inputs = [] if producer is None else quantized.op_inputs[producer]
    input_clips = [clip_rates[i] for i in inputs if clip_rates.get(i) is not None]
    quantizes = producer is not None and quantized.kinds[producer] == "QUANTIZE" and inputs
    layer = quantized.layer(inputs[0] if quantizes else t.tensor)  # an input's QUANTIZE: input
    chain, equalizable = _chain(quantized, t.tensor, layer)
    return ActivationSignals(
        tensor=quantized.names[t.tensor],
        layer=layer,
        op="INPUT" if producer is None else quantized.kinds[producer],
        chain=chain,
        equalizable=equalizable,
        channels=t.channels,
        range_ratio=ratio,
        outlier_channels=outliers,
        used_levels=used,
        grid_levels=t.qmax - t.qmin + 1,
        scale=t.scale,
        zero_point=t.zero_point,
        calibration_images=calibration_images,
        clip_rate=clip_rates[t.tensor],
        calibration_clip_rate=(
            t.clipped_calibration / t.values_calibration if t.values_calibration else 0.0
        ),
        max_over_range=t.largest_over or None,
        clipped_images=t.clipped_images / evaluated_images if evaluated_images else 0.0,
        evaluated_images=evaluated_images,
        input_clip_rate=max((r for r in input_clips if r is not None), default=None),
        channel_max_abs=tuple(float(v) for v in t.channel_max),
    )


def _chain(graph: TFLiteGraph, tensor: int, layer: str) -> tuple[tuple[str, ...], bool]:
    """The layers from the op that writes `tensor`, through pass-through ops, to the ops that
    read it; and whether cross-layer equalization can pair the writer with every reader."""
    producer = graph.producer.get(tensor)
    chain = [layer]
    exact = producer is not None and graph.kinds[producer] in WEIGHTED
    if producer is not None:
        exact = exact and graph.activation(producer) in _EQUALIZE_ACTIVATIONS
    frontier, seen = [tensor], {tensor}
    readers = 0
    while frontier:
        current = frontier.pop(0)
        for op in graph.consumers.get(current, []):
            kind = graph.kinds[op]
            for out in graph.op_outputs[op]:
                layer = graph.layer(out)
                if layer not in chain:
                    chain.append(layer)
                if kind in PASS_THROUGH and out not in seen:
                    seen.add(out)
                    frontier.append(out)
            if kind in PASS_THROUGH:
                exact = exact and kind in EQUALIZE_THROUGH
            else:
                readers += 1
                exact = exact and kind in WEIGHTED
    return tuple(chain), exact and readers > 0


def _weight_signals(quantized: TFLiteGraph, floated: TFLiteGraph) -> list[WeightSignals]:
    found = []
    for n, outputs in enumerate(quantized.op_outputs):
        kind = quantized.kinds[n]
        if kind not in WEIGHTED or not outputs:
            continue
        out = outputs[0]
        float_op = floated.producer.get(floated.index.get(quantized.names[out], -1))
        if float_op is None:
            continue
        for position, index in enumerate(floated.op_inputs[float_op]):
            kernel = floated.constant(index) if index >= 0 else None
            if kernel is None or kernel.ndim < 2 or position >= len(quantized.op_inputs[n]):
                continue
            q = quantized.quantization(quantized.op_inputs[n][position])
            if q is None:
                break  # the variant keeps this kernel in float: nothing to judge
            axis = q[2] if len(q[0]) > 1 else None
            found.append(
                _kernel_signals(kernel, quantized.names[out], quantized.layer(out), kind, axis)
            )
            break
    return found


def _kernel_signals(
    kernel: np.ndarray, tensor: str, layer: str, op: str, per_channel_axis: int | None
) -> WeightSignals:
    w = np.abs(kernel.astype(np.float64))
    out_axis = 3 if op == "DEPTHWISE_CONV_2D" else 0  # TFLite: [1,H,W,O] and [O,...]
    per_out = np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1).max(axis=1)
    live = per_out[per_out > 0]
    ratio = float(per_out.max() / np.median(live)) if live.size >= MIN_CHANNELS else None
    if per_channel_axis is None:
        groups = w.reshape(1, -1)
    else:
        groups = np.moveaxis(w, per_channel_axis, 0).reshape(w.shape[per_channel_axis], -1)
    spread = _group_spread(groups)
    worst = (
        int(np.nanargmax(spread))
        if groups.shape[1] >= MIN_GROUP and np.isfinite(spread).any()
        else None
    )
    signed = kernel.astype(np.float64)
    if per_channel_axis is not None:
        signed = np.moveaxis(signed, per_channel_axis, 0).reshape(groups.shape)
    return WeightSignals(
        tensor=tensor,
        layer=layer,
        op=op,
        weights=int(kernel.size),
        output_channels=int(w.shape[out_axis]),
        range_ratio=ratio,
        kurtosis=_kurtosis(kernel.ravel()),
        per_channel=per_channel_axis is not None,
        worst_group=None if worst is None or per_channel_axis is None else worst,
        group_size=int(groups.shape[1]),
        group_spread=None if worst is None else float(spread[worst]),
        group_kurtosis=None if worst is None else _kurtosis(signed.reshape(groups.shape)[worst]),
    )


def _group_spread(groups: np.ndarray) -> np.ndarray:
    """Per group: largest |w| / median of its nonzero |w| (pruned zeros are not typical
    weights); NaN for a group with no nonzero weight."""
    if np.all(groups > 0):  # the usual case: no pruned weight, a plain median
        return np.asarray(groups.max(axis=1) / np.median(groups, axis=1), dtype=np.float64)
    ordered = np.sort(groups, axis=1)  # |w| >= 0: the nonzero ones are the last `live`
    size = groups.shape[1]
    live = np.count_nonzero(groups > 0, axis=1)
    rows = np.arange(len(groups))
    lower = np.clip(size - live + (live - 1) // 2, 0, size - 1)
    upper = np.clip(size - live + live // 2, 0, size - 1)
    median = (ordered[rows, lower] + ordered[rows, upper]) / 2
    with np.errstate(all="ignore"):
        return np.where(live > 0, ordered[:, -1] / median, np.nan)


def _kurtosis(values: np.ndarray) -> float | None:
    """Excess kurtosis (Fisher: 0 for a Gaussian), None for a constant or tiny sample."""
    x = values.astype(np.float64).ravel()
    if x.size < 4:
        return None
    centred = x - x.mean()
    m2 = float(np.mean(centred**2))
    if m2 <= 0:
        return None
    return float(np.mean(centred**4) / m2**2 - 3.0)


def evenly_spaced(images: np.ndarray, count: int) -> np.ndarray:
    """At most `count` images, evenly spaced (a data set is often sorted by class)."""
    if len(images) <= count:
        return images
    return np.asarray(images[np.linspace(0, len(images) - 1, count).round().astype(int)])


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value or "")
