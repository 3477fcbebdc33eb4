"""Enums and frozen dataclasses that cross module and process boundaries."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any


class Mode(enum.StrEnum):
    """Quantization modes (DESIGN §4); `int4w` runs on the quantizer backend only."""

    FLOAT32 = "float32"
    DYNAMIC = "dynamic"
    FLOAT16 = "float16"
    INT8 = "int8"
    INT16X8 = "int16x8"
    INT4W = "int4w"  # int4 weights, float activations (LiteRT Quantizer)


class Backend(enum.StrEnum):
    """What makes a variant's `.tflite`: the TFLiteConverter per mode, or LiteRT Quantizer
    recipes applied to the converter's one float32 model."""

    CONVERTER = "converter"
    QUANTIZER = "quantizer"


# The CLI's and Setup's backend choices: one backend, or both side by side.
BACKEND_CHOICES = ("converter", "quantizer", "both")
# Appended to a quantizer variant's mode: `int8_q`. Short, ASCII and safe in file names.
QUANTIZER_SUFFIX = "_q"
QUANTIZER_ONLY_MODES = frozenset({Mode.INT4W})
NEEDS_CALIBRATION = frozenset({Mode.INT8, Mode.INT16X8})  # on both backends
# Modes whose converter variant can keep layers in float (the QuantizationDebugger's denylist).
CONVERTER_KEEP_MODES = frozenset({Mode.INT8})
# Per-layer overrides in a variant name: `int8_q:keep=conv2d+dense:int16=conv2d_1`.
_OVERRIDE_KEYS = ("keep", "int16", "wo", "bc")
EQUALIZE_KEY = "eq"  # a bare override: `int8:eq`


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

    @property
    def ended_words(self) -> str:
        """How a run that ended so is said after "the run": "was cancelled", "timed out"."""
        return _ENDED_WORDS.get(self, f"ended ({self})")


_ENDED_WORDS = {
    RunStatus.CANCELLED: "was cancelled",
    RunStatus.FAILED: "failed",
    RunStatus.CRASHED: "crashed",
    RunStatus.TIMEOUT: "timed out",
}


class VariantStatus(enum.StrEnum):
    """Life cycle of one variant in report.json: a run's statuses, `pending` for `queued`.

    A str enum, so report.json holds the same words and a status compares equal to its word.
    """

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (VariantStatus.PENDING, VariantStatus.RUNNING)


# The statuses a run or a variant ends in (DESIGN §8), and those of them that are no success.
FINISHED_STATUSES = frozenset(str(s) for s in RunStatus if s.finished)
UNSUCCESSFUL_STATUSES = FINISHED_STATUSES - {str(RunStatus.DONE)}

# The top-1 agreement (%) a variant needs to pass when the user names none (DESIGN §1).
DEFAULT_MIN_AGREEMENT_PCT = 95.0


