"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization") on a Keras 3 model.

A pair is two weight layers A -> B (Conv2D, DepthwiseConv2D or Dense) where A's output feeds
only B, through ops that are positively homogeneous per channel: f(x / s) = f(x) / s for s > 0
(ReLU, LeakyReLU, identity, max/average pooling, dropout, zero padding). Then dividing A's
output channel i by s_i and multiplying B's input channel i by s_i leaves the model's function
unchanged, and s_i = sqrt(r1_i * r2_i) / r2_i gives both layers the same per-channel weight
range sqrt(r1_i * r2_i): an outlier channel stops dwarfing the others in the int8 grid of the
activation between them. A BatchNormalization right after A is kept (no graph rewrite): its
gamma and beta are scaled instead of A's kernel, and A's ranges are measured on the folded
kernel (what the converter quantizes).

ReLU6 is not homogeneous. It is handled in one of three ways (`relu6=`): "skip" the pair;
"if_unclipped": equalize only channels whose pre-activation never reaches 6 on the given
calibration images, with s_i bounded so that it still never does (exact on those images);
"replace": replace that ReLU6 by ReLU as AIMET does (this changes the float model; the change
is measured on the given images and returned in the record).

Nothing here edits the caller's model: the model is cloned first.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from core.errors import QuantLensError

Relu6Policy = Literal["skip", "if_unclipped", "replace"]

ITERATIONS = 20  # Nagel et al. iterate over a chain until the scales settle; a few suffice
CONVERGED = 1e-4  # largest |log s| of a sweep below which the scales have settled
_WEIGHT_KINDS = ("Conv2D", "DepthwiseConv2D", "Dense")
# Per-channel positively homogeneous ops: f(x / s) = f(x) / s for every s > 0.
_HOMOGENEOUS = (
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalMaxPooling2D",
    "GlobalAveragePooling2D",
    "Dropout",
    "SpatialDropout2D",
    "Identity",
    "ZeroPadding2D",
    "LeakyReLU",
)
# Between A and B, these keep every channel's values (up to a constant subtracted): a bias can
# be moved from A into B through them. Zero padding and B's own padding would pad with 0, not -c.
_ABSORB_THROUGH = (
    "ReLU",
    "LeakyReLU",
    "Activation",
    "BatchNormalization",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalMaxPooling2D",
    "GlobalAveragePooling2D",
    "Dropout",
    "SpatialDropout2D",
    "Identity",
)


class EqualizationError(QuantLensError):
    """Cross-layer equalization cannot run on this model or was refused after verification."""


@dataclass(frozen=True)
class EqualizedPair:
    """One pair A -> B that was equalized, with max/median per-channel weight range of A's
    (BN-folded) output channels before and after, and of the activation between them when
    calibration images were given."""

    first: str
    second: str
    between: tuple[str, ...]
    channels: int
    range_ratio_before: float
    range_ratio_after: float
    activation_ratio_before: float | None = None
    activation_ratio_after: float | None = None
    relu6: str = ""  # "", "unclipped" (equalized channels only) or "replaced"
    frozen_channels: int = 0  # ReLU6 channels left at scale 1 because the clip is reached
    bias_absorbed_channels: int = 0


@dataclass(frozen=True)
class SkippedPair:
    """A weight layer whose output could not be paired, and why (one line)."""

    layer: str
    reason: str
    second: str | None = None


@dataclass(frozen=True)
class Verification:
    """The equalized float model against the original on the same images."""

    images: int
    top1_agreement: float
    max_abs_delta: float


