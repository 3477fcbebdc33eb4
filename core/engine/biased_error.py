"""Whether a quantized model's error at a weighted op is biased: per output channel, the mean of
(quantized - float) at the op's output against its spread, on the calibration images.

Rounding error that averages out is noise; error with a per-channel mean (weights that all
round the same way, or an upstream shift passed on) moves every output of the channel by the
same amount, which the float bias can absorb (core.engine.fixes.bias_correct). The same
measurement names the cause (`biased_error`, through core.engine.stages.diagnose) and makes the
correction, so the words and the fix agree.

Both models run image by image with every tensor kept and XNNPACK off (core.engine.intermediates),
matched by tensor name as core.engine.causes matches them. Where the op fuses a ReLU, only the
positions where the float output is inside the activation's open range are counted: there the
output is the pre-activation, whose error the bias moves; a clamped value's error is not.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from core.engine.causes import (
    BIAS_MIN_STEPS,
    BIAS_SPREAD_RATIO,
    BIASED_SHARE,
    MAX_IMAGES,
    WEIGHTED,
    Cause,
    TFLiteGraph,
    VariantCauses,
    evenly_spaced,
    in_fix_order,
)

# The open range in which a fused activation passes its input unchanged (None: not at all).
_PASSED = {
    "NONE": (-np.inf, np.inf),
    "RELU": (0.0, np.inf),
    "RELU6": (0.0, 6.0),
    "RELU_N1_TO_1": (-1.0, 1.0),
}


@dataclass(frozen=True)
class LayerError:
    """The error of one weighted op's output, per output channel, in float units."""

    layer: str  # the Keras layer whose op writes the tensor
    tensor: str
    op: str
    activation: str  # the op's fused activation
    scale: float  # the quantized output's step
    mean: tuple[float, ...]  # mean of (quantized - float) over the counted positions
    std: tuple[float, ...]  # its standard deviation over the same positions
    count: tuple[int, ...]  # positions counted (a dead channel has none)
    images: int

    @property
    def channels(self) -> int:
        return len(self.mean)

    def shifted(self) -> np.ndarray:
        """A mask of the channels whose mean error is biased (core.engine.causes's thresholds)."""
        mean, std = np.abs(np.asarray(self.mean)), np.asarray(self.std)
        live = np.asarray(self.count) > 1
        big = (mean >= BIAS_MIN_STEPS * self.scale) & (mean >= BIAS_SPREAD_RATIO * std)
        return np.asarray(live & big, dtype=bool)

    def live(self) -> int:
        return int(np.count_nonzero(np.asarray(self.count) > 1))


def layer_errors(
    float_tflite: bytes,
    tflite: bytes,
    images: np.ndarray,
    *,
    layers: Collection[str] | None = None,
) -> list[LayerError]:
    """The per-channel error of every weighted op of `tflite` (or of those `layers` write)
    whose output is quantized per tensor and has a float twin, in graph order.

    Args:
        images: preprocessed float32 [N,H,W,C]; at most MAX_IMAGES of them, evenly spaced, run.
    """
    from core.engine.intermediates import IntermediateTensors

    quantized = TFLiteGraph(tflite)
    images = evenly_spaced(images, MAX_IMAGES)
    floated = IntermediateTensors(float_tflite, xnnpack=False)
    model = IntermediateTensors(tflite, xnnpack=False)
    targets = []
    for n, outputs in enumerate(quantized.op_outputs):
        kind = quantized.kinds[n]
        if kind not in WEIGHTED or not outputs:
            continue
        out = outputs[0]
        name, layer = quantized.names[out], quantized.layer(out)
        q = quantized.quantization(out)
        activation = quantized.activation(n)
        if layers is not None and layer not in layers:
            continue
        if q is None or len(q[0]) != 1 or activation not in _PASSED:
            continue
        if name not in floated.details or floated.size(name) != model.size(name):
            continue
        targets.append((layer, name, kind, activation, float(q[0][0])))
    channels = {name: max(1, quantized.shape(quantized.index[name])[-1]) for _, name, *_ in targets}
    sums = {name: np.zeros((3, c), dtype=np.float64) for name, c in channels.items()}
    for image in images:
        floated.run(image)
        model.run(image)
        for _, name, _, activation, _ in targets:
            f = floated.values(name).reshape(-1, channels[name]).astype(np.float64)
            error = model.values(name).reshape(-1, channels[name]) - f
            low, high = _PASSED[activation]
            counted = (f > low) & (f < high)
            error = np.where(counted, error, 0.0)
            sums[name] += (counted.sum(axis=0), error.sum(axis=0), (error**2).sum(axis=0))
    found = []
    for layer, name, kind, activation, scale in targets:
        count, total, squares = sums[name]
        safe = np.maximum(count, 1)
        mean = total / safe
        std = np.sqrt(np.maximum(squares / safe - mean**2, 0.0))
        found.append(
            LayerError(
                layer=layer,
                tensor=name,
                op=kind,
                activation=activation,
                scale=scale,
                mean=tuple(float(v) for v in mean),
                std=tuple(float(v) for v in std),
                count=tuple(int(v) for v in count),
                images=len(images),
            )
        )
    return found


def biased_error_cause(e: LayerError) -> Cause | None:
    """A layer whose int8 output error has a per-channel mean large against its spread in at
    least BIASED_SHARE of its live channels: bias correction absorbs it."""
    shifted = e.shifted()
    live = e.live()
    if not live or np.count_nonzero(shifted) < BIASED_SHARE * live:
        return None
    mean = np.asarray(e.mean)
    steps = np.abs(mean[shifted]) / e.scale
    ratio = np.abs(mean[shifted]) / np.maximum(np.asarray(e.std)[shifted], 1e-30)
    signs = np.sign(mean[shifted])
    way = "down" if signs.sum() < 0 else "up"
    if abs(signs.sum()) < len(signs):
        way = "up or down"
    count = int(np.count_nonzero(shifted))
    return Cause(
        layer=e.layer,
        layers=(e.layer,),
        cause="biased_error",
        evidence={
            "tensor": e.tensor,
            "channels": e.channels,
            "live_channels": live,
            "shifted_channels": [int(c) for c in np.flatnonzero(shifted)],
            "mean_shift_steps": float(steps.mean()),
            "max_shift_steps": float(steps.max()),
            "mean_over_spread": float(ratio.mean()),
            "channel_mean_error": list(e.mean),
            "channel_error_std": list(e.std),
            "scale": e.scale,
            "fused_activation": e.activation,
            "calibration_images": e.images,
        },
        words=(
            f"{e.layer}: {count} of {live} channels are shifted {way} by {steps.mean():.2g} "
            f"of a quantization step on average ({ratio.mean():.1f}× the spread of their "
            "error); their biases can absorb it"
        ),
        # Only bias correction: the layer's other causes, if any, offer the rest of the ladder.
        fixes=in_fix_order(["bias_correction"]),
    )


def with_biased_error(
    found: VariantCauses,
    errors: Sequence[LayerError],
    *,
    suspects: Collection[str] | None = None,
) -> VariantCauses:
    """`found` with a `biased_error` cause for each biased layer (only the suspects' when
    given), after the other causes; a `diffuse` cause gives way to them (the error is not
    spread: it is a shift these layers' biases can absorb)."""
    from dataclasses import replace

    named = [c for c in map(biased_error_cause, errors) if c is not None]
    if suspects is not None:
        named = [c for c in named if c.layer in set(suspects)]
    if not named:
        return found
    kept = tuple(c for c in found.causes if c.cause != "diffuse")
    return replace(found, causes=(*kept, *named))
