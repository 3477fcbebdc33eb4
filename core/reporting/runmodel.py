"""The typed run model: report.json as frozen dataclasses, written and read in one place each.

A run is a `RunReport`; each of its variants is a `Variant`: a `VariantIdentity` (what was
made) plus a `VariantResult` (what it measured). `write_report` is the one function that
serialises report.json and `read_report` the one that reads it back, whatever its schema.

The sections a stage or a later process adds whole (`calibration`, `sweep`, `engine`,
`tracking`) are `Section`s: frozen dataclasses that the writer builds and `put_section` stores,
so no writer assembles their dicts by hand. Keys this model does not know (at the top, in a
variant or inside a section) are kept in `extra` and written back unchanged, so a reader never
drops what a newer writer stored.
Each object is also a read-only mapping over its report.json form (`variant["n"]`), so code
that reads report fields by key sees exactly what the file holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from core.errors import QuantLensError
from core.inputs import rundir
from core.types import (
    DEFAULT_MIN_AGREEMENT_PCT,
    Backend,
    IOType,
    Mode,
    VariantSpec,
    VariantStatus,
    short_name,
)

# 1: what QuantLens wrote before the typed model (`schema_version` 1, or none at all).
# 2: the same keys and values; a variant may add `parent`, `calibration_samples` and
#    `calibration_seed` to its identity.
# 3: a variant's `flip_matrix` is sparse, `{"classes": C, "cells": [[ref, tfl, count], ...]}`
#    (see `FlipMatrix`); schemas 1 and 2 hold the dense C x C rows.
SCHEMA_VERSION = 3

# A variant's `role`: chosen by the user and judged, or the float32 pivot QuantLens added itself
# to split the quantized variants' disagreements (evaluated like any variant, never judged).
ROLE_SELECTED = "selected"
ROLE_PIVOT = "pivot"

VERDICT_POINT = "point"


class _MappingView(Mapping[str, Any]):
    """Read-only `obj[key]` / `obj.get(key)` over the object's report.json form."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @cached_property
    def _as_dict(self) -> dict[str, Any]:
        # Frozen, so the serialised form never goes stale.
        return self.to_dict()

    def __getitem__(self, key: str) -> Any:
        return self._as_dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._as_dict)

    def __len__(self) -> int:
        return len(self._as_dict)


def _as_read(obj: Any, d: dict[str, Any]) -> dict[str, Any]:
    """`d` without the keys the file it was read from lacked and that still hold their default.

    A report rewritten (a rename, an MLflow note) then keeps exactly the keys it had; an object
    built in code (`present` None) writes every key.
    """
    present: frozenset[str] | None = obj.present
    if present is None:
        return d
    defaults = {f.name: f for f in dataclasses.fields(obj)}

    def default(key: str) -> Any:
        f = defaults.get(key)
        if f is None or key in ("present", "extra"):
            return dataclasses.MISSING
        if f.default is not dataclasses.MISSING:
            return _jsonable(f.default)
        if f.default_factory is not dataclasses.MISSING:
            return _jsonable(f.default_factory())
        return dataclasses.MISSING

    return {k: v for k, v in d.items() if k in present or v != default(k)}


def _split(entry: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    """The entries of `entry` whose keys are not in `known`, in their order."""
    return {k: v for k, v in entry.items() if k not in known}


# -- a variant's identity ---------------------------------------------------------------------


@dataclass(frozen=True)
class VariantIdentity(_MappingView):
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
    # The keys of the entry this was read from (None: built in code); see `_as_read`.
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
        return _as_read(self, d)

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


# -- a variant's flips ------------------------------------------------------------------------


@dataclass(frozen=True)
class FlipMatrix(_MappingView):
    """The disagreeing samples of a variant by (original's class, variant's class), sparse.

    report.json holds only the non-zero cells: dense, the matrix made the report grow with
    the square of the class count (1,000 classes: a million numbers per variant, rewritten
    after every step). Reports of schema 1 and 2 hold the dense rows; both read into this.
    """

    classes: int
    cells: tuple[tuple[int, int, int], ...] = ()  # (ref, tfl, count), count > 0, row-major

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]]) -> FlipMatrix:
        """The sparse form of dense rows (rows = original's class, columns = variant's)."""
        cells = tuple(
            (i, j, int(count)) for i, row in enumerate(rows) for j, count in enumerate(row) if count
        )
        return cls(classes=len(rows), cells=cells)

    @classmethod
    def from_json(cls, value: Any) -> FlipMatrix:
        """Read report.json's `flip_matrix`: dense rows (schema 1, 2) or the sparse object."""
        if isinstance(value, FlipMatrix):
            return value
        if isinstance(value, Mapping):
            cells = tuple(sorted((int(r), int(t), int(n)) for r, t, n in value["cells"] if n))
            return cls(classes=int(value["classes"]), cells=cells)
        return cls.from_rows(value)

    def to_dict(self) -> dict[str, Any]:
        return {"classes": self.classes, "cells": [list(c) for c in self.cells]}

    @property
    def total(self) -> int:
        """Every flip counted (NaN outputs are disagreements but not flips)."""
        return sum(n for _, _, n in self.cells)

    def rows(self, classes: Sequence[int] | None = None) -> list[list[int]]:
        """Dense rows over `classes` (all of them by default), in that order."""
        order = list(range(self.classes)) if classes is None else list(classes)
        at = {c: i for i, c in enumerate(order)}
        out = [[0] * len(order) for _ in order]
        for r, t, n in self.cells:
            if r in at and t in at:
                out[at[r]][at[t]] = n
        return out

    def busiest_classes(self, limit: int) -> list[int]:
        """The `limit` classes in the most flips (ties to the lower class number), in class
        order: what a heatmap of many classes shows."""
        weight: dict[int, int] = {}
        for r, t, n in self.cells:
            weight[r] = weight.get(r, 0) + n
            weight[t] = weight.get(t, 0) + n
        top = sorted(weight, key=lambda c: (-weight[c], c))[:limit]
        return sorted(top)