@dataclass(frozen=True)
class EqualizationRecord:
    """What equalization did. `reason` is set when no pair could be equalized at all."""

    pairs: tuple[EqualizedPair, ...] = ()
    skipped: tuple[SkippedPair, ...] = ()
    reason: str | None = None
    iterations: int = 0
    relu6_replaced: tuple[str, ...] = ()
    clone_seconds: float = 0.0  # Keras rebuilding the model (twice when ReLU6 is replaced)
    statistics_seconds: float = 0.0  # one forward pass of the images for per-channel ranges
    equalize_seconds: float = 0.0  # the arithmetic on the weights, and writing them back
    float_change: Verification | None = None  # measured when images were given
    layers: tuple[str, ...] = ()  # every layer whose weights changed
    relu6: str = ""  # the ReLU6 policy used

    @property
    def equalized(self) -> bool:
        return bool(self.pairs)

    def as_fix(self) -> dict[str, Any]:
        """The variant's typed `fix` (DESIGN §10): kind, the layers changed, the pairs, how
        ReLU6 was treated, and the float change measured on the images when there were any."""
        fix: dict[str, Any] = {
            "kind": "equalize",
            "layers": list(self.layers),
            "pairs": [[p.first, p.second] for p in self.pairs],
            "relu6": self.relu6,
            "relu6_replaced": list(self.relu6_replaced),
        }
        if self.float_change is not None:
            fix["float_top1_agreement"] = self.float_change.top1_agreement
            fix["float_max_abs_delta"] = self.float_change.max_abs_delta
        return fix


@dataclass
class _Chain:
    first: Any
    second: Any
    between: list[Any]
    bn: Any | None
    relu6: Any | None  # the ReLU6 layer (or A itself, when fused) between A and B
    absorb_ok: bool


def equalize(
    model: Any,
    images: np.ndarray | None = None,
    *,
    relu6: Relu6Policy = "if_unclipped",
    iterations: int = ITERATIONS,
    absorb_bias: bool = True,
) -> tuple[Any | None, EqualizationRecord]:
    """Equalize every pairable chain of a clone of `model`.

    Args:
        model: a Keras 3 functional or Sequential model (never modified).
        images: optional calibration images (model input, preprocessed); needed for the ReLU6
            "if_unclipped" check, bias absorption and activation range ratios, and used to
            measure the float change (`record.float_change`).
        relu6: how to treat ReLU6 between the two layers (module docstring).
        iterations: most sweeps over the pairs.
        absorb_bias: move the always-positive part of A's bias into B where that is exact on
            the images (Nagel et al. §4.1, data-driven).

    Returns:
        (equalized clone, record), or (None, record with `reason`) when nothing could be paired.

    Raises:
        EqualizationError: the images do not fit the model, or the model's graph cannot be read
            (one line; a model that merely cannot be paired returns a record instead).
    """
    untraceable = _untraceable(model)
    if untraceable:
        return None, EqualizationRecord(reason=untraceable)
    if images is not None:
        _check_images(model, images)
    try:
        return _equalize(model, images, relu6, iterations, absorb_bias)
    except QuantLensError:
        raise
    except Exception as exc:  # a layer this code does not understand: say so, never crash
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise EqualizationError(
            f"equalization could not read this model ({type(exc).__name__}: {first}); "
            "quantize it without equalization"
        ) from exc


def _equalize(
    model: Any,
    images: np.ndarray | None,
    relu6: Relu6Policy,
    iterations: int,
    absorb_bias: bool,
) -> tuple[Any | None, EqualizationRecord]:
    started = time.perf_counter()
    try:
        clone = _clone(model)
    except Exception as exc:  # a custom layer without a usable get_config
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, EqualizationRecord(reason=f"the model cannot be cloned: {reason}"[:300])
    chains, skipped = find_chains(clone, relu6=relu6, have_images=images is not None)
    replaced: tuple[str, ...] = ()
    if relu6 == "replace":
        replaced = tuple(c.relu6.name for c in chains if c.relu6 is not None)
        if replaced:
            clone = _clone(clone, relu_for=set(replaced))
            chains, skipped = find_chains(clone, relu6="skip", have_images=images is not None)
    clone_seconds = time.perf_counter() - started
    if not chains:
        reason = "no pair of weight layers joined only by homogeneous ops" + (
            f" ({skipped[0].layer}: {skipped[0].reason})" if skipped else ""
        )
        return None, EqualizationRecord(
            skipped=tuple(skipped), reason=reason, clone_seconds=clone_seconds
        )

    act_before = _activation_ratios(clone, chains, images) if images is not None else {}
    started = time.perf_counter()
    stats = _pre_activation_stats(clone, chains, images) if images is not None else {}
    statistics_seconds = time.perf_counter() - started
    started = time.perf_counter()
    pairs, sweeps = _equalize_chains(clone, chains, stats, iterations, absorb_bias, replaced)
    equalize_seconds = time.perf_counter() - started
    if images is not None:
        act_after = _activation_ratios(clone, chains, images)
        pairs = [
            _with_activation(p, act_before.get(p.first), act_after.get(p.first)) for p in pairs
        ]
    change = (
        verify_equalized(model, clone, images, tolerance=math.inf) if images is not None else None
    )
    return clone, EqualizationRecord(
        pairs=tuple(pairs),
        skipped=tuple(skipped),
        iterations=sweeps,
        relu6_replaced=replaced,
        clone_seconds=clone_seconds,
        statistics_seconds=statistics_seconds,
        equalize_seconds=equalize_seconds,
        float_change=change,
        layers=tuple(dict.fromkeys(name for p in pairs for name in (p.first, p.second))),
        relu6=relu6,
    )


