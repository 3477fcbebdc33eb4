"""The typed run model: report.json as frozen dataclasses, written and read in one place each.

A run is a `RunReport`; each of its variants is a `Variant`: a `VariantIdentity` (what was
made) plus a `VariantResult` (what it measured). `write_report` is the one function that
serialises report.json and `read_report` the one that reads it back, whatever its schema.

Keys this model does not know (other features add `diagnosis`, `sweep`, `engine`, ...) are kept
in `extra` and written back unchanged, so a reader never drops what a newer writer stored.
Each object is also a read-only mapping over its report.json form (`variant["n"]`), so code
that reads report fields by key sees exactly what the file holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from core.errors import QuantLensError
from core.inputs import rundir
from core.types import (
    DEFAULT_MIN_AGREEMENT_PCT,
    Backend,
    IOType,
    Mode,
    RunStatus,
    VariantSpec,
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
    equalized: bool = False
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
        "equalized",
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
            equalized=spec.equalized,
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
            equalized=bool(entry.get("equalized", False)),
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
        if self.equalized:  # written only when set, so other variants' entries stay as they were
            d["equalized"] = True
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
            equalized=self.equalized,
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


# -- a variant's result -----------------------------------------------------------------------


@dataclass(frozen=True)
class VariantResult(_MappingView):
    """What a variant measured: status, size, agreement, accuracy, latency and its verdict.

    Every metric is None until measured. Values are kept as report.json holds them (JSON
    lists become tuples; mappings stay mappings).
    """

    status: str = "pending"
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
        for key in ("select_tf_ops_used", "warnings"):
            values[key] = tuple(values.get(key) or ())
        values["status"] = str(values.get("status") or "pending")
        return cls(**values, present=frozenset(entry))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for key in self.keys_in_order():
            value = getattr(self, key)
            if key in ("latency_note", "stderr_tail", "speedup") and value is None:
                continue
            # The timing phase writes latency_ms and latency_warning together.
            if key == "latency_warning" and value is None and self.latency_ms is None:
                continue
            d[key] = _jsonable(value)
        return _as_read(self, d)

    @property
    def finished_ok(self) -> bool:
        """True when the variant ran to the end (status done), whatever its verdict."""
        return self.status == RunStatus.DONE

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
    diffuse), one sentence (`words`), the numbers behind it (`evidence`, e.g.
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
        except (KeyError, ValueError) as exc:
            raise QuantLensError(
                f"a variant entry of report.json is not readable ({exc!s}); re-run the job"
            ) from None
        known = VariantIdentity.KEYS + VariantResult.keys_in_order()
        return cls(identity, VariantResult.from_dict(entry), _split(entry, known))

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
    def status(self) -> str:
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
            schema_version=version,
            extra=_split(data, _RUN_KEYS),
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
    def calibration(self) -> Mapping[str, Any] | None:
        """Where the calibration images came from (source held-out | overlapping | separate |
        none, `images`, `held_out`, `evaluable`, `path`); None in runs older than issue 13."""
        value = self.extra.get("calibration")
        return value if isinstance(value, Mapping) else None

    @property
    def sweep(self) -> Mapping[str, Any] | None:
        """The calibration sweep (`modes` -> per-point rows and summary, `statement`), if run."""
        value = self.extra.get("sweep")
        return value if isinstance(value, Mapping) else None

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