# -- a variant's deployability ---------------------------------------------------------------


class CellStatus(enum.StrEnum):
    """How one deployability check of one variant ended."""

    OK = "ok"  # measured: the numbers are in the cell
    FAILS = "fails"  # the target cannot run the variant; `reason` says why
    NOT_APPLICABLE = "not applicable"  # the check means nothing for this variant; `reason` says why
    MISSING_EXTRA = "missing extra"  # the optional package is not installed; `reason` says how
    ERROR = "error"  # the tool itself failed; `reason` holds its last line


@dataclass(frozen=True)
class IntegerOnlyCell(_MappingView):
    """Whether every op computes in integers (core.engine.flatbuffer.integer_only)."""

    integer_only: bool
    float_io: bool
    blockers: tuple[str, ...] = ()  # "CONV_2D conv2d_1 (FLOAT32)", one per op computing in float

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IntegerOnlyCell:
        return cls(
            integer_only=bool(d["integer_only"]),
            float_io=bool(d.get("float_io")),
            blockers=tuple(str(b) for b in d.get("blockers") or ()),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "integer_only": self.integer_only,
            "float_io": self.float_io,
            "blockers": list(self.blockers),
        }


@dataclass(frozen=True)
class MicroCell(_MappingView):
    """TFLite-Micro: does its interpreter load and plan the model, and how big is the arena.

    `arena_bytes` is the arena TFLite-Micro allocated for the model (its recording allocator's
    total): the smallest `arena_size` a device build of the same model needs.
    `missing_op` is the first op TFLite-Micro has no kernel for (it stops at the first one).
    """

    status: CellStatus
    arena_bytes: int | None = None
    missing_op: str | None = None
    reason: str | None = None
    version: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MicroCell:
        arena = d.get("arena_bytes")
        return cls(
            status=CellStatus(str(d["status"])),
            arena_bytes=None if arena is None else int(arena),
            missing_op=d.get("missing_op"),
            reason=d.get("reason"),
            version=d.get("version"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "arena_bytes": self.arena_bytes,
            "missing_op": self.missing_op,
            "reason": self.reason,
            "version": self.version,
        }


@dataclass(frozen=True)
class VelaCell(_MappingView):
    """Arm Ethos-U: how Vela maps the model (ops on the NPU vs the CPU, memory, cycles).

    Counts are Vela's own operators (it splits some TFLite ops, e.g. SOFTMAX, into several).
    `sram_bytes` / `flash_bytes` and `cycles` are Vela's estimates for `system_config`.
    """

    status: CellStatus
    accelerator: str | None = None
    system_config: str | None = None
    npu_ops: int | None = None
    cpu_ops: int | None = None
    cpu_op_types: tuple[str, ...] = ()  # Vela's names of the ops left to the CPU, sorted
    sram_bytes: int | None = None
    flash_bytes: int | None = None
    cycles: int | None = None
    inferences_per_second: float | None = None
    reason: str | None = None
    version: str | None = None

    @property
    def falls_back_to_cpu(self) -> bool:
        """True when Vela left any op to the CPU."""
        return self.status == CellStatus.OK and bool(self.cpu_ops)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VelaCell:
        def whole(key: str) -> int | None:
            value = d.get(key)
            return None if value is None else int(value)

        ips = d.get("inferences_per_second")
        return cls(
            status=CellStatus(str(d["status"])),
            accelerator=d.get("accelerator"),
            system_config=d.get("system_config"),
            npu_ops=whole("npu_ops"),
            cpu_ops=whole("cpu_ops"),
            cpu_op_types=tuple(str(x) for x in d.get("cpu_op_types") or ()),
            sram_bytes=whole("sram_bytes"),
            flash_bytes=whole("flash_bytes"),
            cycles=whole("cycles"),
            inferences_per_second=None if ips is None else float(ips),
            reason=d.get("reason"),
            version=d.get("version"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "accelerator": self.accelerator,
            "system_config": self.system_config,
            "npu_ops": self.npu_ops,
            "cpu_ops": self.cpu_ops,
            "cpu_op_types": list(self.cpu_op_types),
            "sram_bytes": self.sram_bytes,
            "flash_bytes": self.flash_bytes,
            "cycles": self.cycles,
            "inferences_per_second": self.inferences_per_second,
            "reason": self.reason,
            "version": self.version,
        }


@dataclass(frozen=True)
class Deployability(_MappingView):
    """A variant's deployability pre-flight (a variant entry's `deployability`): read from its
    `.tflite` without running it on a device. `identical_to` names the parent whose outputs
    this derived variant's equal bit for bit (the same model for the user), else None."""

    integer_only: IntegerOnlyCell
    micro: MicroCell
    vela: VelaCell
    identical_to: str | None = None

    @classmethod
    def from_json(cls, value: Any) -> Deployability:
        if isinstance(value, Deployability):
            return value
        return cls(
            integer_only=IntegerOnlyCell.from_dict(value["integer_only"]),
            micro=MicroCell.from_dict(value["micro"]),
            vela=VelaCell.from_dict(value["vela"]),
            identical_to=value.get("identical_to"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "integer_only": self.integer_only.to_dict(),
            "micro": self.micro.to_dict(),
            "vela": self.vela.to_dict(),
            "identical_to": self.identical_to,
        }


# -- a variant under small perturbations (the flip hunt) -------------------------------------


@dataclass(frozen=True)
class PerturbedAgreement(_MappingView):
    """A variant's agreement with the original under one perturbation (`--perturb`).

    Counted only on the images whose original answer did not change under the perturbation
    (`counted` = `n` - `original_changed`): the perturbations are not label-preserving for a
    weak model, and a flip of the original is not the variant's. `new_flips`: counted images
    the variant agreed on unperturbed and disagrees on now (`<variant>.flip-hunt.csv` lists
    them); flips also go the other way, so agreement can rise.
    """

    perturbation: str
    n: int
    original_changed: int
    counted: int
    agreeing: int
    agreement_pct: float | None
    ci95: tuple[float, float] | None
    new_flips: int

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PerturbedAgreement:
        ci = d.get("ci95")
        pct = d.get("agreement_pct")
        return cls(
            perturbation=str(d["perturbation"]),
            n=int(d["n"]),
            original_changed=int(d["original_changed"]),
            counted=int(d["counted"]),
            agreeing=int(d["agreeing"]),
            agreement_pct=None if pct is None else float(pct),
            ci95=None if ci is None else (float(ci[0]), float(ci[1])),
            new_flips=int(d["new_flips"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "perturbation": self.perturbation,
            "n": self.n,
            "original_changed": self.original_changed,
            "counted": self.counted,
            "agreeing": self.agreeing,
            "agreement_pct": self.agreement_pct,
            "ci95": None if self.ci95 is None else list(self.ci95),
            "new_flips": self.new_flips,
        }


# -- a variant's result -----------------------------------------------------------------------


@dataclass(frozen=True)
class VariantResult(_MappingView):
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
            d[key] = _jsonable(value)
        return _as_read(self, d)

    @property
    def finished_ok(self) -> bool:
        """True when the variant ran to the end (status done), whatever its verdict."""
        return self.status == VariantStatus.DONE

    @property
    def p50_ms(self) -> float | None:
        """The median batch-1 latency in ms, once timed."""
        value = (self.latency_ms or {}).get("p50")
        return None if value is None else float(value)


def _jsonable(value: Any) -> Any:
    """Tuples back to lists and mappings back to dicts, as json.dumps and json.loads expect."""
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


# -- a variant's root causes and fixes (diagnosis.causes, auto_fix) ----------------------------


@dataclass(frozen=True)
class RootCause(_MappingView):
    """One named cause of a quantized variant's error (core.engine.causes): where (`layer`, and
    `layers`, the chain the cause and its fixes involve, in graph order), what (`cause`: one of
    outlier_channel, weight_outliers, clipping, range_collapse, preprocessing, runtime_only,
    diffuse, biased_error), one sentence (`words`), the numbers behind it (`evidence`, e.g.
    `channel_max_abs`, `range_ratio`, `used_levels`) and the fixes that apply, cheapest first
    (equalize, bias_correction, int16_activations, weight_only, keep_float)."""

    layer: str
    layers: tuple[str, ...]
    cause: str
    words: str
    fixes: tuple[str, ...] = ()
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RootCause:
        return cls(
            layer=str(d["layer"]),
            layers=tuple(str(x) for x in d.get("layers") or ()),
            cause=str(d["cause"]),
            words=str(d.get("words") or ""),
            fixes=tuple(str(x) for x in d.get("fixes") or ()),
            evidence=dict(d.get("evidence") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "layers": list(self.layers),
            "cause": self.cause,
            "evidence": _jsonable(self.evidence),
            "fixes": list(self.fixes),
            "words": self.words,
        }


@dataclass(frozen=True)
class VariantCauses(_MappingView):
    """A variant's `diagnosis.causes` and what they were measured on (`causes_measured_on`:
    calibration and evaluated image counts, the thresholds the rules applied)."""

    causes: tuple[RootCause, ...] = ()
    calibration_images: int = 0
    evaluated_images: int = 0
    thresholds: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VariantCauses:
        """Read the `causes` keys of a variant's `diagnosis` (core.engine.causes.VariantCauses
        writes the same keys)."""
        measured = d.get("causes_measured_on") or {}
        return cls(
            causes=tuple(RootCause.from_dict(c) for c in d.get("causes") or ()),
            calibration_images=int(measured.get("calibration_images") or 0),
            evaluated_images=int(measured.get("evaluated_images") or 0),
            thresholds=dict(measured.get("thresholds") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "causes": [c.to_dict() for c in self.causes],
            "causes_measured_on": {
                "calibration_images": self.calibration_images,
                "evaluated_images": self.evaluated_images,
                "thresholds": _jsonable(self.thresholds),
            },
        }

    def lines(self) -> list[str]:
        """One line per cause, as the CLI summary and report.html list them."""
        return [f"{c.layer}: {c.words}" for c in self.causes]


class CandidateStatus(enum.StrEnum):
    """What became of one rung the fix search tried (report.json keeps the words)."""

    MEASURED = "measured"
    FAILED = "failed"
    REFUSED = "refused"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class FixCandidate(_MappingView):
    """One rung of the fix ladder as the search tried it (core.engine.fixes.search).

    `fix` is typed by its `kind` (equalize, int16_activations, keep_float, ...) with the layers
    it touches (`{"kind": "equalize", "layers": [...], "pairs": ..., "float_max_abs_delta":
    ...}`). `status` is measured, failed (`reason`: the one-line error), refused (an
    equalized float model that changed the outputs; `reason` gives the measured difference)
    or skipped (`reason`: why the rung does not apply). Measured candidates carry agreement on the search's own
    images (`n` of them), size, p50 latency at batch 1 (`p50_ms`, `latency_runs` runs) and
    `integer_only` (core.engine.flatbuffer.integer_only). `note` flags what a user must know
    (16-bit activations run on reference kernels on CPU).
    """

    kind: str
    variant: str | None
    parent: str
    fix: Mapping[str, Any]
    status: str
    reason: str | None = None
    agreement_pct: float | None = None
    n: int | None = None
    mean_kl: float | None = None
    size_bytes: int | None = None
    p50_ms: float | None = None
    latency_runs: int | None = None
    integer_only: bool | None = None
    meets_bar: bool | None = None
    note: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FixCandidate:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: _jsonable(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if not (f.name in ("reason", "note") and getattr(self, f.name) is None)
        }


@dataclass(frozen=True)
class FixSearch(_MappingView):
    """The fix ladder's search for one variant (its entry's `auto_fix.search`).

    Candidates were selected on `selected_rows` (row positions of samples.csv, a seeded split
    of the evaluation images) and the chosen one is judged on the other rows only
    (`held_out_rows`). `budget` counts candidate evaluations; `truncated` says the budget ran
    out before the ladder did. `pareto` names the measured candidates no other beats on
    agreement, size, p50 latency and integer-only at once. `chosen` is the variant the search
    derived (the cheapest rung meeting the bar, else the best so far when it beats the parent
    on the same images, `parent_agreement_pct`: `chosen_meets_bar` says which).
    """

    seed: int
    selected_rows: tuple[int, ...]
    held_out_rows: tuple[int, ...]
    budget: int
    evaluations: int
    truncated: bool
    integer_only_required: bool
    candidates: tuple[FixCandidate, ...]
    pareto: tuple[str, ...]
    chosen: str | None
    chosen_meets_bar: bool
    parent_agreement_pct: float | None = None  # the parent on the same selection images

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FixSearch:
        return cls(
            seed=int(d["seed"]),
            selected_rows=tuple(int(x) for x in d.get("selected_rows") or ()),
            held_out_rows=tuple(int(x) for x in d.get("held_out_rows") or ()),
            budget=int(d["budget"]),
            evaluations=int(d["evaluations"]),
            truncated=bool(d["truncated"]),
            integer_only_required=bool(d.get("integer_only_required")),
            candidates=tuple(FixCandidate.from_dict(c) for c in d.get("candidates") or ()),
            pareto=tuple(str(x) for x in d.get("pareto") or ()),
            chosen=d.get("chosen"),
            chosen_meets_bar=bool(d.get("chosen_meets_bar")),
            parent_agreement_pct=d.get("parent_agreement_pct"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "selected_rows": list(self.selected_rows),
            "held_out_rows": list(self.held_out_rows),
            "budget": self.budget,
            "evaluations": self.evaluations,
            "truncated": self.truncated,
            "integer_only_required": self.integer_only_required,
            "candidates": [c.to_dict() for c in self.candidates],
            "pareto": list(self.pareto),
            "chosen": self.chosen,
            "chosen_meets_bar": self.chosen_meets_bar,
            "parent_agreement_pct": self.parent_agreement_pct,
        }


@dataclass(frozen=True)
class HeldOutJudgement(_MappingView):
    """A derived variant judged on the images its search did not see (its entry's
    `judged_on_held_out`): the verdict `passed` follows this, not the all-image agreement."""

    n: int
    agreeing: int
    top1_agreement_pct: float
    top1_agreement_ci95: tuple[float, float]
    passed: bool
    rows: str = "held out from the fix search (auto_fix.search.held_out_rows of the parent)"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HeldOutJudgement:
        low, high = d["top1_agreement_ci95"]
        return cls(
            n=int(d["n"]),
            agreeing=int(d["agreeing"]),
            top1_agreement_pct=float(d["top1_agreement_pct"]),
            top1_agreement_ci95=(float(low), float(high)),
            passed=bool(d["passed"]),
            rows=str(d.get("rows") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "agreeing": self.agreeing,
            "top1_agreement_pct": self.top1_agreement_pct,
            "top1_agreement_ci95": list(self.top1_agreement_ci95),
            "passed": self.passed,
            "rows": self.rows,
        }


# -- a variant ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant(_MappingView):
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
        return cls(identity, result, _split(entry, known))

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
        """A copy with some result fields changed (the object itself is frozen)."""
        return dataclasses.replace(self, result=dataclasses.replace(self.result, **changes))


# -- sections a stage or a later process writes whole -------------------------------------------


def _frozen(value: Any) -> Any:
    """JSON lists as tuples (at any depth), so a section read from a file stays frozen."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


class Section(_MappingView):
    """A section of report.json with a shape of its own, as a frozen dataclass.

    A subclass is a frozen dataclass that sets `KEY` (where it lives: a top-level key of
    report.json, or for a nested part its name) and declares its fields in report.json order,
    then `extra` (keys this version does not know, written back as read) and `present` (the
    keys of the entry it was read from, see `_as_read`). Reading and writing are generic over
    the fields: a field that holds other sections names their class in `NESTED`, and a field
    in `OMIT_WHEN_NONE` is left out of the file while it is None (as the section was written
    before it was typed). A new field is then one line here, plus its writer.

    A writer builds the section and stores it with `put_section` (a worker through
    `ReportFile.put`): no stage assembles these dicts by hand.
    """

    KEY: ClassVar[str] = ""
    NESTED: ClassVar[Mapping[str, type[Section]]] = {}
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        names = (f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        return tuple(n for n in names if n not in ("extra", "present"))

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> Self:
        """Read the section from its report.json object; unknown keys go to `extra`.

        Raises:
            QuantLensError: a field holds what it cannot (a nested entry that is no object).
        """
        names = cls.field_names()
        values = {k: _frozen(entry[k]) for k in names if k in entry}
        try:
            for key, kind in cls.NESTED.items():
                if key in values:
                    values[key] = _read_nested(kind, values[key])
            values |= {"extra": _split(entry, names), "present": frozenset(entry)}
            return cls(**values)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise QuantLensError(
                f"report.json's `{cls.KEY}` is not readable ({exc!s}); re-run the job"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        d = {
            k: _jsonable(v)
            for k in self.field_names()
            if not ((v := getattr(self, k)) is None and k in self.OMIT_WHEN_NONE)
        }
        extra: Mapping[str, Any] = getattr(self, "extra")  # noqa: B009 (declared by subclasses)
        return {**_as_read(self, d), **_jsonable(extra)}


def _read_nested(kind: type[Section], value: Any) -> Any:
    """A nested field's value read into `kind`: entries by name (an object), or in order."""

    def one(entry: Any) -> Section:
        return entry if isinstance(entry, kind) else kind.from_dict(entry)

    if isinstance(value, Mapping):
        return {k: one(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(one(v) for v in value)
    return value


S = TypeVar("S", bound=Section)


def put_section(report: dict[str, Any], section: Section) -> None:
    """Store a section in a report.json object (as `update_report`'s change, or the worker's
    copy through `ReportFile.put`): the one way a section enters report.json."""
    report[section.KEY] = section.to_dict()


def section_of(report: Mapping[str, Any], kind: type[S]) -> S | None:
    """The section `kind` of a report.json object (a writer's copy), or None when absent."""
    value = report.get(kind.KEY)
    if isinstance(value, kind):
        return value
    return kind.from_dict(value) if isinstance(value, Mapping) else None


@dataclass(frozen=True)
class CalibrationRecord(Section):
    """Where the calibration images came from (core.engine.stages.decode writes it).

    `source` is held-out | overlapping | separate | none; `images` were used of `requested`;
    `held_out` / `evaluable` split the data set; `path` and `sha256` name --calibration-data
    (a re-score checks the hash); `file` lists the images (calibration.csv).
    """

    KEY: ClassVar[str] = "calibration"

    source: str | None = None
    reason: str | None = None
    requested: int | None = None
    images: int | None = None
    held_out: int | None = None
    evaluable: int | None = None
    path: str | None = None
    sha256: str | None = None
    file: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, kw_only=True)
class SweepRow(Section):
    """One point of the calibration sweep: a mode quantized with `size` images drawn with
    `seed`, measured on `n` evaluated images (agreement in %, its Wilson 95 % interval in %).
    What the chart and summary need is required; the rest may be missing from a report."""

    KEY: ClassVar[str] = "point"

    size: int
    seed: int
    agreement_pct: float
    ci95: tuple[float, float] | None = None
    n: int
    mean_kl: float
    size_bytes: int | None = None
    file: str | None = None  # relative to the run folder: sweep/int8-n50-s1.tflite
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SweepMode(Section):
    """One swept mode: its rows, or the error that stopped it; then the summary per size
    (core.reporting.sweep.size_summary), where it flattens and the statement in words."""

    KEY: ClassVar[str] = "mode"
    NESTED: ClassVar[Mapping[str, type[Section]]] = {"points": SweepRow}
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"error", "summary"})
    SUMMARISED = ("flattens_at", "run_size_enough", "statement")  # written with the summary

    error: str | None = None
    points: tuple[SweepRow, ...] = ()
    summary: tuple[Mapping[str, Any], ...] | None = None
    flattens_at: int | None = None
    run_size_enough: bool | None = None
    statement: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.summary is None:  # not summarised yet: none of its conclusions either
            for key in self.SUMMARISED:
                if d.get(key) is None:
                    d.pop(key, None)
        return d


@dataclass(frozen=True)
class Sweep(Section):
    """The calibration sweep (--calibration-sweep, core.engine.stages.sweep): what was swept,
    from which pool, each mode's points, and the statement the CLI, pages and report show."""

    KEY: ClassVar[str] = "sweep"
    NESTED: ClassVar[Mapping[str, type[Section]]] = {"modes": SweepMode}

    backend: str | None = None
    requested_sizes: tuple[int, ...] = ()
    sizes: tuple[int, ...] = ()
    seeds: int | None = None
    pool_source: str | None = None
    pool_images: int | None = None
    evaluated_n: int | None = None
    flat_within_pp: float | None = None
    run_calibration_samples: int | None = None
    notes: tuple[str, ...] = ()
    modes: Mapping[str, SweepMode] = field(default_factory=dict)
    statement: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)

    def with_mode(self, mode: str, entry: SweepMode) -> Sweep:
        """A copy with one mode's entry replaced (the object itself is frozen)."""
        return dataclasses.replace(self, modes={**self.modes, mode: entry})


@dataclass(frozen=True)
class EngineInfo(Section):
    """Where the run ran: `local`, or `ray` with its cluster (address, alive nodes, CPUs),
    the node that converted and timed (`latency_node`), and on Ray the evaluation's batches
    per node and the nodes lost during it (their unfinished batches ran on the others)."""

    KEY: ClassVar[str] = "engine"
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"cpus", "batches_by_node", "nodes_lost"})

    name: str = "local"
    address: str | None = None
    nodes: tuple[str, ...] = ()
    cpus: int | None = None
    latency_node: str | None = None
    batches_by_node: Mapping[str, int] | None = None
    nodes_lost: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Tracking(Section):
    """Where the finished run was logged (MLflow): the tracking URI and the ids there, or the
    one-line error that kept it from being logged."""

    KEY: ClassVar[str] = "tracking"
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"experiment_id", "run_id"})

    uri: str | None = None
    experiment_id: str | None = None
    run_id: str | None = None
    error: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)


# The sections RunReport reads into typed fields, by their report.json key.
SECTIONS: tuple[type[Section], ...] = (CalibrationRecord, Sweep, EngineInfo, Tracking)


# -- a run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo(_MappingView):
    """The `run` entry: id, name, when, status, the command that reproduces it, trusted mode."""

    id: str = ""
    name: str = ""
    created: str | None = None
    status: str | None = None
    command: str | None = None
    trusted: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)

    KEYS = ("id", "name", "created", "status", "command", "trusted")

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> RunInfo:
        values = {k: entry[k] for k in cls.KEYS if k in entry}
        for key in ("id", "name"):
            values[key] = str(values.get(key) or "")
        return cls(**values, extra=_split(entry, cls.KEYS), present=frozenset(entry))

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.KEYS}
        return {**_as_read(self, d), **dict(self.extra)}


