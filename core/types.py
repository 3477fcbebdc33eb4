"""Enums and frozen dataclasses that cross module and process boundaries."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Mode(enum.StrEnum):
    """Quantization modes of the converter backend (DESIGN §4)."""

    FLOAT32 = "float32"
    DYNAMIC = "dynamic"
    FLOAT16 = "float16"
    INT8 = "int8"
    INT16X8 = "int16x8"


class IOType(enum.StrEnum):
    """Input/output tensor type of a full-integer (int8) model."""

    INT8 = "int8"
    UINT8 = "uint8"
    FLOAT32 = "float32"


class Preset(enum.StrEnum):
    """Preprocessing presets: how decoded RGB uint8 pixels become the model's float input."""

    MOBILENET_V2 = "mobilenet_v2"  # [-1, 1]
    UNIT = "unit"  # [0, 1]
    RAW = "raw"  # [0, 255]
    CAFFE = "caffe"  # BGR minus ImageNet mean
    TORCH = "torch"  # ImageNet mean / std


class RunStatus(enum.StrEnum):
    """Life cycle of a run and of each variant (DESIGN §8)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


@dataclass(frozen=True)
class VariantSpec:
    """One conversion to make: a mode plus its options.

    Its `name` is the variant's identity in files and tables: `int8` (int8 I/O), `int8-uint8`,
    `int8-float32`, and the mode name for every other mode; `+tf` is appended when the
    SELECT_TF_OPS fallback is allowed.
    """

    mode: Mode
    io_type: IOType | None = None
    allow_select_tf_ops: bool = False

    @property
    def name(self) -> str:
        base = str(self.mode)
        if self.mode is Mode.INT8 and self.io_type not in (None, IOType.INT8):
            base = f"{base}-{self.io_type}"
        return base + ("+tf" if self.allow_select_tf_ops else "")

    @classmethod
    def parse(cls, text: str) -> VariantSpec:
        """Parse a variant name such as `int8-uint8` or `float16+tf` (the inverse of `name`)."""
        from core.errors import QuantLensError

        raw = text.strip().lower()
        select = raw.endswith("+tf")
        raw = raw.removesuffix("+tf")
        mode_text, _, io_text = raw.partition("-")
        try:
            mode = Mode(mode_text)
        except ValueError:
            choices = ", ".join(m.value for m in Mode)
            raise QuantLensError(
                f"unknown mode {text!r}; choose from {choices} (int8 takes -uint8 or -float32 I/O)"
            ) from None
        io_type = None
        if io_text:
            if mode is not Mode.INT8:
                raise QuantLensError(f"mode {mode} takes no I/O type; only int8 does (int8-uint8)")
            try:
                io_type = IOType(io_text)
            except ValueError:
                raise QuantLensError(
                    f"unknown int8 I/O type {io_text!r}; choose int8, uint8 or float32"
                ) from None
        if mode is Mode.INT8 and io_type is None:
            io_type = IOType.INT8
        return cls(mode=mode, io_type=io_type, allow_select_tf_ops=select)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": str(self.mode),
            "io_type": None if self.io_type is None else str(self.io_type),
            "allow_select_tf_ops": self.allow_select_tf_ops,
        }


@dataclass(frozen=True)
class ModelSignature:
    """What QuantLens needs to know to feed a model and read its answer."""

    format: str  # "saved_model" | "keras"
    input_shape: tuple[int | None, ...]  # as declared, batch first (batch may be None)
    input_dtype: str
    height: int
    width: int
    channels: int
    num_classes: int
    outputs_probabilities: bool  # False: logits, softmax is applied before comparing
    signature_key: str = "serving_default"
    input_name: str = ""
    output_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Sample:
    """One evaluation image. `index` is its position in the data set's sample order."""

    index: int
    path: str  # absolute path of the image file
    relpath: str  # as written in the CSV or relative to the folder root; shown to users
    label: int | None = None


@dataclass(frozen=True)
class SkippedSample:
    """A sample that was not evaluated, and the one-line reason why."""

    relpath: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Dataset:
    """The enumerated samples of a data set, before decoding."""

    path: str
    kind: str  # "csv" | "folder" | "demo"
    samples: tuple[Sample, ...]
    skipped: tuple[SkippedSample, ...] = ()
    class_names: tuple[str, ...] | None = None
    has_labels: bool = False


@dataclass(frozen=True)
class LatencyStats:
    """Per-invoke wall time at batch 1, in milliseconds."""

    min: float
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Agreement:
    """Aggregate comparison of one variant against the reference (DESIGN §6)."""

    n: int
    top1_agreement_pct: float
    top1_agreement_ci95: tuple[float, float]
    k: int
    topk_agreement_pct: float
    disagreements: int
    max_abs_prob_delta: float
    mean_abs_top1_prob_delta: float
    mean_kl: float
    nan_outputs: int
    flip_matrix: tuple[tuple[int, ...], ...]
    reference_accuracy_pct: float | None = None
    tflite_accuracy_pct: float | None = None
    accuracy_delta_pct: float | None = None
    mcnemar_p: float | None = None
    labelled_n: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["top1_agreement_ci95"] = list(self.top1_agreement_ci95)
        d["flip_matrix"] = [list(r) for r in self.flip_matrix]
        return d


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a job, written by the worker and read by the CLI and the dashboard."""

    step: str  # "load" | "decode" | "reference" | "convert" | "infer" | "latency" | "done" ...
    fraction: float  # 0..1 within the step
    message: str
    variant: str | None = None
    time: float = field(default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to run one job; serialised as the run directory's job.json."""

    model_path: str
    data_path: str
    variants: tuple[str, ...] = ("float32", "dynamic", "float16", "int8")
    preset: Preset = Preset.MOBILENET_V2
    calibration_samples: int = 100
    max_samples: int | None = None  # evaluation cap; None evaluates every sample
    threads: int | None = None  # None: every core
    min_agreement_pct: float = 95.0
    latency_runs: int = 50
    warmup_runs: int = 5
    seed: int = 0
    labels_file: str | None = None
    trusted: bool = False  # run Lambda layers / custom objects / file ops; recorded on the run
    name: str = ""
    input_size: tuple[int, int] | None = None  # (height, width) for models with None spatial dims
    signature_key: str | None = None  # SavedModel signature; None: serving_default or the only one

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preset"] = str(self.preset)
        d["variants"] = list(self.variants)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobSpec:
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["variants"] = tuple(kwargs.get("variants", cls.variants))
        kwargs["preset"] = Preset(kwargs.get("preset", Preset.MOBILENET_V2))
        if kwargs.get("input_size"):
            kwargs["input_size"] = tuple(kwargs["input_size"])
        return cls(**kwargs)