def verify_equalized(
    original: Any,
    equalized: Any,
    images: np.ndarray,
    *,
    tolerance: float = 1e-3,
    min_agreement: float = 0.99,
    batch_size: int = 64,
) -> Verification:
    """Run both float models on `images` and compare their outputs.

    Returns:
        top-1 agreement and the largest |Δ| over every value of the first output (logits or
        probabilities, whatever the model outputs).

    Raises:
        EqualizationError: max |Δ| above `tolerance` or agreement below `min_agreement`.
    """
    if len(images) == 0:
        raise EqualizationError("no images to verify the equalized model on; give at least one")
    a = _predict(original, images, batch_size)
    b = _predict(equalized, images, batch_size)
    delta = float(np.max(np.abs(a - b))) if a.size else 0.0
    agreement = float(np.mean(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))
    result = Verification(images=len(images), top1_agreement=agreement, max_abs_delta=delta)
    if not (delta <= tolerance and agreement >= min_agreement):
        raise EqualizationError(
            f"the equalized float model differs from the original on {len(images)} images: "
            f"max |Δ output| {delta:.3g} (tolerance {tolerance:.3g}), top-1 agreement "
            f"{agreement:.1%} (needs {min_agreement:.1%}); do not quantize it"
        )
    return result


def rescale_channels(model: Any, first: str, second: str, scales: np.ndarray) -> Any:
    """A clone of `model` where A's output channel i is divided by scales[i] and B's input
    channel i multiplied by it: the same function when A -> B is a homogeneous chain.

    Raises:
        EqualizationError: the two layers are not such a chain.
    """
    untraceable = _untraceable(model)
    if untraceable:
        raise EqualizationError(untraceable)
    clone = _clone(model)
    chains, skipped = find_chains(clone, relu6="skip", have_images=False)
    chain = next((c for c in chains if c.first.name == first and c.second.name == second), None)
    if chain is None:
        why = next((s.reason for s in skipped if s.layer == first), "no such pair")
        raise EqualizationError(f"{first} -> {second} cannot be rescaled exactly: {why}")
    store: dict[tuple[str, str], np.ndarray] = {}
    weights = _Weights(chain, store)
    scales = np.asarray(scales, dtype=np.float64)
    if scales.shape != (_out_ranges(chain, weights).shape[0],) or np.any(scales <= 0):
        raise EqualizationError(f"give one positive scale per output channel of {first}")
    _scale(chain, weights, scales)
    _write_all(clone, store)
    return clone


# --- the graph -----------------------------------------------------------------------------


def _untraceable(model: Any) -> str | None:
    """Why the model's graph of layers cannot be read, or None for a built functional or
    Sequential Keras model."""
    import keras
    from keras.src.models.functional import Functional

    kind = type(model).__name__
    if not isinstance(model, keras.Model):
        return f"{kind} is not a Keras model: equalization needs the .keras file's layers"
    if type(model) not in (Functional, keras.Sequential):
        return f"{kind} is a subclassed model: its layers' connections cannot be traced"
    if not model.built:
        return f"{kind} is not built: call it on an input once"
    return None


def _check_images(model: Any, images: np.ndarray) -> None:
    """One input, and images shaped as it expects (the batch first)."""
    if len(model.inputs) != 1:
        raise EqualizationError(
            f"the model takes {len(model.inputs)} inputs; equalize it without images"
        )
    expected = tuple(model.inputs[0].shape[1:])
    got = tuple(np.shape(images)[1:])
    if (
        len(images) == 0
        or len(got) != len(expected)
        or any(e is not None and e != g for e, g in zip(expected, got, strict=True))
    ):
        raise EqualizationError(
            f"images of shape {np.shape(images)} do not fit the model's input {expected}; "
            "give a batch of preprocessed images"
        )