@dataclass(frozen=True)
class VariantSpec:
    """One conversion to make: a mode, its backend and its options.

    Its `name` is the variant's identity in files and tables: `int8` (int8 I/O), `int8-uint8`,
    `int8-float32`, and the mode name for every other mode; `_q` is appended on the quantizer
    backend (`int8_q`), `+tf` when the SELECT_TF_OPS fallback is allowed, then the per-layer
    overrides: `:eq` (the Keras model cross-layer equalized before quantizing,
    core.engine.fixes.equalize_rung), `:keep=A+B` (layers kept in float) and `:int16=C` (layers
    given int16 activations) and `:wo=D` (layers whose weights only are quantized; quantizer
    only) and `:bc=E` (layers whose biases absorb their mean int8 error,
    core.engine.fixes.bias_correct), each list sorted. `parse(spec.name) == spec` for every valid spec.
    """

    mode: Mode
    io_type: IOType | None = None
    allow_select_tf_ops: bool = False
    backend: Backend = Backend.CONVERTER
    float_layers: tuple[str, ...] = ()  # Keras layer names kept in float
    int16_layers: tuple[str, ...] = ()  # Keras layer names given int16 activations
    weight_only_layers: tuple[str, ...] = ()  # Keras layer names quantized weight-only
    equalized: bool = False  # the Keras model is cross-layer equalized before it is quantized
    bias_corrected_layers: tuple[str, ...] = ()  # Keras layers whose bias absorbs the int8 error

    @property
    def name(self) -> str:
        base = str(self.mode)
        if self.mode is Mode.INT8 and self.io_type not in (None, IOType.INT8):
            base = f"{base}-{self.io_type}"
        if self.backend is Backend.QUANTIZER:
            base += QUANTIZER_SUFFIX
        base += "+tf" if self.allow_select_tf_ops else ""
        base += f":{EQUALIZE_KEY}" if self.equalized else ""
        for key, layers in (
            ("keep", self.float_layers),
            ("int16", self.int16_layers),
            ("wo", self.weight_only_layers),
            ("bc", self.bias_corrected_layers),
        ):
            if layers:
                base += f":{key}={'+'.join(layers)}"
        return base

    @property
    def file_id(self) -> str:
        """The name of the variant's files (`<file_id>.tflite`, `.samples.csv`, ...; DESIGN §10).

        The name itself while it has no per-layer overrides (`int8`, `int8-uint8`, `int8_q`),
        so those files keep their names; with overrides, the name without them plus a short
        hash of the whole name (`int8-k3f9a2c1`): twelve kept layers would otherwise make a
        name longer than a file name may be. The readable `name` stays the variant's identity.
        """
        return file_id_for(self.without_overrides().name, self.name)

    def without_overrides(self) -> VariantSpec:
        """The variant a per-layer override or equalization derives from (`int8` for
        `int8:eq:keep=conv2d`)."""
        return replace(
            self,
            float_layers=(),
            int16_layers=(),
            weight_only_layers=(),
            equalized=False,
            bias_corrected_layers=(),
        )

    @property
    def has_overrides(self) -> bool:
        return bool(
            self.float_layers
            or self.int16_layers
            or self.weight_only_layers
            or self.equalized
            or self.bias_corrected_layers
        )

    @classmethod
    def parse(cls, text: str) -> VariantSpec:
        """Parse a variant name such as `int8-uint8`, `float16+tf` or `int8_q:keep=conv2d`.

        The inverse of `name`; layer lists may come in any order and are sorted.

        Raises:
            QuantLensError: unknown mode, I/O type or override, or options the backend lacks.
        """
        spec = cls._parse_unchecked(text)
        spec.check()
        return spec

    @classmethod
    def _parse_unchecked(cls, text: str) -> VariantSpec:
        from core.errors import QuantLensError

        head, *overrides = text.strip().split(":")
        raw = head.strip().lower()
        select = raw.endswith("+tf")
        raw = raw.removesuffix("+tf")
        quantizer = raw.endswith(QUANTIZER_SUFFIX)
        raw = raw.removesuffix(QUANTIZER_SUFFIX)
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
        layers = _parse_overrides(text, overrides)
        return cls(
            mode=mode,
            io_type=io_type,
            allow_select_tf_ops=select,
            backend=Backend.QUANTIZER if quantizer else Backend.CONVERTER,
            float_layers=layers["keep"],
            int16_layers=layers["int16"],
            weight_only_layers=layers["wo"],
            equalized=bool(layers[EQUALIZE_KEY]),
            bias_corrected_layers=layers["bc"],
        )

    def check(self) -> None:
        """Refuse combinations no backend can make, with one line saying what to use instead.

        Raises:
            QuantLensError: the backend lacks the mode or an option, or the overrides clash.
        """
        from core.errors import QuantLensError

        name = self.name
        if self.equalized and self.mode not in (Mode.INT8, Mode.INT16X8):
            raise QuantLensError(
                f"{name}: equalization evens out activation ranges for a fully quantized model; "
                "use :eq with int8 or int16x8"
            )
        if self.bias_corrected_layers and self.mode is not Mode.INT8:
            raise QuantLensError(
                f"{name}: bc= corrects the biases against the int8 error of an int8 model; use "
                "it with int8 or int8_q"
            )
        if self.bias_corrected_layers and replace(self, bias_corrected_layers=()).has_overrides:
            raise QuantLensError(
                f"{name}: bc= corrects the plain int8 model's error; give it without other "
                "overrides"
            )
        overrides = self.float_layers or self.int16_layers or self.weight_only_layers
        if overrides and self.mode is Mode.FLOAT32:
            raise QuantLensError(
                f"{name}: float32 quantizes nothing, so no layer can be kept in float; give "
                "keep= to a quantized mode such as int8_q"
            )
        if self.backend is Backend.CONVERTER:
            if self.mode in QUANTIZER_ONLY_MODES:
                raise QuantLensError(
                    f"{self.mode} runs on the quantizer backend only; use {self.mode}"
                    f"{QUANTIZER_SUFFIX} (--backend quantizer or both)"
                )
            if (
                self.int16_layers
                or self.weight_only_layers
                or (self.float_layers and self.mode not in CONVERTER_KEEP_MODES)
            ):
                raise QuantLensError(
                    f"{name}: on the converter backend only int8 keeps layers in float (keep=); "
                    f"write {self.mode!s}{QUANTIZER_SUFFIX}:... or use --backend quantizer"
                )
            return
        if self.mode is Mode.FLOAT32:
            raise QuantLensError(
                "float32 is the converter's model the quantizer starts from, so it has no "
                "quantizer variant; use float32"
            )
        if self.allow_select_tf_ops:
            raise QuantLensError(
                f"{name}: the quantizer backend cannot calibrate or run SELECT_TF_OPS models; "
                "drop +tf or use the converter backend"
            )
        if self.int16_layers and self.mode is not Mode.INT8:
            raise QuantLensError(
                f"{name}: int16= gives int16 activations to layers of an int8 model; use it "
                "with int8_q"
            )
        if self.weight_only_layers and self.mode is not Mode.INT8:
            raise QuantLensError(
                f"{name}: wo= quantizes the weights only of layers of an int8 model; use it "
                "with int8_q"
            )
        both = sorted(set(self.float_layers) & set(self.int16_layers))
        if both:
            raise QuantLensError(
                f"{name}: {', '.join(both)} cannot be both kept in float and given int16 "
                "activations; name each layer once"
            )
        twice = sorted(set(self.weight_only_layers) & {*self.float_layers, *self.int16_layers})
        if twice:
            raise QuantLensError(
                f"{name}: {', '.join(twice)} is named by wo= and by keep= or int16=; name each "
                "layer once"
            )

    def to_dict(self) -> dict[str, Any]:
        return (
            {
                "name": self.name,
                "mode": str(self.mode),
                "io_type": None if self.io_type is None else str(self.io_type),
                "allow_select_tf_ops": self.allow_select_tf_ops,
                "backend": str(self.backend),
                "float_layers": list(self.float_layers),
                "int16_layers": list(self.int16_layers),
            }
            | ({"equalized": True} if self.equalized else {})
            | (
                {"weight_only_layers": list(self.weight_only_layers)}
                if self.weight_only_layers
                else {}
            )
            | (
                {"bias_corrected_layers": list(self.bias_corrected_layers)}
                if self.bias_corrected_layers
                else {}
            )
        )


