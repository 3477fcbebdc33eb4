"""The fix page's reading of a run: per diagnosed variant, its causes (report.json's
`diagnosis.causes`) and, per cause, the ladder of fixes that apply, cheapest first, each with
the derived variant that tried it (if any) and its change against the parent.

Pure: it reads the typed run model and never converts anything. Each rung is the variant name
its fix makes (`int8:eq`, `int8_q:int16=conv2+conv3+pool2`, `int8:keep=...`), by the one
naming rule the fix ladder and the re-score use (core.fix_variants); a rung is "tried" when
the run holds that variant, and "measured" when only the auto-fix search measured it (its
`auto_fix.search` candidate, on the search's images).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.fix_variants import FIX_ORDER, KEEPS_INTEGER_ONLY, fix_variant_name
from core.reporting.sections.diagnosis import RootCause
from core.reporting.sections.fixes import FixCandidate
from core.reporting.sections.variant import Variant
from core.types import VariantSpec

FIX_TITLE = {
    "equalize": "Cross-layer equalization",
    "bias_correction": "Bias correction",
    "int16_activations": "16-bit activations",
    "weight_only": "Weight-only (dynamic range)",
    "keep_float": "Keep in float",
}
FIX_NOTE = {
    "equalize": "rescales channel pairs in the float model (the same function), then quantizes "
    "as usual: same size and speed",
    "bias_correction": "the layer's float bias absorbs its mean int8 error (the float model "
    "changes on purpose): same size and speed",
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
    name: str | None = None  # the variant name the fix makes (None: the fix has no variant)
    searched: bool = False  # the numbers are the auto-fix search's, on its own images
    note: str | None = None

    @property
    def title(self) -> str:
        return FIX_TITLE.get(self.kind, self.kind)

    @property
    def tried(self) -> bool:
        return self.variant is not None


@dataclass(frozen=True)
class CauseLadder:
    """One named cause (report.json's `diagnosis.causes`, typed) and its rungs."""

    cause: RootCause
    rungs: tuple[Rung, ...]

    @property
    def words(self) -> str:
        return self.cause.words or self.cause.cause

    @property
    def evidence(self) -> Mapping[str, Any]:
        return self.cause.evidence


def rung_layers(cause: RootCause, kind: str) -> tuple[str, ...]:
    """The layers a fix touches for a cause: equalization pairs the chain's first and last
    weighted layers; weight-only quantizes the culprit op; 16-bit activations and keep-in-float
    take the whole chain (conv -> pass-through ops -> conv), since the damaged tensor sits
    between them and stays int8 unless every op that writes or passes it is covered."""
    chain = cause.layers or (cause.layer,)
    if kind == "equalize":
        return (chain[0], chain[-1]) if len(chain) > 1 else chain
    if kind in ("weight_only", "bias_correction"):
        return (cause.layer or chain[0],)
    return chain


def fix_of(variant: Variant) -> tuple[str, tuple[str, ...]] | None:
    """(kind, layers) of the fix a derived variant's name spells."""
    identity = variant.identity
    if identity.bias_corrected_layers:  # a plain parent only (VariantSpec.check)
        return "bias_correction", tuple(identity.bias_corrected_layers)
    if identity.equalized and not (identity.float_layers or identity.int16_layers):
        return "equalize", ()
    if identity.int16_layers and not identity.float_layers:
        return "int16_activations", tuple(identity.int16_layers)
    if identity.float_layers and not identity.int16_layers:
        return "keep_float", tuple(identity.float_layers)
    return None


def _integer_only(variant: Variant) -> bool | None:
    """Whether the variant's own `.tflite` computes in integers only, as its deployability
    pre-flight read it (core.engine.flatbuffer.integer_only, the one check), whoever derived
    it (auto-fix or a re-score); None until the pre-flight ran."""
    found = variant.result.deployability
    return None if found is None else found.integer_only.integer_only


def _p50(variant: Variant) -> float | None:
    latency = variant.result.latency_ms or {}
    value = latency.get("p50")
    return float(value) if value is not None else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def rung_of(
    parent: Variant,
    kind: str,
    layers: tuple[str, ...],
    tried: Variant | None,
    searched: FixCandidate | None = None,
) -> Rung:
    """The rung with its numbers against the parent (None where either side lacks one): the
    run's variant when it holds one, else the search's measurement."""
    expected = KEEPS_INTEGER_ONLY.get(kind)
    name = tried.name if tried is not None else fix_variant_name(parent.name, kind, layers)
    if tried is None and searched is not None:
        search = parent.fix_search
        base = search.parent_agreement_pct if search is not None else None
        return Rung(
            kind=kind,
            layers=layers,
            name=searched.variant or name,
            status=searched.status,
            error=searched.reason,
            agreement_pct=searched.agreement_pct,
            n=searched.n,
            agreement_delta_pts=_minus(searched.agreement_pct, base),
            size_bytes=searched.size_bytes,
            bytes_delta=(
                None
                if searched.size_bytes is None or parent.result.size_bytes is None
                else searched.size_bytes - parent.result.size_bytes
            ),
            latency_p50_ms=searched.p50_ms,
            integer_only=searched.integer_only,
            integer_only_expected=expected,
            searched=True,
            note=searched.note,
        )
    if tried is None:
        return Rung(kind=kind, layers=layers, integer_only_expected=expected, name=name)
    r, p = tried.result, parent.result
    integer_only = _integer_only(tried)
    if integer_only is None and searched is not None:
        integer_only = searched.integer_only  # read from the same variant's .tflite by the search
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
        integer_only=integer_only,
        integer_only_expected=expected,
        name=tried.name,
    )


def _searched(parent: Variant, kind: str, name: str | None) -> FixCandidate | None:
    """The search's candidate for a rung: the same variant name, else (a rung the search
    skipped, with its reason) the same kind without a variant."""
    search = parent.fix_search
    if search is None:
        return None
    for c in search.candidates:
        if name is not None and c.variant == name:
            return c
    return next((c for c in search.candidates if c.kind == kind and c.variant is None), None)


def _best_keep_float(parent: Variant) -> FixCandidate | None:
    """The keep-float candidate the search measured best (its walk's end), if any."""
    search = parent.fix_search
    walked = [
        c
        for c in (search.candidates if search is not None else ())
        if c.kind == "keep_float" and c.variant is not None and c.agreement_pct is not None
    ]
    return max(walked, key=lambda c: c.agreement_pct or 0.0, default=None)


def ladders(parent: Variant, variants: Sequence[Variant]) -> list[CauseLadder]:
    """Per cause of `parent` (report order), its rungs cheapest first, each matched to the
    run's variant of that name (derived from `parent`), else to the search's candidate."""
    causes = parent.causes
    if causes is None:
        return []
    derived = {v.name: v for v in variants if v.identity.parent == parent.name}
    out = []
    for cause in causes.causes:
        kinds: list[str] = [k for k in FIX_ORDER if k in cause.fixes]
        kinds += [k for k in cause.fixes if k not in kinds]
        rungs = []
        for kind in kinds:
            layers = rung_layers(cause, kind)
            name = fix_variant_name(parent.name, kind, layers)
            searched = _searched(parent, kind, name)
            if kind == "keep_float" and searched is None and name not in derived:
                # The search walks its own layer sets rather than the chain: show where its walk
                # got to, under those layers, rather than "not tried".
                walked = _best_keep_float(parent)
                if walked is not None and walked.variant is not None:
                    name = walked.variant
                    layers = VariantSpec.parse(name).float_layers
                    searched = walked
            tried = derived.get(name) if name is not None else None
            rungs.append(rung_of(parent, kind, layers, tried, searched))
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
