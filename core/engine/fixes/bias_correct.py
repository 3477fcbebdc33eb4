"""The bias-correction rung: empirical bias correction of the Keras model (`int8:bc=A+B`).

For the named conv/depthwise/dense layers, in graph order: quantize the current clone as the
parent variant is (same backend, options and calibration images), measure the per-channel mean
of the quantized output's error against the original float model at that layer on the
calibration images (core.engine.biased_error), and subtract it from the layer's float bias
(a layer without one gets one where Keras allows it: Conv2D, DepthwiseConv2D and Dense take
`use_bias`). One layer at a time, because correcting a layer changes the error every later
layer inherits. The clone is then quantized as the parent is: same size and speed, all-int8.

The corrected float model differs from the original by design (it carries the opposite of the
int8 error); `float_change` measures by how much, so the fix says so.

The same function makes the ladder's candidate and the convert stage's `:bc=` variant, so both
give the same bytes: the correction depends only on the model, the parent's conversion and the
calibration images.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from core.engine.models import ReferenceModel
from core.errors import QuantLensError
from core.types import Mode, VariantSpec

# Keras layer classes whose bias adds one value per output channel (the op's output channel).
CORRECTABLE = ("Conv2D", "DepthwiseConv2D", "Dense")


# (reference model, variant, its cache key) -> the variant's `.tflite`: the backends' conversion
# (core.engine.backends passes it in, so this module does not import the module that uses it).
Convert = Callable[[ReferenceModel, VariantSpec, str], bytes]


class BiasCorrectionError(QuantLensError):
    """The model or a layer cannot be bias corrected: the rung is skipped with this reason."""


@dataclass(frozen=True)
class LayerShift:
    """What the correction did to one layer: its channels' mean error before, in int8 steps of
    the layer's output."""

    layer: str
    channels: int
    corrected_channels: int  # channels with counted positions (a dead channel is left alone)
    mean_abs_steps: float  # mean |mean error| over the corrected channels, in output steps
    max_abs_steps: float
    added_bias: bool  # the layer had no bias; one was added
    corrected: str = ""  # the layer whose bias changed: this one, or its folded batch norm

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "corrected_channels": self.corrected_channels,
            "mean_abs_steps": self.mean_abs_steps,
            "max_abs_steps": self.max_abs_steps,
            "added_bias": self.added_bias,
            "corrected": self.corrected or self.layer,
        }


