"""The fix page's reading of a run: per diagnosed variant, its causes (report.json's
`diagnosis.causes`) and, per cause, the ladder of fixes that apply, cheapest first, each with
the derived variant that tried it (if any) and its change against the parent.

Pure: it reads the typed run model and never converts anything. A rung is "tried" when the run
holds a variant derived from the parent with that fix: its `fix` (`{"kind", "layers"}`) when
the variant records one, else, for the two fixes a variant name spells, its layers kept in
float (`:keep=`) or given 16-bit activations (`:int16=`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.reporting.runmodel import Variant

# Cheapest first, as core.engine.causes orders them (the web server does not import the engine).
FIX_ORDER = ("equalize", "bias_correction", "int16_activations", "weight_only", "keep_float")
FIX_TITLE = {
    "equalize": "Cross-layer equalization",
    "bias_correction": "Bias correction",
    "int16_activations": "16-bit activations",
    "weight_only": "Weight-only (dynamic range)",
    "keep_float": "Keep in float",
}
# What each fix does to an integer-only target, before a variant exists to check: equalization
# and bias correction edit float weights and quantize as usual; 16-bit activations stay integer
# (int16 x int8 kernels); weight-only and float layers compute in float.
EXPECTED_INTEGER_ONLY = {
    "equalize": True,
    "bias_correction": True,
    "int16_activations": True,
    "weight_only": False,
    "keep_float": False,
}
FIX_NOTE = {
    "equalize": "rescales channel pairs in the float model (the same function), then quantizes "
    "as usual: same size and speed",
    "bias_correction": "absorbs the mean quantization error into the biases",
    "int16_activations": "the chain's activations at 16 bits: runs on reference kernels on CPU "
    "(much slower) and on few accelerators",
    "weight_only": "int8 weights, float activations and compute",
    "keep_float": "the layers stay float32: larger and slower, not integer-only",
}


@dataclass(frozen=True)
class Rung:
    """One fix for one cause, and the variant that tried it, if the run holds one."""

    kind: str
    layers: tuple[str, ...]
    variant: str | None = None  # the derived variant's name, when tried
    status: str | None = None  # its status (done, failed, pending, ...)
    error: str | None = None
    agreement_pct: float | None = None
    n: int | None = None
    agreement_delta_pts: float | None = None  # against the parent, on the same images
    size_bytes: int | None = None
    bytes_delta: int | None = None
    latency_p50_ms: float | None = None
    latency_delta_ms: float | None = None
    integer_only: bool | None = None  # as measured on the variant's .tflite (None: unknown)
    integer_only_expected: bool | None = None  # what the fix keeps, before it is tried

    @property
    def title(self) -> str:
        return FIX_TITLE.get(self.kind, self.kind)

    @property
    def tried(self) -> bool:
        return self.variant is not None


@dataclass(frozen=True)
class CauseLadder:
    """One named cause (the report's dict, as written by the diagnosis) and its rungs."""

    cause: Mapping[str, Any]
    rungs: tuple[Rung, ...]

    @property
    def words(self) -> str:
        return str(self.cause.get("words") or self.cause.get("cause") or "")

    @property
    def evidence(self) -> Mapping[str, Any]:
        evidence = self.cause.get("evidence")
        return evidence if isinstance(evidence, Mapping) else {}


def rung_layers(cause: Mapping[str, Any], kind: str) -> tuple[str, ...]:
    """The layers a fix touches for a cause: equalization pairs the chain's first and last
    weighted layers; weight-only quantizes the culprit op; 16-bit activations and keep-in-float
    take the whole chain (conv -> pass-through ops -> conv), since the damaged tensor sits
    between them and stays int8 unless every op that writes or passes it is covered."""
    chain = tuple(str(name) for name in cause.get("layers") or ()) or (str(cause["layer"]),)
    if kind == "equalize":
        return (chain[0], chain[-1]) if len(chain) > 1 else chain
    if kind in ("weight_only", "bias_correction"):
        return (str(cause.get("layer") or chain[0]),)
    return chain


def fix_of(variant: Variant) -> tuple[str, tuple[str, ...]] | None:
    """(kind, layers) of the fix a derived variant applies: its recorded `fix`, else what its
    name spells (layers kept in float, or given 16-bit activations)."""
    fix = variant.extra.get("fix")
    if isinstance(fix, Mapping) and fix.get("kind"):
        return str(fix["kind"]), tuple(str(name) for name in fix.get("layers") or ())
    identity = variant.identity
    if identity.int16_layers and not identity.float_layers:
        return "int16_activations", tuple(identity.int16_layers)
    if identity.float_layers and not identity.int16_layers:
        return "keep_float", tuple(identity.float_layers)
    return None


def _p50(variant: Variant) -> float | None:
    latency = variant.result.latency_ms or {}
    value = latency.get("p50")
    return float(value) if value is not None else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def rung_of(parent: Variant, kind: str, layers: tuple[str, ...], tried: Variant | None) -> Rung:
    """The rung with its numbers against the parent (None where either side lacks one)."""
    expected = EXPECTED_INTEGER_ONLY.get(kind)
    if tried is None:
        return Rung(kind=kind, layers=layers, integer_only_expected=expected)
    r, p = tried.result, parent.result
    integer_only = tried.extra.get("integer_only")
    same_images = r.n is not None and r.n == p.n
    return Rung(
        kind=kind,
        layers=layers,
        variant=tried.name,
        status=r.status,
        error=r.error,
        agreement_pct=r.top1_agreement_pct,
        n=r.n,
        agreement_delta_pts=(
            _minus(r.top1_agreement_pct, p.top1_agreement_pct) if same_images else None
        ),
        size_bytes=r.size_bytes,
        bytes_delta=(
            None if r.size_bytes is None or p.size_bytes is None else r.size_bytes - p.size_bytes
        ),
        latency_p50_ms=_p50(tried),
        latency_delta_ms=_minus(_p50(tried), _p50(parent)),
        integer_only=integer_only if isinstance(integer_only, bool) else None,
        integer_only_expected=expected,
    )


def ladders(parent: Variant, variants: Sequence[Variant]) -> list[CauseLadder]:
    """Per cause of `parent` (report order), its rungs cheapest first, each matched to the
    variant derived from `parent` that applied that fix to those layers."""
    diagnosis = parent.extra.get("diagnosis") or {}
    derived: dict[tuple[str, frozenset[str]], Variant] = {}
    for v in variants:
        fix = fix_of(v) if v.identity.parent == parent.name else None
        if fix is not None:
            derived.setdefault((fix[0], frozenset(fix[1])), v)
    out = []
    for cause in diagnosis.get("causes") or []:
        kinds = [k for k in FIX_ORDER if k in (cause.get("fixes") or [])]
        kinds += [k for k in cause.get("fixes") or [] if k not in kinds]
        rungs = []
        for kind in kinds:
            layers = rung_layers(cause, kind)
            rungs.append(rung_of(parent, kind, layers, derived.get((kind, frozenset(layers)))))
        out.append(CauseLadder(cause=cause, rungs=tuple(rungs)))
    return out


def other_derived(
    parent: Variant, variants: Sequence[Variant], shown: Sequence[CauseLadder]
) -> list[Rung]:
    """Variants derived from `parent` that no rung above names (an auto-fix's pick, a manual
    re-score): the same numbers, so everything tried sits in one table."""
    named = {r.variant for ladder in shown for r in ladder.rungs if r.variant}
    out = []
    for v in variants:
        if v.identity.parent != parent.name or v.name in named:
            continue
        kind, layers = fix_of(v) or ("derived", ())
        out.append(rung_of(parent, kind, layers, v))
    return out