# Top-level keys the model reads into typed fields, in report.json order.
_RUN_KEYS = (
    "schema_version",
    "run",
    "reference",
    "dataset",
    "preprocessing",
    "options",
    "pivot",
    "variants",
    "environment",
    "warnings",
    "recommendation",
)


@dataclass(frozen=True)
class RunReport(_MappingView):
    """One run's report.json.

    The measured sections (`reference`, `dataset`, `preprocessing`, `options`, `environment`)
    stay mappings as written; what readers judge by has typed accessors (`threshold_pct`,
    `verdict_rule`, `calibration_of`).
    """

    run: RunInfo = field(default_factory=RunInfo)
    variants: tuple[Variant, ...] = ()
    reference: Mapping[str, Any] = field(default_factory=dict)
    dataset: Mapping[str, Any] = field(default_factory=dict)
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    environment: Mapping[str, Any] = field(default_factory=dict)
    pivot: str | None = None
    warnings: tuple[str, ...] = ()
    recommendation: Mapping[str, Any] | None = None
    calibration: CalibrationRecord | None = None  # None in runs older than the record
    sweep: Sweep | None = None  # only with --calibration-sweep
    engine: EngineInfo | None = None
    tracking: Tracking | None = None  # once logged to MLflow (or refused there)
    schema_version: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunReport:
        """Read a report.json object of any schema this version knows.

        Raises:
            QuantLensError: a newer schema than this QuantLens reads, or an unreadable entry.
        """
        version = int(data.get("schema_version") or 1)  # the first reports had no version
        if version > SCHEMA_VERSION:
            raise QuantLensError(
                f"report.json has schema {version}, newer than this QuantLens reads "
                f"({SCHEMA_VERSION}); upgrade QuantLens to open it"
            )
        variants = tuple(
            Variant.from_dict(v) for v in data.get("variants") or [] if isinstance(v, Mapping)
        )
        # A section that is not an object (no writer made one) stays in `extra` as it is.
        typed = tuple(k.KEY for k in SECTIONS if isinstance(data.get(k.KEY), Mapping))
        return cls(
            run=RunInfo.from_dict(data.get("run") or {}),
            variants=variants,
            reference=dict(data.get("reference") or {}),
            dataset=dict(data.get("dataset") or {}),
            preprocessing=dict(data.get("preprocessing") or {}),
            options=dict(data.get("options") or {}),
            environment=dict(data.get("environment") or {}),
            pivot=data.get("pivot"),
            warnings=tuple(str(w) for w in data.get("warnings") or ()),
            recommendation=data.get("recommendation"),
            calibration=section_of(data, CalibrationRecord),
            sweep=section_of(data, Sweep),
            engine=section_of(data, EngineInfo),
            tracking=section_of(data, Tracking),
            schema_version=version,
            extra=_split(data, _RUN_KEYS + typed),
            present=frozenset(data) | {"schema_version"},  # always written
        )

    def to_dict(self) -> dict[str, Any]:
        """The report.json object; written as schema `SCHEMA_VERSION` whatever it was read as."""
        d: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run": self.run.to_dict(),
            "reference": _jsonable(self.reference),
            "dataset": _jsonable(self.dataset),
            "preprocessing": _jsonable(self.preprocessing),
            "options": _jsonable(self.options),
            "pivot": self.pivot,
            "variants": [v.to_dict() for v in self.variants],
            "environment": _jsonable(self.environment),
            "warnings": list(self.warnings),
        }
        if self.recommendation is not None:
            d["recommendation"] = _jsonable(self.recommendation)
        for kind in SECTIONS:
            section = getattr(self, kind.KEY)
            if section is not None:
                d[kind.KEY] = section.to_dict()
        return {**_as_read(self, d), **_jsonable(self.extra)}

    def __getitem__(self, key: str) -> Any:
        # Readers that index the report get the typed variants, not their dicts.
        if key == "variants":
            return self.variants
        return self._as_dict[key]

    # -- what readers judge by --------------------------------------------------------------
    @property
    def threshold_pct(self) -> float:
        """The agreement a variant needs to pass, in % (the default when not recorded)."""
        value = self.options.get("min_agreement_pct")
        return DEFAULT_MIN_AGREEMENT_PCT if value is None else float(value)

    @property
    def verdict_rule(self) -> str:
        """The verdict rule the run was judged by; reports older than `--verdict`: the point."""
        return str(self.options.get("verdict") or VERDICT_POINT)

    @property
    def variant_names(self) -> list[str]:
        return [v.name for v in self.variants]

    def variant(self, name: str) -> Variant | None:
        """The variant of that name, or None."""
        return next((v for v in self.variants if v.name == name), None)

    def files_of(self, name: str) -> rundir.HasFileId:
        """What the files of the variant called `name` are named by: its entry, or (a name
        the report does not list) the name itself, as files were named before file ids."""
        return self.variant(name) or rundir.FileId(name)

    def calibration_of(self, variant: Variant) -> tuple[int | None, int | None]:
        """(calibration samples, seed) a variant was made with: its own, else the run's."""
        ident = variant.identity
        samples = ident.calibration_samples
        seed = ident.calibration_seed
        return (
            self.options.get("calibration_samples") if samples is None else samples,
            self.options.get("seed") if seed is None else seed,
        )

    @property
    def runtimes(self) -> RuntimeMatrix | None:
        """The runtime matrix (each variant under each chosen runtime), if the run made one."""
        value = self.extra.get("runtimes")
        return RuntimeMatrix.from_dict(value) if isinstance(value, Mapping) else None

    def display_name(self, variant: Variant) -> str:
        """A variant's name as listed: `float32 (pivot)` for the run's pivot; a long name is
        summarised (`int8:keep=a+b+c … and 9 more`, core.types.short_name)."""
        shown = short_name(variant.name)
        return f"{shown} (pivot)" if variant.name == self.pivot else shown


