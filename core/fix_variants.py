"""The fixes of the fix ladder, cheapest first, and the variant each makes of a parent: the one
naming rule the ladder (core.engine.fixes.ladder), the re-score (core.jobs.rescore) and the
fix page (core.reporting.fix_ladder) all use.

It lives outside core/engine/ so the web server can read it without loading TensorFlow. A new
fix kind is one entry in FIX_ORDER and KEEPS_INTEGER_ONLY, and one function in `_MAKERS` (or
none, while no variant name spells it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Literal

from core.errors import QuantLensError
from core.types import Backend, VariantSpec

FixKind = Literal["equalize", "bias_correction", "int16_activations", "weight_only", "keep_float"]
# Cheapest first: equalization keeps the model all-int8 at the same size and speed; bias
# correction too; 16-bit activations grow the model a little and leave the fast kernels;
# weight-only and float layers leave integer-only targets.
FIX_ORDER: tuple[FixKind, ...] = (
    "equalize",
    "bias_correction",
    "int16_activations",
    "weight_only",
    "keep_float",
)
# Whether a fix leaves an integer-only parent integer-only: equalization and bias correction
# edit float weights and quantize as usual; 16-bit activations stay integer (int16 x int8
# kernels); weight-only and float layers compute in float.
KEEPS_INTEGER_ONLY: dict[str, bool] = {
    "equalize": True,
    "bias_correction": True,
    "int16_activations": True,
    "weight_only": False,
    "keep_float": False,
}


def _equalized(parent: VariantSpec, layers: tuple[str, ...]) -> VariantSpec:
    return replace(parent, equalized=True)  # the pairs are the model's, not a name's


def _bias_corrected(parent: VariantSpec, layers: tuple[str, ...]) -> VariantSpec:
    if any(name.startswith("(") for name in layers):  # "(model output)": no Keras layer name
        raise QuantLensError(
            f"{', '.join(layers)}: bias correction edits named Keras layers; the model's ends "
            "have no name to correct"
        )
    return replace(parent, bias_corrected_layers=layers)


def _int16(parent: VariantSpec, layers: tuple[str, ...]) -> VariantSpec:
    # On the quantizer backend: the converter has no per-layer 16-bit activations.
    return replace(parent.without_overrides(), backend=Backend.QUANTIZER, int16_layers=layers)


def _weight_only(parent: VariantSpec, layers: tuple[str, ...]) -> VariantSpec:
    return replace(parent.without_overrides(), backend=Backend.QUANTIZER, weight_only_layers=layers)


def _keep_float(parent: VariantSpec, layers: tuple[str, ...]) -> VariantSpec:
    return replace(parent, float_layers=layers)


_MAKERS: dict[str, Callable[[VariantSpec, tuple[str, ...]], VariantSpec]] = {
    "equalize": _equalized,
    "bias_correction": _bias_corrected,
    "int16_activations": _int16,
    "weight_only": _weight_only,
    "keep_float": _keep_float,
}


def fixed_spec(parent: VariantSpec, kind: str, layers: Sequence[str] = ()) -> VariantSpec:
    """The variant the fix `kind` makes of `parent`, touching `layers` (sorted, so one set of
    layers has one name; equalization ignores them).

    Raises:
        QuantLensError: no variant name spells this fix, or `parent` cannot take it (its mode
            or backend), in one line.
    """
    make = _MAKERS.get(kind)
    if make is None:
        raise QuantLensError(f"{kind} makes no variant in this version; choose another fix")
    derived = make(parent, tuple(sorted(dict.fromkeys(layers))))
    derived.check()
    return derived


def fix_variant_name(parent: str, kind: str, layers: Sequence[str] = ()) -> str | None:
    """The name of the variant the fix makes of the variant called `parent`; None for a fix no
    variant name spells or a parent it does not fit."""
    try:
        return fixed_spec(VariantSpec.parse(parent), kind, layers).name
    except (QuantLensError, ValueError):  # a name the vocabulary refuses: no variant
        return None