def _clone(model: Any, relu_for: set[str] | None = None) -> Any:
    """A copy with the same layer names and weights; ReLU6 replaced by ReLU in `relu_for`."""
    import keras

    def clone_layer(layer: Any) -> Any:
        config = layer.get_config()
        if relu_for and layer.name in relu_for:
            if "max_value" in config:
                config["max_value"] = None
            elif config.get("activation") == "relu6":
                config["activation"] = "relu"
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def find_chains(
    model: Any, *, relu6: Relu6Policy, have_images: bool
) -> tuple[list[_Chain], list[SkippedPair]]:
    """Every pairable A -> ... -> B in `model`, and the weight layers that could not pair."""
    consumers: dict[str, list[Any]] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                producer = tensor._keras_history.operation
                consumers.setdefault(producer.name, []).append(layer)
    outputs = {t._keras_history.operation.name for t in model.outputs}
    chains: list[_Chain] = []
    skipped: list[SkippedPair] = []
    for layer in model.layers:
        if _kind(layer) not in _WEIGHT_KINDS:
            continue
        found = _follow(layer, consumers, outputs, relu6, have_images)
        if isinstance(found, SkippedPair):
            skipped.append(found)
        else:
            chains.append(found)
    return chains, skipped


def _follow(
    first: Any,
    consumers: dict[str, list[Any]],
    outputs: set[str],
    relu6: Relu6Policy,
    have_images: bool,
) -> _Chain | SkippedPair:
    name = first.name
    problem = _weight_layer_problem(first)
    if problem:
        return SkippedPair(name, problem)
    between: list[Any] = []
    bn = None
    relu6_layer = None
    activation = (
        getattr(first.activation, "__name__", "linear")
        if hasattr(first, "activation")
        else "linear"
    )
    if activation == "relu6":
        if relu6 != "replace":
            why = "its fused ReLU6 clips (split the activation out, or replace ReLU6 by ReLU)"
            return SkippedPair(name, why)
        relu6_layer = first
    elif activation not in ("linear", "relu"):
        return SkippedPair(name, f"its activation {activation} is not positively homogeneous")
    absorb_ok = True
    current = first
    while True:
        if current.name in outputs:
            return SkippedPair(name, f"{current.name} is a model output")
        nexts = consumers.get(current.name, [])
        if len(nexts) != 1:
            return SkippedPair(name, f"{current.name} branches into {len(nexts)} layers")
        layer = nexts[0]
        kind = _kind(layer)
        if len(layer._inbound_nodes) != 1:
            return SkippedPair(name, f"{layer.name} is shared (called more than once)")
        if kind in _WEIGHT_KINDS:
            problem = _weight_layer_problem(layer)
            if problem:
                return SkippedPair(name, problem, layer.name)
            absorb_ok = absorb_ok and _padding_free(layer)
            return _Chain(first, layer, between, bn, relu6_layer, absorb_ok)
        if kind.startswith("custom "):
            return SkippedPair(
                name, f"custom layer {layer.name} ({layer.__class__.__name__}) follows it"
            )
        if kind == "BatchNormalization":
            if between or activation != "linear":
                return SkippedPair(
                    name, f"{layer.name} (batch norm) after an activation is not homogeneous"
                )
            if not layer.scale or layer.axis not in (-1, len(layer.input.shape) - 1):
                return SkippedPair(name, f"{layer.name} has no gamma or normalizes another axis")
            bn = layer
        elif kind == "ReLU" or (
            kind == "Activation" and _act(layer) in ("relu", "relu6", "linear")
        ):
            capped = (
                layer.max_value if kind == "ReLU" else (6.0 if _act(layer) == "relu6" else None)
            )
            if kind == "ReLU" and float(layer.threshold) != 0.0:
                return SkippedPair(name, f"{layer.name} has a threshold: not homogeneous")
            if capped is not None:
                if float(capped) != 6.0 or relu6 == "skip" or relu6_layer is not None:
                    return SkippedPair(name, f"{layer.name} clips at {capped} (not homogeneous)")
                if relu6 == "if_unclipped" and not have_images:
                    return SkippedPair(
                        name, f"{layer.name} is a ReLU6: give calibration images to check its clip"
                    )
                relu6_layer = layer
            between.append(layer)
        elif kind in _HOMOGENEOUS:
            if getattr(layer, "data_format", "channels_last") != "channels_last":
                return SkippedPair(name, f"{layer.name} is channels-first")
            between.append(layer)
        else:
            return SkippedPair(name, f"{layer.name} ({kind}) is not positively homogeneous")
        absorb_ok = absorb_ok and kind in _ABSORB_THROUGH
        current = layer