# A name up to this long is shown whole; a longer one shows at most SHOWN_LAYERS layers of each
# `keep=` / `int16=` list (as many as fit in SHOWN_LIST_CHARS, at least one) and "… and N more".
SHOWN_NAME_CHARS = 80
SHOWN_LAYERS = 3
SHOWN_LIST_CHARS = 48


def short_name(name: str) -> str:
    """A variant's name as pages and the CLI table show it: whole when short, else each layer
    list cut to its first layers and "… and N more" (`int8:keep=conv2d+dense … and 10 more`).
    report.json keeps the full name."""
    if len(name) <= SHOWN_NAME_CHARS:
        return name
    head, *overrides = name.split(":")
    parts = [head]
    for override in overrides:
        key, sep, value = override.partition("=")
        layers = value.split("+") if sep else [override]
        shown = layers[:1]
        for layer in layers[1:SHOWN_LAYERS]:
            if len("+".join([*shown, layer])) > SHOWN_LIST_CHARS:
                break
            shown.append(layer)
        text = f"{key}={'+'.join(shown)}" if sep else override
        hidden = len(layers) - len(shown)
        parts.append(f"{text} … and {hidden} more" if hidden else text)
    shown_name = ":".join(parts)
    limit = 2 * SHOWN_NAME_CHARS  # one layer name that is itself very long
    return shown_name if len(shown_name) <= limit else shown_name[: limit - 1] + "…"