def report_from(report: RunReport | Mapping[str, Any]) -> RunReport:
    """The typed report of a report.json object, or the report itself when already typed."""
    return report if isinstance(report, RunReport) else RunReport.from_dict(report)


@contextlib.contextmanager
def report_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run's report lock: an exclusive `flock` on the run folder itself.

    Every writer of report.json (the worker, the supervisor, a re-score, a rename, MLflow)
    reads, changes and writes it under this lock, so none of them writes back a copy read
    before another's change. The folder, not report.json, is locked: an atomic write replaces
    the file's inode, and a lock file would be one more file in the user's `--out`. The kernel
    drops the lock when its holder dies, even on SIGKILL. Not re-entrant: a holder calls
    `_write_unlocked`, never `write_report`.
    """
    import fcntl

    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write_unlocked(run_dir: Path, report: RunReport | Mapping[str, Any]) -> dict[str, Any]:
    data = report_from(report).to_dict()
    rundir.write_json_atomic(Path(run_dir) / rundir.REPORT, data)
    return data


def write_report(run_dir: Path, report: RunReport | Mapping[str, Any]) -> None:
    """Write `run_dir/report.json` whole and atomically, under the report lock.

    For a new report only: a change to an existing one goes through `update_report`, which
    reads the current file under the same lock.
    """
    with report_lock(run_dir):
        _write_unlocked(run_dir, report)


ReportChange = Callable[[dict[str, Any]], "RunReport | Mapping[str, Any] | None"]


def update_report(
    run_dir: Path, change: ReportChange, *, create: bool = False
) -> dict[str, Any] | None:
    """Read report.json, apply `change`, and write the result, all under the report lock.

    Args:
        run_dir: the run folder.
        change: called with the current report as a dict (read through `RunReport`, so in
            this version's schema); it changes the dict in place and returns None, or
            returns the new report.
        create: when report.json does not exist yet, call `change` with `{}` (the worker
            opening a new run) instead of doing nothing.

    Returns:
        The report as written (a dict), or None when there was no report and not `create`.

    Raises:
        QuantLensError: the current report is not readable (see `read_report`).
    """
    with report_lock(run_dir):
        if (Path(run_dir) / rundir.REPORT).is_file():
            current = read_report(run_dir).to_dict()
        elif create:
            current = {}
        else:
            return None
        changed = change(current)
        return _write_unlocked(run_dir, current if changed is None else changed)


def read_report(run_dir: Path) -> RunReport:
    """Read `run_dir/report.json` (schema 1 or 2): the one place report.json is parsed.

    Raises:
        QuantLensError: no report yet, not JSON, not an object, or an unreadable entry.
    """
    path = Path(run_dir) / rundir.REPORT
    name = Path(run_dir).name
    if not path.is_file():
        raise QuantLensError(
            f"run {name} has no report yet; wait for it to finish or pick another run"
        )
    try:
        data = rundir.read_json(path)
    except (OSError, ValueError) as exc:
        raise QuantLensError(
            f"report of run {name} is unreadable ({exc}); re-run the job"
        ) from None
    if not isinstance(data, dict):
        raise QuantLensError(f"report of run {name} is not a JSON object; re-run it")
    return RunReport.from_dict(data)


# -- the runtime matrix -----------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeCell(_MappingView):
    """One variant under one runtime: agreement with the original on `n` images, or why it
    could not run there (`reason`, the numbers then empty).

    `runtime_flips` are the data set indices of the images whose top-1 under this runtime
    differs from the same file's top-1 under XNNPACK at the run's threads (the run's own
    evaluation): flips of the runtime, not of the quantization.
    """

    variant: str
    runtime: str
    n: int = 0
    agree: int = 0
    agreement_pct: float | None = None
    ci_low_pct: float | None = None
    ci_high_pct: float | None = None
    accuracy_pct: float | None = None
    labelled: int = 0
    disagreement_split: Mapping[str, int] | None = None
    runtime_flips: tuple[int, ...] = ()
    threads: int | None = None
    delegate: str | None = None  # what ran it (TFLiteRunner.describe), e.g. "xnnpack"
    reason: str | None = None  # why the cell is empty; None when measured

    KEYS = (
        "variant",
        "runtime",
        "n",
        "agree",
        "agreement_pct",
        "ci_low_pct",
        "ci_high_pct",
        "accuracy_pct",
        "labelled",
        "disagreement_split",
        "runtime_flips",
        "threads",
        "delegate",
        "reason",
    )

    @property
    def measured(self) -> bool:
        return self.reason is None

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> RuntimeCell:
        values = {k: entry[k] for k in cls.KEYS if k in entry}
        split = values.get("disagreement_split")
        values["disagreement_split"] = None if split is None else dict(split)
        values["runtime_flips"] = tuple(int(i) for i in values.get("runtime_flips") or ())
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.KEYS}
        d["runtime_flips"] = list(self.runtime_flips)
        d["disagreement_split"] = (
            None if self.disagreement_split is None else dict(self.disagreement_split)
        )
        return d


@dataclass(frozen=True)
class RuntimeMatrix(_MappingView):
    """report.json's `runtimes`: every evaluated variant under each chosen runtime.

    `subset` is how many images the slow runtimes (built-in, reference kernels, TFLite-Micro)
    ran on, drawn with `seed` from the `total` evaluated images (equal to `total` when the
    user asked for all of them), `subset_indices` their data set indices; XNNPACK runs every
    image.
    """

    runtimes: tuple[str, ...] = ()
    total: int = 0
    subset: int = 0
    seed: int = 0
    subset_indices: tuple[int, ...] = ()
    cells: tuple[RuntimeCell, ...] = ()

    def cell(self, variant: str, runtime: str) -> RuntimeCell | None:
        """The cell of `variant` under `runtime`, or None when the matrix has none."""
        return next((c for c in self.cells if c.variant == variant and c.runtime == runtime), None)

    @property
    def variants(self) -> list[str]:
        """The variants in the matrix, in report order."""
        return list(dict.fromkeys(c.variant for c in self.cells))

    def runtime_flips(self, variant: str) -> dict[str, tuple[int, ...]]:
        """Per runtime, the images it flips for `variant` against XNNPACK (non-empty only)."""
        return {
            c.runtime: c.runtime_flips
            for c in self.cells
            if c.variant == variant and c.runtime_flips
        }

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> RuntimeMatrix:
        return cls(
            runtimes=tuple(str(r) for r in entry.get("runtimes") or ()),
            total=int(entry.get("total") or 0),
            subset=int(entry.get("subset") or 0),
            seed=int(entry.get("seed") or 0),
            subset_indices=tuple(int(i) for i in entry.get("subset_indices") or ()),
            cells=tuple(
                RuntimeCell.from_dict(c) for c in entry.get("cells") or () if isinstance(c, Mapping)
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtimes": list(self.runtimes),
            "total": self.total,
            "subset": self.subset,
            "seed": self.seed,
            "subset_indices": list(self.subset_indices),
            "cells": [c.to_dict() for c in self.cells],
        }


def record_runtimes(run_dir: Path, matrix: RuntimeMatrix) -> None:
    """Write the run's `runtimes` section (the whole matrix) through `update_report`."""

    def change(report: dict[str, Any]) -> None:
        report["runtimes"] = matrix.to_dict()

    update_report(run_dir, change)