@dataclass(frozen=True)
class BiasCorrection:
    """The corrected clone served as a reference model, and what the correction did."""

    reference: ReferenceModel
    keras_model: Any
    shifts: tuple[LayerShift, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why it was not corrected
    calibration_images: int = 0

    def as_fix(self) -> dict[str, Any]:
        """The typed `fix` of the rung's candidate."""
        return {
            "kind": "bias_correction",
            "layers": [s.layer for s in self.shifts],
            "shift": {s.layer: s.to_dict() for s in self.shifts},
            "skipped": dict(self.skipped),
            "measured_on": "calibration images",
            "calibration_images": self.calibration_images,
        }


def corrected_sha(model_sha256: str, spec: VariantSpec, calibration: np.ndarray) -> str:
    """The content key of a corrected model: the original's hash, the variant (its layers and
    the conversion whose error was measured) and the calibration images."""
    digest = hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest()[:16]
    return f"{model_sha256}:{spec.name}:{digest}"


_lock = threading.Lock()
_last: tuple[tuple[int, str, str], BiasCorrection] | None = None  # the convert stage reuses it


def bias_corrected_reference(
    model: ReferenceModel,
    spec: VariantSpec,
    calibration: np.ndarray,
    *,
    model_sha256: str,
    convert: Convert,
) -> BiasCorrection:
    """Correct `spec.bias_corrected_layers` of the Keras model behind `model` against the int8
    error of `spec` without them, measured on the calibration images.

    Raises:
        BiasCorrectionError: not a Keras model, a model Keras cannot clone (subclassed, custom
            layers), another override beside bc=, or no named layer could be corrected (each
            one's reason).
    """
    from core.engine.models import keras_model_of

    global _last
    layers = spec.bias_corrected_layers
    parent = replace(spec, bias_corrected_layers=())
    if parent.has_overrides or spec.mode is not Mode.INT8:
        raise BiasCorrectionError(
            f"{spec.name}: bc= corrects the plain int8 conversion; give it without other overrides"
        )
    keras_model = keras_model_of(model)
    if keras_model is None:
        raise BiasCorrectionError(
            f"{model.path.name} is a SavedModel, whose graph has no Keras layers to correct; "
            "give the .keras file to try bias correction"
        )
    digest = hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest()
    key = (id(model), spec.name, digest)
    with _lock:
        if _last is not None and _last[0] == key:
            return _last[1]
        found = _correct(model, keras_model, parent, layers, calibration, model_sha256, convert)
        _last = (key, found)
        return found


def _correct(
    model: ReferenceModel,
    keras_model: Any,
    parent: VariantSpec,
    layers: tuple[str, ...],
    calibration: np.ndarray,
    model_sha256: str,
    convert: Convert,
) -> BiasCorrection:
    from core.engine.biased_error import layer_errors
    from core.engine.causes import MAX_IMAGES
    from core.engine.models import reference_from_keras

    skipped: dict[str, str] = {}
    by_name = {layer.name: layer for layer in keras_model.layers}
    wanted = []
    for name in layers:
        layer = by_name.get(name)
        if layer is None:
            skipped[name] = "no layer of that name in the Keras model"
        elif type(layer).__name__ not in CORRECTABLE:
            skipped[name] = (
                f"a {type(layer).__name__} layer; bias correction edits Conv2D, DepthwiseConv2D "
                "and Dense biases"
            )
        else:
            wanted.append(layer)
    if not wanted:
        raise BiasCorrectionError(f"no layer to bias correct: {_reasons(skipped)}")
    # A conv followed by batch norm (and a ReLU) is one op in the converted model: its output is
    # the batch norm's (the ReLU's) and the batch norm's beta is the bias that moves it.
    chains = {layer.name: _folded_chain(keras_model, layer) for layer in wanted}
    need_bias = {
        layer.name
        for layer in wanted
        if not layer.use_bias and not any(_is_batch_norm(x) for x in chains[layer.name])
    }
    clone = _clone_with_biases(keras_model, need_bias)
    float32 = convert(model, VariantSpec(mode=Mode.FLOAT32), model_sha256)
    shifts = []
    order = [layer.name for layer in keras_model.layers if layer in wanted]  # graph order
    for step, name in enumerate(order):
        step_sha = f"{model_sha256}:bias-correction-{'+'.join(order[:step])}"
        quantized = convert(reference_from_keras(clone, model), parent, step_sha)
        found = layer_errors(float32, quantized, calibration, layers={name})
        if not found:
            skipped[name] = (
                "the model's output op, which the converted model names after its signature, not "
                "this layer"
                if any(id(t) == id(by_name[name].output) for t in keras_model.outputs)
                else "no conv or dense op of the converted model writes this layer's output (a "
                "batch norm or activation folded into it?), so its error cannot be measured there"
            )
            continue
        error = found[0]
        target = _bias_holder(keras_model, chains[name], float32, error.tensor, calibration[:2])
        if target is None:
            skipped[name] = (
                "the converted op that writes this layer's output computes more than the layer, "
                "its batch norm and its ReLU; no bias can absorb the error there"
            )
            continue
        mean = np.asarray(error.mean)
        live = np.asarray(error.count) > 1
        holder = clone.get_layer(target)
        weights = holder.get_weights()
        at = _bias_index(holder)
        if at is None or weights[at].shape != mean.shape:
            skipped[name] = (
                f"{target} has no bias of {mean.size} values to edit (a batch norm without "
                "center=True?)"
            )
            continue
        weights[at] = (weights[at] - np.where(live, mean, 0.0)).astype(weights[at].dtype)
        holder.set_weights(weights)
        steps = np.abs(mean[live]) / error.scale if live.any() else np.zeros(1)
        shifts.append(
            LayerShift(
                layer=name,
                channels=len(mean),
                corrected_channels=int(live.sum()),
                mean_abs_steps=float(steps.mean()),
                max_abs_steps=float(steps.max()),
                added_bias=name in need_bias,
                corrected=target,
            )
        )
    if not shifts:
        raise BiasCorrectionError(f"no layer could be bias corrected: {_reasons(skipped)}")
    return BiasCorrection(
        reference=reference_from_keras(clone, model),
        keras_model=clone,
        shifts=tuple(shifts),
        skipped=skipped,
        calibration_images=min(len(calibration), MAX_IMAGES),
    )


def _folded_chain(keras_model: Any, layer: Any) -> list[Any]:
    """`layer` and the layers the converter folds into its op: a batch norm, then a ReLU,
    each the only reader of the one before."""
    chain = [layer]
    while len(chain) < 3:
        readers = [x for x in keras_model.layers if _reads(x, chain[-1])]
        if len(readers) != 1 or type(readers[0]).__name__ not in FOLDED:
            break
        chain.append(readers[0])
    return chain


FOLDED = ("BatchNormalization", "ReLU", "Activation")


def _reads(layer: Any, producer: Any) -> bool:
    try:
        return id(layer.input) == id(producer.output)
    except (AttributeError, ValueError):  # several inputs or inbound nodes: not a fold
        return False


def _is_batch_norm(layer: Any) -> bool:
    return type(layer).__name__ == "BatchNormalization"


def _bias_holder(
    keras_model: Any, chain: list[Any], float_tflite: bytes, tensor: str, images: np.ndarray
) -> str | None:
    """The layer whose bias moves the converted op's output: the last batch norm (else the
    layer itself) up to the deepest layer of the chain whose Keras output is that op's output;
    None when none is."""
    for depth in range(len(chain), 0, -1):
        if _writes_layer_output(keras_model, chain[depth - 1].name, float_tflite, tensor, images):
            norms = [x for x in chain[:depth] if _is_batch_norm(x)]
            return str((norms[-1] if norms else chain[0]).name)
    return None


def _bias_index(layer: Any) -> int | None:
    """Where a layer's bias sits in its weights: a conv's or dense's second, a batch norm's
    beta (after gamma when it scales)."""
    if _is_batch_norm(layer):
        if not layer.center:
            return None
        return 1 if layer.scale else 0
    return 1 if getattr(layer, "use_bias", False) else None


def _writes_layer_output(
    keras_model: Any, layer: str, float_tflite: bytes, tensor: str, images: np.ndarray
) -> bool:
    """Whether the float `.tflite`'s `tensor` holds what the Keras layer outputs on `images`:
    a layer the converter fused with the next one (a batch norm) does not, and its error is
    then in other units than its bias."""
    import keras

    from core.engine.intermediates import IntermediateTensors

    inputs = keras_model.inputs
    probe = keras.Model(
        inputs[0] if len(inputs) == 1 else inputs, keras_model.get_layer(layer).output
    )
    expected = np.asarray(probe(images, training=False), dtype=np.float64)
    model = IntermediateTensors(float_tflite, xnnpack=False)
    got = []
    for image in images:
        model.run(image)
        got.append(model.values(tensor))
    found = np.stack(got).astype(np.float64)
    if found.size != expected.size:
        return False
    tolerance = 1e-3 * max(1.0, float(np.max(np.abs(expected))))
    return bool(np.max(np.abs(found.reshape(expected.shape) - expected)) <= tolerance)


def _clone_with_biases(keras_model: Any, need_bias: set[str]) -> Any:
    """A clone of the Keras model with its weights, the `need_bias` layers given a zero bias.

    Raises:
        BiasCorrectionError: Keras cannot clone the model (subclassed, custom layers).
    """
    import keras

    def rebuild(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name in need_bias:
            config["use_bias"] = True
        return type(layer).from_config(config)

    try:
        clone = keras.models.clone_model(keras_model, clone_function=rebuild)
        for original in keras_model.layers:
            weights = original.get_weights()
            if original.name in need_bias:
                channels = int(weights[0].shape[-1])
                if type(original).__name__ == "DepthwiseConv2D":
                    channels = int(weights[0].shape[-2] * weights[0].shape[-1])
                weights = [weights[0], np.zeros(channels, dtype=weights[0].dtype), *weights[1:]]
            clone.get_layer(original.name).set_weights(weights)
    except (ValueError, TypeError, NotImplementedError, KeyError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise BiasCorrectionError(
            f"Keras cannot clone this model to correct its biases ({first}); a subclassed model "
            "or custom layers without get_config cannot be bias corrected"
        ) from None
    return clone


def _reasons(skipped: dict[str, str]) -> str:
    return "; ".join(f"{name}: {why}" for name, why in skipped.items()) or "none named"


@dataclass(frozen=True)
class FloatChange:
    """The corrected float model against the original on some images."""

    images: int
    top1_agreement: float
    max_abs_delta: float


def float_change(
    model: ReferenceModel, corrected: BiasCorrection, images: np.ndarray
) -> FloatChange:
    """Top-1 agreement and max |Δ output| of the corrected float model against the original:
    the price of compensating the int8 error in float (not a tolerance: it differs by design)."""
    if not len(images):
        return FloatChange(0, 1.0, 0.0)
    original = np.asarray(model.predict(images), dtype=np.float64)
    changed = np.asarray(corrected.reference.predict(images), dtype=np.float64)
    return FloatChange(
        images=len(images),
        top1_agreement=float(np.mean(original.argmax(axis=1) == changed.argmax(axis=1))),
        max_abs_delta=float(np.max(np.abs(original - changed))),
    )