def file_id_for(base: str, identity: str) -> str:
    """`base` when the variant is nothing more than `base`, else `base-k<8 hex>`: a short,
    stable file name for a variant whose full `identity` (its name with overrides, and
    whatever else makes it differ) may be arbitrarily long."""
    if identity == base:
        return base
    return f"{base}-k{hashlib.sha256(identity.encode('utf-8')).hexdigest()[:8]}"


def _parse_overrides(text: str, overrides: list[str]) -> dict[str, tuple[str, ...]]:
    """`keep=A+B` and `int16=C` parts of a variant name, each list sorted and de-duplicated."""
    from core.errors import QuantLensError

    found: dict[str, tuple[str, ...]] = {key: () for key in (*_OVERRIDE_KEYS, EQUALIZE_KEY)}
    for part in overrides:
        if part.strip().lower() == EQUALIZE_KEY:
            if found[EQUALIZE_KEY]:
                raise QuantLensError(f"variant {text!r} gives :eq twice; give it once")
            found[EQUALIZE_KEY] = (EQUALIZE_KEY,)
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        names = tuple(sorted({n.strip() for n in value.split("+") if n.strip()}))
        if not sep or key not in _OVERRIDE_KEYS or not names:
            raise QuantLensError(
                f"cannot read {part!r} in variant {text!r}; write eq, keep=LAYER+LAYER or "
                "int16=LAYER after the mode, e.g. int8_q:keep=conv2d+dense"
            )
        if found[key]:
            raise QuantLensError(f"variant {text!r} gives {key}= twice; list its layers once")
        found[key] = names
    return found


def variants_for_backend(names: Sequence[str], backend: str) -> tuple[str, ...]:
    """Variant names for the chosen backend (`converter`, `quantizer` or `both`).

    A name that already says its backend (`int8_q`) is kept as written. With `both`, each
    other name yields its converter variant then its quantizer variant, side by side; modes
    only the quantizer has yield only that one. float32 is always the converter's model, the
    baseline both backends share.

    Raises:
        QuantLensError: an unknown backend, or a name no backend can make.
    """
    from core.errors import QuantLensError

    if backend not in BACKEND_CHOICES:
        raise QuantLensError(f"unknown backend {backend!r}; choose {', '.join(BACKEND_CHOICES)}")
    out: list[str] = []
    for text in names:
        head = text.split(":", 1)[0].strip().lower().removesuffix("+tf")
        explicit = head.endswith(QUANTIZER_SUFFIX)
        parsed = VariantSpec._parse_unchecked(text)  # checked once the backend is known
        if explicit:
            candidates = [parsed]
        elif backend == "converter" or parsed.mode is Mode.FLOAT32:
            # float32 is the baseline both backends share: the converter's model.
            candidates = [replace(parsed, backend=Backend.CONVERTER)]
        elif backend == "quantizer":
            candidates = [replace(parsed, backend=Backend.QUANTIZER)]
        else:
            candidates = [replace(parsed, backend=b) for b in Backend]
            quantizer_only = (
                parsed.mode in QUANTIZER_ONLY_MODES
                or parsed.int16_layers
                or parsed.weight_only_layers
            )
            if quantizer_only or (parsed.float_layers and parsed.mode not in CONVERTER_KEEP_MODES):
                candidates = candidates[1:]
        for spec in candidates:
            spec.check()
            out.append(spec.name)
    return tuple(out)