def _weight_layer_problem(layer: Any) -> str | None:
    kind = _kind(layer)
    if len(layer._inbound_nodes) != 1:
        return f"{layer.name} is shared (called more than once)"
    if getattr(layer, "groups", 1) != 1:
        return f"{layer.name} is a grouped convolution"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return f"{layer.name} is channels-first"
    if getattr(getattr(layer, "dtype_policy", None), "quantization_mode", None):
        return f"{layer.name} is already quantized in Keras"
    if kind == "Dense" and len(layer.kernel.shape) != 2:
        return f"{layer.name} has an unusual kernel"
    return None


def _padding_free(second: Any) -> bool:
    """B adds A's absorbed bias exactly only when it never reads padding (pads with 0, not -c)."""
    if _kind(second) == "Dense":
        return True
    return bool(second.padding == "valid" or all(k == 1 for k in second.kernel_size))


def _kind(layer: Any) -> str:
    """The Keras class name; a class defined outside Keras (even a Conv2D subclass) is custom."""
    cls = layer.__class__
    return str(cls.__name__) if cls.__module__.startswith("keras.") else f"custom {cls.__name__}"


def _act(layer: Any) -> str:
    return str(getattr(layer.activation, "__name__", ""))


# --- the arithmetic ------------------------------------------------------------------------


class _Weights:
    """One chain's view (k1, b1, gamma, beta, bn_std, k2, b2) onto float64 copies of the
    model's weights shared by every chain: a layer that is B of one pair and A of the next is
    scaled by both, in one array."""

    def __init__(self, chain: _Chain, store: dict[tuple[str, str], np.ndarray]) -> None:
        a, b, bn = chain.first, chain.second, chain.bn
        self._keys: dict[str, tuple[Any, str]] = {"k1": (a, "kernel"), "k2": (b, "kernel")}
        if a.bias is not None:
            self._keys["b1"] = (a, "bias")
        if b.bias is not None:
            self._keys["b2"] = (b, "bias")
        if bn is not None:
            self._keys["gamma"] = (bn, "gamma")
            if bn.center:
                self._keys["beta"] = (bn, "beta")
        self._store = store
        self._layers = {key: layer for key, (layer, _) in self._keys.items()}
        for layer, attr in self._keys.values():
            if (layer.name, attr) not in store:
                store[(layer.name, attr)] = np.array(getattr(layer, attr).numpy(), np.float64)
        if bn is not None:
            var = np.array(bn.moving_variance.numpy(), dtype=np.float64)
            self.bn_std: np.ndarray = np.sqrt(var + bn.epsilon)

    def __contains__(self, key: str) -> bool:
        return key in self._keys or (key == "bn_std" and hasattr(self, "bn_std"))

    def __getitem__(self, key: str) -> np.ndarray:
        if key == "bn_std":
            return self.bn_std
        layer, attr = self._keys[key]
        return self._store[(layer.name, attr)]

    def __setitem__(self, key: str, value: np.ndarray) -> None:
        layer, attr = self._keys[key]
        self._store[(layer.name, attr)] = value


def _write_all(model: Any, store: dict[tuple[str, str], np.ndarray]) -> None:
    """Assign every changed array back to its layer's variable (float32)."""
    for (name, attr), value in store.items():
        getattr(model.get_layer(name), attr).assign(value.astype(np.float32))


def _out_ranges(chain: _Chain, w: _Weights) -> np.ndarray:
    """max |w| per output channel of A as the converter quantizes it (batch norm folded)."""
    k = w["k1"]
    if _kind(chain.first) == "DepthwiseConv2D":  # output channel = input * multiplier + k
        flat = k.reshape(k.shape[0] * k.shape[1], -1)
    else:
        flat = k.reshape(-1, k.shape[-1])
    ranges: np.ndarray = np.max(np.abs(flat), axis=0)
    if chain.bn is not None:
        ranges = ranges * np.abs(w["gamma"]) / w["bn_std"]
    return ranges


