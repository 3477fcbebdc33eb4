"""The fix ladder: the derived variants worth trying for a variant below the bar, cheapest
first, from the causes its diagnosis named.

1. equalize: the Keras model cross-layer equalized, quantized as the parent is (`int8:eq`):
   all-int8, same size and speed;
2. bias correction: not built yet (the ladder says so instead of offering it);
3. int16_activations: 16-bit activations for each culprit chain (conv -> pass-through ops ->
   conv) on the quantizer backend (`int8_q:int16=...`): integer-only, a little larger, and on
   CPU it runs on reference kernels (no XNNPACK path), about 60x slower;
4. weight_only: the culprit op's weights int8, its activations and compute float, on the
   quantizer backend (`int8_q:wo=...`): not integer-only;
5. keep_float: the measured sensitivity scan and greedy walk (core.engine.fixes.keep_float),
   the remedy that leaves integer-only targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from core.reporting.sections.diagnosis import VariantCauses
from core.types import Backend, Mode, VariantSpec

INT16_NOTE = (
    "16-bit activations have no XNNPACK kernels: on CPU they run on reference kernels, and few "
    "accelerators run them"
)
WEIGHT_ONLY_NOTE = (
    "the op keeps int8 weights and computes in float: integer-only targets cannot run it"
)
NOT_BUILT = {"bias_correction": "bias correction is not built in this version"}


@dataclass(frozen=True)
class Rung:
    """One step of the ladder: the variant to make (None when skipped, with `reason`)."""

    kind: str
    spec: VariantSpec | None
    fix: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    note: str | None = None
    integer_only: bool = True  # whether the rung leaves an integer-only parent integer-only


def ladder(spec: VariantSpec, causes: VariantCauses | None) -> list[Rung]:
    """The rungs for `spec` before keep_float (which the search walks itself), cheapest first.

    Equalization is offered whenever the parent is fully quantized (the rung itself finds out
    whether layers pair up, and skips with the reason when not); 16-bit activations for each
    chain a cause names them for.
    """
    rungs: list[Rung] = []
    named = () if causes is None else causes.causes
    wanted = {fix for c in named for fix in c.fixes}
    if spec.mode is Mode.INT8 and not spec.equalized:
        rungs.append(Rung("equalize", replace(spec, equalized=True), {"kind": "equalize"}))
    else:
        rungs.append(Rung("equalize", None, {"kind": "equalize"}, "equalization applies to int8"))
    if "bias_correction" in wanted:
        rungs.append(
            Rung("bias_correction", None, {"kind": "bias_correction"}, NOT_BUILT["bias_correction"])
        )
    # Keras layers only: "(model input)" and "(model output)" name no layer a recipe can match.
    chains = [
        chain
        for c in named
        if "int16_activations" in c.fixes
        and (chain := tuple(n for n in c.layers if not n.startswith("(")))
    ]
    if spec.mode is not Mode.INT8:
        reason = "16-bit activations apply to int8 variants"
        rungs.append(Rung("int16_activations", None, {"kind": "int16_activations"}, reason))
    elif not chains:
        reason = "no cause names a chain whose activations need 16 bits"
        rungs.append(Rung("int16_activations", None, {"kind": "int16_activations"}, reason))
    for chain in dict.fromkeys(chains):
        derived = replace(
            spec.without_overrides(), backend=Backend.QUANTIZER, int16_layers=tuple(sorted(chain))
        )
        fix = {"kind": "int16_activations", "layers": list(chain)}
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
        derived = replace(
            spec.without_overrides(), backend=Backend.QUANTIZER, weight_only_layers=(layer,)
        )
        fix = {"kind": "weight_only", "layers": [layer]}
        rungs.append(Rung("weight_only", derived, fix, note=WEIGHT_ONLY_NOTE, integer_only=False))
    return rungs