@dataclass(frozen=True)
class ModelSignature:
    """What QuantLens needs to know to feed a model and read its answer."""

    format: str  # "saved_model" | "keras"
    input_shape: tuple[int | None, ...]  # as declared, batch first (batch may be None)
    input_dtype: str
    height: int
    width: int
    channels: int
    num_classes: int  # 2 for a one-column (sigmoid) head, read as [1 - p, p]
    outputs_probabilities: bool  # False: logits, softmax (sigmoid for one column) is applied
    signature_key: str = "serving_default"
    input_name: str = ""
    output_name: str = ""
    output_columns: int = 0  # the raw output's width when it differs from num_classes (1)

    @property
    def raw_columns(self) -> int:
        """The width of the model's own output rows (1 for a one-sigmoid binary head)."""
        return self.output_columns or self.num_classes

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
    max: float | None = None  # None in summaries written before it was recorded

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

    @property
    def shown_message(self) -> str:
        """The message as the CLI and the dashboard show it: a long variant name summarised."""
        if not self.variant or self.variant == short_name(self.variant):
            return self.message
        return self.message.replace(self.variant, short_name(self.variant))


# This machine's address in a Ray cluster, read by the CLI (--ray-node-ip's default) and by the
# Ray engine (a dashboard server's environment); Ray 2.60 itself does not read it.
RAY_NODE_IP_ENV = "RAY_NODE_IP_ADDRESS"


# Images the slow runtimes (built-in, reference kernels, TFLite-Micro) run on by default.
RUNTIME_SUBSET = 200


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to run one job; serialised as the run directory's job.json."""

    model_path: str
    data_path: str
    variants: tuple[str, ...] = ("float32", "dynamic", "float16", "int8")
    preset: Preset = Preset.MOBILENET_V2
    calibration_samples: int = 100
    max_samples: int | None = None  # evaluation cap; None evaluates every sample
    threads: int | None = None  # None: every core but one (core.engine.pipeline.effective_threads)
    min_agreement_pct: float = DEFAULT_MIN_AGREEMENT_PCT
    latency_runs: int | None = None  # None: time each model for latency_budget_s seconds
    latency_budget_s: float = 2.0
    warmup_runs: int = 5
    seed: int = 0
    labels_file: str | None = None
    trusted: bool = False  # run Lambda layers / custom objects / file ops; recorded on the run
    name: str = ""
    input_size: tuple[int, int] | None = None  # (height, width) for models with None spatial dims
    signature_key: str | None = None  # SavedModel signature; None: serving_default or the only one
    mlflow_uri: str | None = (
        None  # log the finished run to this MLflow tracking URI (core.reporting.tracking)
    )
    verdict: str = "point"  # "point" or "lower-bound" (core.reporting.report.VERDICT_RULES)
    engine: str = "local"  # "local" or "ray" (core.engine.ray_engine evaluates on shards)
    ray_address: str | None = None  # a Ray cluster's HOST:PORT; None starts a local Ray
    ray_node_ip: str | None = None  # this machine's address in the cluster (--ray-node-ip)
    ray_connect_timeout_s: float = 30.0  # connect to the cluster's first answer, at most
    auto_fix: int | None = (
        None  # the fix ladder for variants below the bar; K: most layers kept float
    )
    fix: str | None = None  # "integer-only": the ladder's rungs that keep the model integer-only
    fix_budget: int | None = None  # candidate evaluations per variant (None: the default)
    fix_seed: int = 0  # the seed of the fix search's split into selection and held-out images
    # Calibration (issue 13): a separate set (nothing held out), or calibrate on images that are
    # also evaluated; by default they are held out when the data set has 2x calibration_samples.
    calibration_data: str | None = None
    calibration_overlap: bool = False
    calibration_sweep: tuple[int, ...] = ()  # calibration sizes to sweep int8/int16x8 over
    sweep_seeds: int = 3  # draws per sweep size
    runtimes: tuple[Runtime, ...] = ()  # the runtime matrix's runtimes; () runs none
    runtime_images: int | None = RUNTIME_SUBSET  # the slow runtimes' subset; None: every image
    # Where the model will run (core.reporting.targets.Target): the recommendation's target.
    target: str = "cpu"
    arena_kb: float | None = None  # the largest TFLite-Micro arena the mcu target allows
    perturb: bool = False  # the flip hunt: agreement under small perturbations

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preset"] = str(self.preset)
        d["variants"] = list(self.variants)
        d["calibration_sweep"] = list(self.calibration_sweep)
        d["runtimes"] = [str(r) for r in self.runtimes]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobSpec:
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["variants"] = tuple(kwargs.get("variants", cls.variants))
        kwargs["preset"] = Preset(kwargs.get("preset", Preset.MOBILENET_V2))
        if kwargs.get("input_size"):
            kwargs["input_size"] = tuple(kwargs["input_size"])
        kwargs["calibration_sweep"] = tuple(kwargs.get("calibration_sweep", ()))
        kwargs["runtimes"] = tuple(Runtime(r) for r in kwargs.get("runtimes", ()))
        return cls(**kwargs)