def _in_ranges(chain: _Chain, w: _Weights) -> np.ndarray:
    """max |w| per input channel of B."""
    k = w["k2"]
    ranges: np.ndarray = np.max(np.abs(k), axis=1 if k.ndim == 2 else (0, 1, 3))
    return ranges


def _scale(chain: _Chain, w: _Weights, s: np.ndarray) -> None:
    """Divide A's output channel i by s[i] and multiply B's input channel i by s[i]."""
    if chain.bn is not None:  # scale the batch norm's affine part: exact, whatever epsilon is
        w["gamma"] = w["gamma"] / s
        if "beta" in w:
            w["beta"] = w["beta"] / s
    else:
        k = w["k1"]
        if _kind(chain.first) == "DepthwiseConv2D":
            w["k1"] = (k.reshape(k.shape[0], k.shape[1], -1) / s).reshape(k.shape)
        else:
            w["k1"] = k / s
        if "b1" in w:
            w["b1"] = w["b1"] / s
    k2 = w["k2"]
    w["k2"] = k2 * (s[:, None] if k2.ndim == 2 else s[None, None, :, None])


def _absorb(chain: _Chain, w: _Weights, c: np.ndarray) -> None:
    """Subtract c >= 0 from A's output (its bias or beta) and add B's response to c to B's bias:
    exact when A's pre-activation is >= c on every image and B reads no padding."""
    if chain.bn is not None:
        w["beta"] = w["beta"] - c
    else:
        w["b1"] = w["b1"] - c
    k2 = w["k2"]
    if k2.ndim == 2:
        w["b2"] = w["b2"] + c @ k2
    elif _kind(chain.second) == "DepthwiseConv2D":
        w["b2"] = w["b2"] + np.einsum("hwcm,c->cm", k2, c).reshape(-1)
    else:
        w["b2"] = w["b2"] + np.einsum("hwco,c->o", k2, c)


def _ratio(ranges: np.ndarray) -> float:
    """max / median over channels with any weight: how much of the grid the largest one takes."""
    live = ranges[ranges > 0]
    if live.size == 0:
        return 1.0
    return float(np.max(live) / np.median(live))


def _equalize_chains(
    model: Any,
    chains: list[_Chain],
    stats: dict[str, tuple[np.ndarray, np.ndarray]],
    iterations: int,
    absorb_bias: bool,
    replaced: tuple[str, ...],
) -> tuple[list[EqualizedPair], int]:
    store: dict[tuple[str, str], np.ndarray] = {}
    weights = [_Weights(c, store) for c in chains]
    before = [_ratio(_out_ranges(c, w)) for c, w in zip(chains, weights, strict=True)]
    total = [np.ones_like(_out_ranges(c, w)) for c, w in zip(chains, weights, strict=True)]
    frozen = [np.zeros(t.shape, dtype=bool) for t in total]
    # ReLU6 kept: a channel already clipped stays at scale 1; the others may shrink freely but
    # grow only until their largest pre-activation on the images reaches 6 (ReLU6 stays exact).
    floors = [np.zeros(t.shape) for t in total]
    for i, chain in enumerate(chains):
        if chain.relu6 is not None and chain.relu6.name not in replaced:
            hi = stats[chain.first.name][1]
            frozen[i] = hi >= 6.0
            floors[i] = hi / 6.0
    sweeps = 0
    for sweeps in range(1, iterations + 1):  # noqa: B007 (the count is reported)
        largest = 0.0
        for i, chain in enumerate(chains):
            w = weights[i]
            r1, r2 = _out_ranges(chain, w), _in_ranges(chain, w)
            s = np.ones_like(r1)
            live = (r1 > 0) & (r2 > 0)
            s[live] = np.sqrt(r1[live] * r2[live]) / r2[live]
            wanted = np.maximum(total[i] * s, floors[i])
            wanted[frozen[i]] = 1.0
            s = wanted / total[i]
            total[i] = wanted
            _scale(chain, w, s)
            largest = max(largest, float(np.max(np.abs(np.log(s)))) if s.size else 0.0)
        if largest < CONVERGED:
            break
    absorbed = [0] * len(chains)
    if absorb_bias:
        for i, chain in enumerate(chains):
            if chain.first.name not in stats or not chain.absorb_ok or "b2" not in weights[i]:
                continue
            if chain.bn is None and "b1" not in weights[i]:
                continue
            if chain.bn is not None and "beta" not in weights[i]:
                continue
            low = stats[chain.first.name][0] / total[i]
            # a clipped ReLU6 channel is not shifted: relu6(z - c) != relu6(z) - c above 6
            c = np.where((low > 0) & ~frozen[i], low, 0.0)
            if np.any(c > 0):
                _absorb(chain, weights[i], c)
                absorbed[i] = int(np.count_nonzero(c))
    _write_all(model, store)
    pairs = []
    for i, chain in enumerate(chains):
        kind = "unclipped" if chain.relu6 is not None else ""
        if any(x.name in replaced for x in [chain.first, *chain.between]):
            kind = "replaced"
        pairs.append(
            EqualizedPair(
                first=chain.first.name,
                second=chain.second.name,
                between=tuple(x.name for x in ([chain.bn] if chain.bn else []) + chain.between),
                channels=int(total[i].size),
                range_ratio_before=before[i],
                range_ratio_after=_ratio(_out_ranges(chain, weights[i])),
                relu6=kind,
                frozen_channels=int(np.count_nonzero(frozen[i])),
                bias_absorbed_channels=absorbed[i],
            )
        )
    return pairs, sweeps


