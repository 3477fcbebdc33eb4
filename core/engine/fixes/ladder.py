"""The fix ladder: the derived variants worth trying for a variant below the bar, cheapest
first, from the causes its diagnosis named.

1. equalize: the Keras model cross-layer equalized, quantized as the parent is (`int8:eq`):
   all-int8, same size and speed;
2. bias_correction: the biases of the layers whose int8 error a cause found biased absorb
   that error (core.engine.fixes.bias_correct, `int8:bc=...`): all-int8, same size and speed;
3. int16_activations: 16-bit activations for each culprit chain (conv -> pass-through ops ->
   conv) on the quantizer backend (`int8_q:int16=...`): integer-only, a little larger, and on
   CPU it runs on reference kernels (no XNNPACK path), about 60x slower;
4. weight_only: the culprit op's weights int8, its activations and compute float, on the
   quantizer backend (`int8_q:wo=...`): not integer-only;
5. keep_float: the measured sensitivity scan and greedy walk (core.engine.fixes.keep_float),
   the remedy that leaves integer-only targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.fix_variants import KEEPS_INTEGER_ONLY, fixed_spec
from core.reporting.sections.diagnosis import RootCause, VariantCauses
from core.types import Mode, VariantSpec

INT16_NOTE = (
    "16-bit activations have no XNNPACK kernels: on CPU they run on reference kernels, and few "
    "accelerators run them"
)
WEIGHT_ONLY_NOTE = (
    "the op keeps int8 weights and computes in float: integer-only targets cannot run it"
)
BIAS_NOTE = (
    "the float model is changed on purpose (its biases carry the opposite of the int8 error); "
    "the fix records by how much"
)


@dataclass(frozen=True)
class Rung:
    """One step of the ladder: the variant to make (None when skipped, with `reason`), named by
    the one rule core.fix_variants.fixed_spec."""

    kind: str
    spec: VariantSpec | None
    fix: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    note: str | None = None
    integer_only: bool = True  # whether the rung leaves an integer-only parent integer-only


def ladder(spec: VariantSpec, causes: VariantCauses | None) -> list[Rung]:
    """The rungs for `spec` before keep_float (which the search walks itself), cheapest first.

    Equalization is offered whenever the parent is fully quantized (the rung itself finds out
    whether layers pair up, and skips with the reason when not); bias correction for the layers
    a `biased_error` cause names; 16-bit activations for each chain a cause names them for.
    """
    rungs: list[Rung] = []
    named = () if causes is None else causes.causes
    if spec.mode is Mode.INT8 and not spec.equalized:
        rungs.append(Rung("equalize", fixed_spec(spec, "equalize"), {"kind": "equalize"}))
    else:
        rungs.append(Rung("equalize", None, {"kind": "equalize"}, "equalization applies to int8"))
    rungs.extend(_bias_correction(spec, named))
    chains = int16_layer_sets(named)
    if spec.mode is not Mode.INT8:
        reason = "16-bit activations apply to int8 variants"
        rungs.append(Rung("int16_activations", None, {"kind": "int16_activations"}, reason))
    elif not chains:
        reason = "no cause names a chain whose activations need 16 bits"
        rungs.append(Rung("int16_activations", None, {"kind": "int16_activations"}, reason))
    for chain in chains:
        fix = {"kind": "int16_activations", "layers": list(chain)}
        derived = fixed_spec(spec, "int16_activations", chain)
        rungs.append(Rung("int16_activations", derived, fix, note=INT16_NOTE))
    culprits = [
        c.layer
        for c in named
        if "weight_only" in c.fixes and c.layer and not c.layer.startswith("(")
    ]
    if culprits and spec.mode is not Mode.INT8:
        reason = "weight-only quantization of one op applies to int8 variants"
        rungs.append(Rung("weight_only", None, {"kind": "weight_only"}, reason))
    for layer in dict.fromkeys(culprits):
        fix = {"kind": "weight_only", "layers": [layer]}
        derived = fixed_spec(spec, "weight_only", (layer,))
        rungs.append(
            Rung(
                "weight_only",
                derived,
                fix,
                note=WEIGHT_ONLY_NOTE,
                integer_only=KEEPS_INTEGER_ONLY["weight_only"],
            )
        )
    return rungs


def int16_layer_sets(causes: Sequence[RootCause]) -> list[tuple[str, ...]]:
    """The layer sets the 16-bit rung tries, cheapest first (each is one candidate).

    A chain a cause names (conv -> pass-through ops -> conv) is tried whole: its damaged tensor
    stays int8 unless every op that writes or passes it is covered. A diffuse cause names no
    chain, only the suspects ranked by their error on the flipped images (up to five, however
    few images flipped): the worst suspect alone comes first, one op on reference kernels
    instead of five, and all of them only after it.
    """
    sets: list[tuple[str, ...]] = []
    for c in causes:
        # Keras layers only: "(model input)" and "(model output)" name no layer a recipe matches.
        layers = tuple(n for n in c.layers if not n.startswith("("))
        if "int16_activations" not in c.fixes or not layers:
            continue
        if c.cause == "diffuse" and len(layers) > 1:
            sets.append(layers[:1])
        sets.append(layers)
    return list(dict.fromkeys(sets))


def _bias_correction(spec: VariantSpec, named: Sequence[RootCause]) -> list[Rung]:
    """One rung correcting every layer a cause found biased (the rung corrects them in graph
    order); none when no cause asks for it."""
    if not any("bias_correction" in c.fixes for c in named):
        return []
    # Keras layers only: "(model output)" names no layer whose bias the rung can find.
    layers = sorted(
        {
            c.layer
            for c in named
            if "bias_correction" in c.fixes and c.layer and not c.layer.startswith("(")
        }
    )
    fix: dict[str, Any] = {"kind": "bias_correction"}
    if spec.mode is not Mode.INT8 or spec.has_overrides:
        return [
            Rung("bias_correction", None, fix, "bias correction applies to a plain int8 variant")
        ]
    if not layers:
        reason = "the biased op is the model's output op, which no Keras layer name reaches"
        return [Rung("bias_correction", None, fix, reason)]
    derived = fixed_spec(spec, "bias_correction", layers)
    return [Rung("bias_correction", derived, {**fix, "layers": layers}, note=BIAS_NOTE)]