def parse_sweep_sizes(text: str | None) -> tuple[int, ...]:
    """`10,50,100` -> (10, 50, 100), sorted and de-duplicated; () when no sweep (None, or
    blank as Setup's field leaves it).

    Raises:
        QuantLensError: a size that is not a whole number of at least 1.
    """
    from core.errors import QuantLensError

    if text is None or not text.strip():
        return ()
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise QuantLensError(
            f"calibration sweep sizes are whole numbers such as 10,25,50,100; got {text!r}"
        ) from None
    if not sizes or sizes[0] < 1:
        raise QuantLensError(
            f"calibration sweep sizes are at least 1, such as 10,25,50,100; got {text!r}"
        )
    return tuple(sizes)


class Runtime(enum.StrEnum):
    """A runtime a variant can be evaluated under, for the runtime matrix (the same `.tflite`
    file, other kernels: the host's answer is not always the device's)."""

    XNNPACK = "xnnpack"  # LiteRT with XNNPACK at the run's threads: the run's own evaluation
    XNNPACK1 = "xnnpack1"  # LiteRT with XNNPACK at 1 thread
    BUILTIN = "builtin"  # LiteRT's built-in kernels, no default delegate, 1 thread
    REFERENCE = "reference"  # LiteRT's reference kernels (BUILTIN_REF), 1 thread: MCU stand-in
    TFLM = "tflm"  # TFLite-Micro itself, integer-only variants, when its runtime is installed

    @property
    def label(self) -> str:
        """How a table heads this runtime's column."""
        return RUNTIME_LABELS[self]

    @property
    def on_subset(self) -> bool:
        """Evaluated on a bounded seeded subset by default (13-67x slower than XNNPACK)."""
        return self in (Runtime.BUILTIN, Runtime.REFERENCE, Runtime.TFLM)


RUNTIME_LABELS = {
    Runtime.XNNPACK: "XNNPACK (run's threads)",
    Runtime.XNNPACK1: "XNNPACK, 1 thread",
    Runtime.BUILTIN: "built-in kernels",
    Runtime.REFERENCE: "reference kernels",
    Runtime.TFLM: "TFLite-Micro",
}


def parse_runtimes(text: str | None) -> tuple[Runtime, ...]:
    """`xnnpack,builtin,reference,tflm` -> those runtimes in the matrix's column order; ()
    when none (None or blank).

    Raises:
        QuantLensError: an unknown runtime name.
    """
    from core.errors import QuantLensError

    if text is None or not text.strip():
        return ()
    chosen: set[Runtime] = set()
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        try:
            chosen.add(Runtime(part))
        except ValueError:
            names = ",".join(r.value for r in Runtime)
            raise QuantLensError(
                f"unknown runtime {part!r}; choose from {names} (comma-separated)"
            ) from None
    return tuple(r for r in Runtime if r in chosen)