# --- what the images say -------------------------------------------------------------------


def _pre_activation_stats(
    model: Any, chains: list[_Chain], images: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per chain, the per-channel min and max of A's output after its batch norm (the tensor
    the first activation sees), over the images. With a fused ReLU it is taken after the ReLU:
    where that min is > 0 it equals the pre-activation min, the only case bias absorption uses."""
    import keras

    taps = {}
    for chain in chains:
        taps[chain.first.name] = chain.bn.output if chain.bn is not None else chain.first.output
    names = list(taps)
    probe = keras.Model(_inputs(model), [taps[n] for n in names])
    mins: dict[str, np.ndarray] = {}
    maxs: dict[str, np.ndarray] = {}
    for start in range(0, len(images), 64):
        outs = probe(images[start : start + 64], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for n, out in zip(names, outs, strict=True):
            arr = np.asarray(out, dtype=np.float64)
            axes = tuple(range(arr.ndim - 1))
            lo, hi = arr.min(axis=axes), arr.max(axis=axes)
            mins[n] = np.minimum(mins[n], lo) if n in mins else lo
            maxs[n] = np.maximum(maxs[n], hi) if n in maxs else hi
    return {n: (mins[n], maxs[n]) for n in names}


def _activation_ratios(model: Any, chains: list[_Chain], images: np.ndarray) -> dict[str, float]:
    """Per chain, max / median over channels of the largest |activation| B receives."""
    import keras

    names = [c.first.name for c in chains]
    probe = keras.Model(_inputs(model), [c.second.input for c in chains])
    peaks: dict[str, np.ndarray] = {}
    for start in range(0, len(images), 64):
        outs = probe(images[start : start + 64], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for n, out in zip(names, outs, strict=True):
            arr = np.abs(np.asarray(out, dtype=np.float64))
            peak = arr.max(axis=tuple(range(arr.ndim - 1)))
            peaks[n] = np.maximum(peaks[n], peak) if n in peaks else peak
    return {n: _ratio(p) for n, p in peaks.items()}


def _with_activation(
    pair: EqualizedPair, before: float | None, after: float | None
) -> EqualizedPair:
    return replace(pair, activation_ratio_before=before, activation_ratio_after=after)


def _predict(model: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Every output value of the model per image, as float64 (first output's last axis last)."""
    chunks = []
    for start in range(0, len(images), batch_size):
        out = model(images[start : start + batch_size], training=False)
        outs = out if isinstance(out, (list, tuple)) else [out]
        chunks.append(np.asarray(outs[0], dtype=np.float64))
    return np.concatenate(chunks).reshape(len(images), -1)


def _inputs(model: Any) -> Any:
    """The model's input tensor (a list only for several inputs), as Keras expects it back."""
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs
