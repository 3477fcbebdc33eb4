"""One variant entry of report.json: a `VariantIdentity` (what was made) plus a `VariantResult`
(what it measured), with the parts later stages add (flips, deployability, flip hunt, causes,
fixes) typed in their own modules."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import QuantLensError
from core.reporting.sections.base import MappingView, as_read, jsonable, unknown_keys
from core.reporting.sections.deployability import Deployability
from core.reporting.sections.diagnosis import VariantCauses
from core.reporting.sections.fixes import FixSearch, HeldOutJudgement
from core.reporting.sections.flip_hunt import PerturbedAgreement
from core.reporting.sections.flips import FlipMatrix
from core.types import Backend, IOType, Mode, VariantSpec, VariantStatus

# A variant's `role`: chosen by the user and judged, or the float32 pivot QuantLens added itself
# to split the quantized variants' disagreements (evaluated like any variant, never judged).
ROLE_SELECTED = "selected"
ROLE_PIVOT = "pivot"


@dataclass(frozen=True)
class VariantIdentity(MappingView):
    """What a variant is: how its model was made, and why it is in the run.

    `name` is stored as written (report.json, pages and tables show it) and never re-derived.
    `file_id` names the variant's files (`<file_id>.tflite`, ...; DESIGN §10): the spec's
    `file_id` for a variant made now, the name for a report written before file ids (its
    files carry the name), and the name when built in code without one.
    `calibration_samples` / `calibration_seed` are None when the run's options apply (every
    variant of one run shares them today); `parent` names the variant this one derives from.
    """

    name: str
    mode: Mode
    file_id: str = ""
    io_type: IOType | None = None
    allow_select_tf_ops: bool = False
    backend: Backend = Backend.CONVERTER
    float_layers: tuple[str, ...] = ()
    int16_layers: tuple[str, ...] = ()
    weight_only_layers: tuple[str, ...] = ()
    equalized: bool = False
    bias_corrected_layers: tuple[str, ...] = ()
    role: str = ROLE_SELECTED
    parent: str | None = None
    calibration_samples: int | None = None
    calibration_seed: int | None = None
    # The keys of the entry this was read from (None: built in code); see `as_read`.
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.file_id:  # a report written before file ids: its files carry the name
            object.__setattr__(self, "file_id", self.name)

    # Keys of a variant entry that belong to its identity, in report.json order.
    KEYS = (
        "name",
        "file_id",
        "mode",
        "io_type",
        "allow_select_tf_ops",
        "backend",
        "float_layers",
        "int16_layers",
        "weight_only_layers",
        "equalized",
        "bias_corrected_layers",
        "parent",
        "calibration_samples",
        "calibration_seed",
        "role",
    )

    @classmethod
    def from_spec(cls, spec: VariantSpec, *, role: str = ROLE_SELECTED) -> VariantIdentity:
        """The identity of a variant the job asks for."""
        return cls(
            name=spec.name,
            file_id=spec.file_id,
            mode=spec.mode,
            io_type=spec.io_type,
            allow_select_tf_ops=spec.allow_select_tf_ops,
            backend=spec.backend,
            float_layers=spec.float_layers,
            int16_layers=spec.int16_layers,
            weight_only_layers=spec.weight_only_layers,
            equalized=spec.equalized,
            bias_corrected_layers=spec.bias_corrected_layers,
            role=role,
        )

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> VariantIdentity:
        """Read the identity keys of a variant entry (schema 1 or 2)."""
        mode = Mode(str(entry["mode"]))
        # The only place a missing name is filled in: the first reports had no `name` key,
        # and then the mode was the variant's name.
        name = str(entry["name"]) if entry.get("name") else str(mode)
        io_type = entry.get("io_type")
        return cls(
            name=name,
            file_id=str(entry.get("file_id") or ""),
            mode=mode,
            io_type=None if io_type is None else IOType(str(io_type)),
            allow_select_tf_ops=bool(entry.get("allow_select_tf_ops", False)),
            # Reports written before the quantizer backend existed were all the converter's.
            backend=Backend(str(entry.get("backend") or Backend.CONVERTER)),
            float_layers=tuple(str(x) for x in entry.get("float_layers") or ()),
            int16_layers=tuple(str(x) for x in entry.get("int16_layers") or ()),
            weight_only_layers=tuple(str(x) for x in entry.get("weight_only_layers") or ()),
            equalized=bool(entry.get("equalized", False)),
            bias_corrected_layers=tuple(str(x) for x in entry.get("bias_corrected_layers") or ()),
            role=str(entry.get("role") or ROLE_SELECTED),
            parent=entry.get("parent"),
            calibration_samples=entry.get("calibration_samples"),
            calibration_seed=entry.get("calibration_seed"),
            present=frozenset(entry),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        # On every variant made now; a report read without file ids keeps its keys when the
        # names still name its files (a rewrite changes nothing a schema-1 reader sees).
        if self.present is None or "file_id" in self.present or self.file_id != self.name:
            d["file_id"] = self.file_id
        d |= {
            "mode": str(self.mode),
            "io_type": None if self.io_type is None else str(self.io_type),
            "allow_select_tf_ops": self.allow_select_tf_ops,
            "backend": str(self.backend),
            "float_layers": list(self.float_layers),
            "int16_layers": list(self.int16_layers),
        }
        # Written only when set, so other variants' entries stay as they were.
        if self.weight_only_layers:
            d["weight_only_layers"] = list(self.weight_only_layers)
        if self.equalized:
            d["equalized"] = True
        if self.bias_corrected_layers:
            d["bias_corrected_layers"] = list(self.bias_corrected_layers)
        # Written only when set, so schema-1 content stays as it was.
        for key in ("parent", "calibration_samples", "calibration_seed"):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        d["role"] = self.role
        return as_read(self, d)

    @property
    def is_pivot(self) -> bool:
        """True for the float32 pivot QuantLens added itself: shown, never judged."""
        return self.role == ROLE_PIVOT

    @property
    def spec(self) -> VariantSpec:
        """The conversion this identity asks for."""
        return VariantSpec(
            mode=self.mode,
            io_type=self.io_type,
            allow_select_tf_ops=self.allow_select_tf_ops,
            backend=self.backend,
            float_layers=self.float_layers,
            int16_layers=self.int16_layers,
            weight_only_layers=self.weight_only_layers,
            equalized=self.equalized,
            bias_corrected_layers=self.bias_corrected_layers,
        )


@dataclass(frozen=True)
class VariantResult(MappingView):
    """What a variant measured: status, size, agreement, accuracy, latency and its verdict.

    Every metric is None until measured. Values are kept as report.json holds them (JSON
    lists become tuples; mappings stay mappings).
    """

    status: VariantStatus = VariantStatus.PENDING
    error: str | None = None
    size_bytes: int | None = None
    size_reduction_pct: float | None = None
    size_reduction_vs_float32_pct: float | None = None
    n: int | None = None
    top1_agreement_pct: float | None = None
    top1_agreement_ci95: tuple[float, float] | None = None
    k: int | None = None
    topk_agreement_pct: float | None = None
    disagreements: int | None = None
    reference_accuracy_pct: float | None = None
    tflite_accuracy_pct: float | None = None
    accuracy_delta_pct: float | None = None
    mcnemar_p: float | None = None
    max_abs_prob_delta: float | None = None
    mean_abs_top1_prob_delta: float | None = None
    mean_kl: float | None = None
    nan_outputs: int | None = None
    flip_matrix: FlipMatrix | None = None
    disagreement_split: Mapping[str, int] | None = None
    latency_ms: Mapping[str, Any] | None = None
    speedup_vs_reference: float | None = None  # vs the TensorFlow original (vs_original's value)
    # vs float32 TFLite on the same runtime, with its spread over paired timing blocks
    # (core.engine.stages.latency.speedup_entry); None before timing and in older reports.
    speedup: Mapping[str, Any] | None = None
    conversion_seconds: float | None = None
    conversion_cached: bool | None = None
    conversion_route: str | None = None
    select_tf_ops_used: tuple[str, ...] = ()
    softmax_applied: bool | None = None
    io: Mapping[str, Any] | None = None
    warnings: tuple[str, ...] = ()
    passed: bool | None = None
    verdict_reason: str | None = None
    n_needed: int | None = None
    # Written by later phases only when they have something to say (see `to_dict`).
    latency_warning: str | None = None
    latency_note: str | None = None
    stderr_tail: str | None = None
    # The deployability pre-flight (core.engine.stages.deploy); None until it ran.
    deployability: Deployability | None = None
    # The flip hunt (--perturb, core.engine.stages.perturb): one entry per perturbation.
    flip_hunt: tuple[PerturbedAgreement, ...] | None = None
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def keys_in_order(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "present")

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> VariantResult:
        """Read the result keys of a variant entry; missing keys are unmeasured (None)."""
        values = {k: entry[k] for k in cls.keys_in_order() if k in entry}
        if values.get("top1_agreement_ci95") is not None:
            values["top1_agreement_ci95"] = tuple(values["top1_agreement_ci95"])
        if values.get("flip_matrix") is not None:
            values["flip_matrix"] = FlipMatrix.from_json(values["flip_matrix"])
        if values.get("deployability") is not None:
            values["deployability"] = Deployability.from_json(values["deployability"])
        if values.get("flip_hunt") is not None:
            values["flip_hunt"] = tuple(
                p if isinstance(p, PerturbedAgreement) else PerturbedAgreement.from_dict(p)
                for p in values["flip_hunt"]
            )
        for key in ("select_tf_ops_used", "warnings"):
            values[key] = tuple(values.get(key) or ())
        values["status"] = VariantStatus(str(values.get("status") or VariantStatus.PENDING))
        return cls(**values, present=frozenset(entry))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for key in self.keys_in_order():
            value = getattr(self, key)
            if (
                key in ("latency_note", "stderr_tail", "speedup", "deployability", "flip_hunt")
                and value is None
            ):
                continue
            # The timing phase writes latency_ms and latency_warning together.
            if key == "latency_warning" and value is None and self.latency_ms is None:
                continue
            d[key] = jsonable(value)
        return as_read(self, d)

    @property
    def finished_ok(self) -> bool:
        """True when the variant ran to the end (status done), whatever its verdict."""
        return self.status == VariantStatus.DONE

    @property
    def p50_ms(self) -> float | None:
        """The median batch-1 latency in ms, once timed."""
        value = (self.latency_ms or {}).get("p50")
        return None if value is None else float(value)


@dataclass(frozen=True)
class Variant(MappingView):
    """One variant entry of report.json: identity, result, and any keys this model lacks."""

    identity: VariantIdentity
    result: VariantResult = field(default_factory=VariantResult)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> Variant:
        """Read one variant entry.

        Raises:
            QuantLensError: the entry has no mode, or a mode, backend or I/O type QuantLens
                does not know.
        """
        try:
            identity = VariantIdentity.from_dict(entry)
            result = VariantResult.from_dict(entry)
        except (KeyError, ValueError) as exc:
            raise QuantLensError(
                f"a variant entry of report.json is not readable ({exc!s}); re-run the job"
            ) from None
        known = VariantIdentity.KEYS + VariantResult.keys_in_order()
        return cls(identity, result, unknown_keys(entry, known))

    def to_dict(self) -> dict[str, Any]:
        return {**self.identity.to_dict(), **self.result.to_dict(), **dict(self.extra)}

    @property
    def name(self) -> str:
        """The variant's name, as stored: `int8`, `int8-uint8`, `int8_q:keep=conv2d`, ..."""
        return self.identity.name

    @property
    def file_id(self) -> str:
        """What the variant's files are named by (`rundir.variant_file`); see VariantIdentity."""
        return self.identity.file_id

    @property
    def mode(self) -> Mode:
        return self.identity.mode

    @property
    def status(self) -> VariantStatus:
        return self.result.status

    @property
    def is_pivot(self) -> bool:
        return self.identity.is_pivot

    @property
    def causes(self) -> VariantCauses | None:
        """The root causes its diagnosis named (`diagnosis.causes`); None when it was not
        diagnosed, or diagnosed before causes were named."""
        diagnosis = self.extra.get("diagnosis")
        if not isinstance(diagnosis, Mapping) or "causes" not in diagnosis:
            return None
        return VariantCauses.from_dict(diagnosis)

    @property
    def fix_search(self) -> FixSearch | None:
        """The fix ladder's search when auto-fix ran on this variant (`auto_fix.search`)."""
        search = (self.extra.get("auto_fix") or {}).get("search")
        return FixSearch.from_dict(search) if isinstance(search, Mapping) else None

    @property
    def held_out(self) -> HeldOutJudgement | None:
        """A derived variant's judgement on the images its search did not see."""
        value = self.extra.get("judged_on_held_out")
        return HeldOutJudgement.from_dict(value) if isinstance(value, Mapping) else None

    def with_result(self, **changes: Any) -> Variant:
        """A copy with some result fields changed (the object itself is frozen). A field set
        here is written even when it holds its default (`latency_warning` None beside a
        timing), as a key set in the entry's dict was."""
        result = dataclasses.replace(self.result, **changes)
        if result.present is not None:
            result = dataclasses.replace(result, present=result.present | changes.keys())
        return dataclasses.replace(self, result=result)
