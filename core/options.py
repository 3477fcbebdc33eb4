"""The run options, each declared once.

`RUN_OPTIONS` lists every option of `python -m core run` and every field of `JobSpec`. From it
come the `run` (and `rescore`) command's arguments (`add_cli_arguments`), the `JobSpec` built
from parsed arguments (`job_from_values`), the command that reproduces a job
(`reproduce_command`) and the Setup page's widgets (`setup_options`; `ui/setup_form.py` maps a
widget kind to its Streamlit call, since core never imports Streamlit).

Adding an option is one `RunOption` in `RUN_OPTIONS` (and a `JobSpec` field when the job
carries it) plus the code that uses it, for example:

    RunOption(
        "fix_budget",                      # argparse dest, Setup's name for it
        ("--fix-budget",),
        value_type=int,
        help="... (default 5)",
        field="fix_budget",                # the JobSpec field it fills (default: JobSpec's)
        checks=(at_least(1),),             # one-line refusals, the same on the CLI and Setup
        in_command=InCommand.UNLESS_DEFAULT,
        widget=SetupWidget(WidgetKind.NUMBER, "Fix budget", key="setup.fix_budget", minimum=1),
    )

`tests/core/test_options.py` checks that every `JobSpec` field is declared;
`tests/app/test_setup_options.py` that one added entry reaches the parser, the job, the
reproduce command and Setup.
"""

from __future__ import annotations

import argparse
import enum
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any

from core.errors import QuantLensError
from core.reporting.report import VERDICT_LOWER_BOUND, VERDICT_POINT, VERDICT_RULES
from core.reporting.targets import PROFILES, Target
from core.types import (
    BACKEND_CHOICES,
    RAY_NODE_IP_ENV,
    RUNTIME_SUBSET,
    JobSpec,
    Mode,
    Preset,
    Runtime,
    VariantSpec,
    parse_runtimes,
    parse_sweep_sizes,
    variants_for_backend,
)

EXPORT_MODEL_EXPLORER = "model-explorer"
EXPORT_HELP = (
    "model-explorer: write <variant>.model-explorer.json per diagnosed variant, node data "
    "that colours the variant's .tflite by per-layer error in Google's Model Explorer"
)

# Parsed values by argparse dest (`vars(args)`); a check or a conversion may read the others.
Values = Mapping[str, Any]
# A check refuses a parsed value with one line (QuantLensError): (option, value, all values).
Check = Callable[["RunOption", Any, Values], None]
# Turns a checked parsed value into the JobSpec field's value: (value, all values).
ToJob = Callable[[Any, Values], Any]


class _Unset(enum.Enum):
    """A default left to JobSpec (a dataclass cannot take MISSING as a field's default)."""

    TOKEN = "unset"


UNSET = _Unset.TOKEN


class InCommand(enum.Enum):
    """Whether the reproduce command repeats an option."""

    NEVER = "never"  # not part of the job (where to write, limits) or implied by another option
    ALWAYS = "always"
    UNLESS_DEFAULT = "unless default"  # only when the job's value differs from JobSpec's default


class WidgetKind(enum.StrEnum):
    """The Setup widget an option gets; ui/setup_form.py maps each to its Streamlit call."""

    NUMBER = "number"  # number_input
    SLIDER = "slider"
    TEXT = "text"  # text_input
    TOGGLE = "toggle"
    CHECKBOX = "checkbox"
    RADIO = "radio"
    SELECT = "select"  # selectbox
    MULTISELECT = "multiselect"


@dataclass(frozen=True)
class SetupWidget:
    """How Setup asks for an option: the widget, its words, its limits and its first value.

    `key` names the widget's session state and its place in the form Setup remembers across
    reloads (`remember`: False for what is per run). `choices` are the widget's when they are
    not the option's (the modes Setup offers); `choice_labels` replace a choice's shown text,
    `choice_help` follows it in brackets (a select box) or explains it in the widget's help.
    `default` is the form's first value when it is not the CLI's. `zero_is_none`: the number 0
    stands for the job's None ("0 = all").
    """

    kind: WidgetKind
    label: str
    key: str
    help: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    placeholder: str | None = None
    max_chars: int | None = None
    choices: tuple[str, ...] | None = None
    choice_labels: Mapping[str, str] | None = None
    choice_help: Mapping[str, str] | None = None
    default: Any = UNSET
    zero_is_none: bool = False
    remember: bool = True


@dataclass(frozen=True)
class RunOption:
    """One option of a run, declared once.

    `name` is its argparse dest and its name in Setup's values. `field` is the JobSpec field
    it fills; `shapes` names the field another option builds with its help (`--backend` shapes
    `variants`); an option with neither governs the command itself (`--out`, `--timeout`).
    `default` is the CLI's; UNSET means the JobSpec field's own default. `to_job` turns the
    parsed value into the field's value (identity when None); `to_text` writes the field's
    value into the reproduce command (str when None).
    """

    name: str
    flags: tuple[str, ...]  # () for a positional argument
    help: str | None = None
    value_type: Callable[[str], Any] | None = None  # argparse's type
    default: Any = UNSET
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    nargs: str | None = None
    const: Any = None
    is_flag: bool = False  # store_true
    field: str | None = None
    shapes: str | None = None
    checks: tuple[Check, ...] = ()
    to_job: ToJob | None = None
    in_command: InCommand = InCommand.NEVER
    command_when: Callable[[JobSpec], bool] | None = None  # extra condition to repeat it
    to_text: Callable[[Any], str] | None = None
    widget: SetupWidget | None = None
    commands: tuple[str, ...] = ("run",)  # the subcommands that take it

    @property
    def flag(self) -> str:
        """How messages name the option: its first flag, else its name."""
        return self.flags[0] if self.flags else self.name

    @property
    def cli_default(self) -> Any:
        """The parser's default: as declared, else the JobSpec field's default."""
        if self.default is not UNSET:
            return self.default
        if self.is_flag:
            return False
        if self.field is not None:
            return job_default(self.field)
        return None

    @property
    def form_default(self) -> Any:
        """Setup's first value for the widget."""
        if self.widget is not None and self.widget.default is not UNSET:
            return self.widget.default
        return self.cli_default

    @property
    def form_choices(self) -> tuple[str, ...]:
        """The choices Setup offers (a radio's, a select box's, a multiselect's): the widget's,
        else the option's, else those the widget labels or explains."""
        widget = self.widget
        if widget is not None and widget.choices is not None:
            return widget.choices
        if self.choices is not None:
            return self.choices
        if widget is not None:
            return tuple(widget.choice_labels or widget.choice_help or ())
        return ()


def job_default(field_name: str) -> Any:
    """JobSpec's default for a field (MISSING for model_path and data_path)."""
    for f in fields(JobSpec):
        if f.name == field_name:
            if f.default is not MISSING:
                return f.default
            return MISSING
    raise KeyError(field_name)


# -- checks: one line each, naming the flag, what is wrong and how to fix it --------------------
def at_least(low: float) -> Check:
    def check(option: RunOption, value: Any, values: Values) -> None:
        if value is not None and value < low:
            raise QuantLensError(f"{option.flag} must be at least {low}; got {value}")

    return check


def above_zero_limit(option: RunOption, value: Any, values: Values) -> None:
    """A limit of 0 would stop every job at once; there is no "no limit" value, only large ones."""
    if value is not None and not value > 0:  # also refuses NaN
        raise QuantLensError(
            f"{option.flag} must be greater than 0; got {value:g} (leave it out for the default)"
        )


def _positive_seconds(option: RunOption, value: Any, values: Values) -> None:
    if value <= 0:
        raise QuantLensError(f"{option.flag} is a number of seconds above 0; got {value:g}")


def _percentage(option: RunOption, value: Any, values: Values) -> None:
    if not 0 <= value <= 100:
        raise QuantLensError(f"{option.flag} is a percentage from 0 to 100; got {value:g}")


def _existing(what: str) -> Check:
    def check(option: RunOption, value: Any, values: Values) -> None:
        if value is not None and not Path(value).exists():
            raise QuantLensError(f"{what} path {value} does not exist; check the path")

    return check


def _existing_calibration_set(option: RunOption, value: Any, values: Values) -> None:
    if value is None:
        return
    if not Path(value).exists():
        raise QuantLensError(f"{option.flag} {value} does not exist; check the path")
    if values.get("calibration_overlap"):
        raise QuantLensError(
            "--calibration-overlap draws from --data, --calibration-data from another set; "
            "give one of them"
        )


def _needs_ray(drop: str) -> Check:
    def check(option: RunOption, value: Any, values: Values) -> None:
        if value and values.get("engine") != "ray":
            raise QuantLensError(
                f"{option.flag} {value} needs --engine ray; add it, or drop the {drop}"
            )

    return check


# -- conversions from parsed values to the job's -----------------------------------------------
def _resolved(value: Any, values: Values) -> str | None:
    return str(Path(value).resolve()) if value else None


def _input_size(value: Any, values: Values) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise QuantLensError(f"--input-size takes HxW such as 224x224; got {value!r}") from None
    return (h, w)


def _node_ip(value: Any, values: Values) -> str | None:
    """--ray-node-ip, else RAY_NODE_IP_ADDRESS; only the Ray engine has a node address."""
    if values.get("engine") != "ray":
        return None
    return value or os.environ.get(RAY_NODE_IP_ENV, "").strip() or None


def _tracking_uri(value: Any, values: Values) -> str | None:
    """The tracking URI of `--mlflow`, refused before any work when MLflow cannot log there."""
    from core.reporting.tracking import missing_package, resolve_uri

    uri = resolve_uri(value)
    missing = missing_package(uri) if uri else None
    if missing:
        raise QuantLensError(missing)
    return uri


def _variants(value: Any, values: Values) -> tuple[str, ...]:
    """--modes, on --backend, with --select-tf-ops and --keep-float: the job's variant names."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    if values.get("select_tf_ops"):
        names = [with_select_tf_ops(v) for v in names]
    variants = variants_for_backend(names, values.get("backend") or "converter")
    if values.get("keep_float") is not None:
        variants = with_keep_float(variants, values["keep_float"])
    if not variants:
        raise QuantLensError(
            "--modes is empty; give at least one of float32,dynamic,float16,int8,int16x8"
        )
    if len(set(variants)) != len(variants):
        raise QuantLensError(f"--modes names a variant twice ({value}); list each once")
    return variants


def with_keep_float(variants: tuple[str, ...], layers_text: str) -> tuple[str, ...]:
    """Each variant that can keep layers in float, followed by its derived `:keep=` variant.

    Raises:
        QuantLensError: no layer named, or no selected variant can keep layers in float.
    """
    layers = tuple(sorted({n.strip() for n in layers_text.split(",") if n.strip()}))
    if not layers:
        raise QuantLensError(
            "--keep-float names no layer; give Keras layer names, e.g. conv2d,dense"
        )
    out: list[str] = []
    for name in variants:
        out.append(name)
        spec = VariantSpec.parse(name)
        if spec.float_layers or spec.int16_layers:
            continue
        derived = replace(spec, float_layers=layers)
        try:
            derived.check()
        except QuantLensError:
            continue  # this mode cannot keep layers float on its backend (float16, float32)
        out.append(derived.name)
    if len(out) == len(variants):
        raise QuantLensError(
            "--keep-float needs an int8 variant (or a quantizer variant) to derive from; add int8 "
            "to --modes"
        )
    return tuple(out)


def with_select_tf_ops(name: str) -> str:
    """`int8` -> `int8+tf`; the flag goes before any per-layer override (`:keep=...`)."""
    head, sep, rest = name.partition(":")
    return (head if head.endswith("+tf") else head + "+tf") + sep + rest


def exact_number(value: float) -> str:
    """`95` rather than `95.0`, but never rounded: `:g` alone turns 99.99999 into 100."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _runtimes(value: Any, values: Values) -> tuple[Runtime, ...]:
    """--runtimes as a comma-separated string (the CLI) or a list (Setup's multiselect)."""
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    return parse_runtimes(value)


def _joined(value: Any) -> str:
    return ",".join(str(v) for v in value)


DEFAULT_MODES = _joined(JobSpec.variants)


# -- the declaration ----------------------------------------------------------------------------
# In the order the reproduce command writes them (and `run --help` lists them).
RUN_OPTIONS: tuple[RunOption, ...] = (
    RunOption(
        "model",
        (),
        help="SavedModel folder, .keras file or .zip of a SavedModel",
        nargs="?",
        field="model_path",
        checks=(_existing("model"),),
        to_job=_resolved,
        in_command=InCommand.ALWAYS,
    ),
    RunOption(
        "data",
        ("--data",),
        help="CSV (filepath,label), class-folder tree or .zip of either",
        default=None,
        field="data_path",
        checks=(_existing("data"),),
        to_job=_resolved,
        in_command=InCommand.ALWAYS,
    ),
    RunOption(
        "modes",
        ("--modes",),
        default=DEFAULT_MODES,
        help=f"comma-separated variants (default {DEFAULT_MODES}); also int8-uint8, int8-float32, int16x8, int4w (quantizer only); append +tf to allow SELECT_TF_OPS; on the quantizer, :keep=LAYER+LAYER keeps layers in float and :int16=LAYER gives them int16 activations",
        field="variants",
        to_job=_variants,
        in_command=InCommand.ALWAYS,
        to_text=_joined,
        # Setup offers modes; the int8 I/O type and the backend make the variant names.
        widget=SetupWidget(
            WidgetKind.MULTISELECT,
            "Quantization modes",
            key="setup.modes",
            choices=tuple(m.value for m in Mode),
            choice_help={
                "float32": "plain conversion, the honest TFLite baseline",
                "dynamic": "int8 weights, float activations",
                "float16": "float16 weights",
                "int8": "full integer; needs calibration images",
                "int16x8": "int16 activations, int8 weights",
                "int4w": "int4 weights, float activations; quantizer backend only",
            },
            default=JobSpec.variants,
        ),
    ),
    RunOption(
        "backend",
        ("--backend",),
        default="converter",
        choices=BACKEND_CHOICES,
        help="converter (a TFLiteConverter run per mode, default), quantizer (LiteRT Quantizer recipes on one float32 conversion; names end in _q) or both side by side",
        shapes="variants",
        widget=SetupWidget(
            WidgetKind.RADIO,
            "Backend",
            key="setup.backend",
            help="converter: a TFLiteConverter run per mode. quantizer: LiteRT Quantizer "
            "recipes on one float32 conversion (variant names end in _q). both: side by side.",
            remember=False,
        ),
    ),
    RunOption(
        "select_tf_ops",
        ("--select-tf-ops",),
        is_flag=True,
        help="allow the SELECT_TF_OPS fallback for every mode",
        shapes="variants",
        widget=SetupWidget(
            WidgetKind.TOGGLE,
            "Allow SELECT_TF_OPS",
            key="setup.select_tf_ops",
            help="Fall back to TensorFlow ops the TFLite builtins lack.",
        ),
    ),
    RunOption(
        "keep_float",
        ("--keep-float",),
        default=None,
        metavar="LAYER[,LAYER]",
        help="also run each int8 (or quantizer) variant with these Keras layers kept in float, "
        "as a variant derived from it (int8:keep=LAYER+LAYER)",
        shapes="variants",
    ),
    RunOption(
        "preprocess",
        ("--preprocess",),
        default=str(JobSpec.preset),
        choices=tuple(str(p) for p in Preset),
        field="preset",
        to_job=lambda value, values: Preset(value),
        in_command=InCommand.ALWAYS,
        widget=SetupWidget(
            WidgetKind.SELECT,
            "Preset",
            key="setup.preset",
            help="How decoded RGB pixels become the float input; the same array feeds both models.",
            choice_help={
                "mobilenet_v2": "[-1, 1]",
                "unit": "[0, 1]",
                "raw": "[0, 255]",
                "caffe": "BGR minus ImageNet mean",
                "torch": "ImageNet mean / std",
            },
        ),
    ),
    RunOption(
        "calibration_samples",
        ("--calibration-samples",),
        value_type=int,
        help="images int8/int16x8 are calibrated with (default 100); held out of evaluation "
        "when the data set has at least twice as many",
        field="calibration_samples",
        checks=(at_least(1),),
        in_command=InCommand.ALWAYS,
        widget=SetupWidget(
            WidgetKind.NUMBER,
            "Calibration samples",
            key="setup.calibration_samples",
            minimum=1,
            maximum=10_000,
            step=10,
            help="Drawn from the data with a fixed seed (int8, int16x8) and held out of "
            "evaluation when the data set has at least twice as many.",
        ),
    ),
    RunOption(
        "min_agreement",
        ("--min-agreement",),
        value_type=float,
        help="top-1 agreement %% a variant needs to PASS",
        field="min_agreement_pct",
        checks=(_percentage,),
        in_command=InCommand.ALWAYS,
        to_text=exact_number,
        widget=SetupWidget(
            WidgetKind.SLIDER,
            "Agreement threshold (%)",
            key="setup.threshold",
            minimum=50.0,
            maximum=100.0,
            step=0.5,
        ),
    ),
    RunOption(
        "verdict",
        ("--verdict",),
        choices=VERDICT_RULES,
        help="judge each variant by its agreement (point, default) or by the lower end of its "
        "95 %% Wilson interval (lower-bound: a PASS that sampling noise cannot explain)",
        field="verdict",
        in_command=InCommand.UNLESS_DEFAULT,
        widget=SetupWidget(
            WidgetKind.RADIO,
            "Verdict",
            key="setup.verdict",
            help="Lower bound: a variant passes only when the low end of its 95 % Wilson "
            "interval meets the threshold, so a PASS on a few images cannot be luck. Exit "
            "codes follow it.",
            choice_labels={
                VERDICT_POINT: "point: agreement ≥ threshold",
                VERDICT_LOWER_BOUND: "lower bound: 95 % CI low end ≥ threshold",
            },
        ),
    ),
    RunOption(
        "target",
        ("--target",),
        choices=tuple(str(t) for t in Target),
        help="where the model will run, for the recommendation: cpu (LiteRT with XNNPACK, "
        "default), integer-only (an NPU or Edge TPU-like accelerator: every op in integers), "
        "mcu (TFLite-Micro: integer-only, its kernels, an arena within --arena-kb) or gpu "
        "(not evaluated on a machine without one)",
        field="target",
        in_command=InCommand.UNLESS_DEFAULT,
        widget=SetupWidget(
            WidgetKind.RADIO,
            "Target",
            key="setup.target",
            help="Where the model will run. The recommendation excludes what the target cannot "
            "run, with the reason; the Targets page shows every target's pick.",
            choice_labels={str(t): f"{t}: {PROFILES[t].title}" for t in Target},
        ),
    ),
    RunOption(
        "arena_kb",
        ("--arena-kb",),
        value_type=float,
        help="the largest TFLite-Micro arena in KiB the mcu target has room for (default: no "
        "limit)",
        field="arena_kb",
        checks=(at_least(1),),
        in_command=InCommand.UNLESS_DEFAULT,
        to_text=exact_number,
        widget=SetupWidget(
            WidgetKind.NUMBER,
            "MCU arena limit (KiB, 0 = none; mcu target only)",
            key="setup.arena_kb",
            minimum=0,
            step=16,
            default=0,
            zero_is_none=True,
        ),
    ),
    RunOption(
        "perturb",
        ("--perturb",),
        is_flag=True,
        help="flip hunt: each variant's agreement under brightness ±10 %%, JPEG quality 75, a "
        "92 %% crop and noise σ=2/255, on the images whose original answer did not change "
        "(runs every model five more times)",
        field="perturb",
        in_command=InCommand.UNLESS_DEFAULT,
        widget=SetupWidget(
            WidgetKind.CHECKBOX,
            "Flip hunt under small perturbations",
            key="setup.perturb",
            help="Agreement under brightness ±10 %, JPEG quality 75, a 92 % crop and noise "
            "σ=2/255, counted on the images whose original answer did not change. Runs every "
            "model five more times.",
        ),
    ),
    RunOption(
        "latency_runs",
        ("--latency-runs",),
        value_type=int,
        help="timed runs per model (default: as many as fit in --latency-budget, 10 to 1000)",
        field="latency_runs",
        checks=(at_least(1),),
        in_command=InCommand.UNLESS_DEFAULT,
    ),
    RunOption(
        "latency_budget",
        ("--latency-budget",),
        value_type=float,
        help="seconds of timing per model when --latency-runs is not given (default: 2)",
        field="latency_budget_s",
        checks=(at_least(0.01),),
        in_command=InCommand.UNLESS_DEFAULT,
        to_text=exact_number,
    ),
    RunOption(
        "samples",
        ("--samples",),
        value_type=int,
        help="evaluate at most N images (seeded draw from those not held out for calibration)",
        field="max_samples",
        checks=(at_least(1),),
        in_command=InCommand.UNLESS_DEFAULT,
        widget=SetupWidget(
            WidgetKind.NUMBER,
            "Evaluation sample cap (0 = all)",
            key="setup.max_samples",
            minimum=0,
            maximum=10**9,
            step=100,
            default=0,
            zero_is_none=True,
        ),
    ),
    RunOption(
        "threads",
        ("--threads",),
        value_type=int,
        help="threads for both models (default: every usable CPU but one)",
        field="threads",
        checks=(at_least(1),),
        in_command=InCommand.UNLESS_DEFAULT,
        # Setup's limits and first value are this machine's CPUs (ui/setup_form.py fills them).
        widget=SetupWidget(WidgetKind.NUMBER, "Threads", key="setup.threads", minimum=1),
    ),
    RunOption(
        "input_size",
        ("--input-size",),
        help="HxW, for models whose spatial size is None",
        field="input_size",
        to_job=_input_size,
        in_command=InCommand.UNLESS_DEFAULT,
        to_text=lambda size: f"{size[0]}x{size[1]}",
    ),
    RunOption(
        "signature",
        ("--signature",),
        help="SavedModel signature to compare (default serving_default)",
        field="signature_key",
        in_command=InCommand.UNLESS_DEFAULT,
    ),
    RunOption(
        "labels",
        ("--labels",),
        help="labels.txt with one class name per line",
        field="labels_file",
        to_job=_resolved,
        in_command=InCommand.UNLESS_DEFAULT,
    ),
    RunOption(
        "trusted",
        ("--trusted",),
        is_flag=True,
        help="allow Lambda layers, custom objects and file ops: only for models you trust",
        field="trusted",
        in_command=InCommand.UNLESS_DEFAULT,
        # Setup asks for it only when the operator allows it, and with a confirmation.
        widget=SetupWidget(
            WidgetKind.TOGGLE,
            "Trusted model",
            key="setup.trusted",
            help="Runs the model's own code: Lambda layers, custom objects, .h5 files and "
            "file-system ops. Only for models whose author you trust.",
            remember=False,
        ),
    ),
    RunOption(
        "engine",
        ("--engine",),
        choices=("local", "ray"),
        help="local (this machine, default) or ray (decode and evaluate on a Ray cluster's "
        "shards; conversion and latency stay on this machine)",
        field="engine",
        in_command=InCommand.UNLESS_DEFAULT,
        widget=SetupWidget(
            WidgetKind.RADIO,
            "Engine",
            key="setup.engine",
            help="Ray decodes and evaluates the images on the cluster's workers; conversion "
            "and latency stay on this machine. Every node must see the data set at the same "
            "path.",
            remember=False,
        ),
    ),
    RunOption(
        "ray_address",
        ("--ray-address",),
        metavar="ADDR",
        help="HOST:PORT of a running Ray cluster (printed by `ray start --head`); without it "
        "--engine ray starts a local Ray sized to this machine",
        field="ray_address",
        checks=(_needs_ray("address"),),
        in_command=InCommand.UNLESS_DEFAULT,
    ),
    RunOption(
        "ray_node_ip",
        ("--ray-node-ip",),
        metavar="IP",
        help="this machine's address in the Ray cluster, as its nodes are bound (`ray start "
        "--node-ip-address`), such as 127.0.0.1 for a cluster on loopback (default: "
        "RAY_NODE_IP_ADDRESS, else Ray's choice)",
        field="ray_node_ip",
        checks=(_needs_ray("option"),),
        to_job=_node_ip,
        in_command=InCommand.UNLESS_DEFAULT,
    ),
    RunOption(
        "ray_connect_timeout",
        ("--ray-connect-timeout",),
        value_type=float,
        metavar="S",
        help=f"seconds to join the Ray cluster (or start the local Ray) before the run fails "
        f"(default {JobSpec.ray_connect_timeout_s:g})",
        field="ray_connect_timeout_s",
        checks=(_positive_seconds,),
        in_command=InCommand.UNLESS_DEFAULT,
        to_text=exact_number,
    ),
    RunOption(
        "mlflow",
        ("--mlflow",),
        nargs="?",
        const="",
        metavar="URI",
        help="log the run to MLflow, a nested run per variant: alone, the workspace store "
        "(sqlite:///<workspace>/mlflow.db); or a tracking URI such as http://host:5000 "
        "(write --mlflow=URI before MODEL)",
        field="mlflow_uri",
        to_job=_tracking_uri,
        in_command=InCommand.UNLESS_DEFAULT,
        # Setup: a switch plus an allow-listed server (ui/setup_form.tracking_option).
        widget=SetupWidget(
            WidgetKind.TOGGLE,
            "Log to MLflow",
            key="setup.mlflow",
            help="One MLflow run for this run and a nested run per variant, with the .tflite "
            "files and reports, logged by the worker once the run ends.",
            remember=False,
        ),
    ),
    RunOption(
        "auto_fix",
        ("--auto-fix",),
        nargs="?",
        value_type=int,
        const=5,
        metavar="K",
        help="for each int8 (or quantizer) variant below --min-agreement, run the fix ladder, "
        "cheapest first: cross-layer equalization, 16-bit activations for the culprit chain, "
        "then up to K layers (default 5) kept in float; each rung is measured on a seeded half "
        "of the images and the chosen fix, a derived variant, is judged on the other half "
        "(write --auto-fix=K before MODEL)",
        field="auto_fix",
        checks=(at_least(1),),
        in_command=InCommand.UNLESS_DEFAULT,
    ),
    RunOption(
        "fix",
        ("--fix",),
        choices=("integer-only",),
        help="with --auto-fix: only the rungs that keep the model integer-only (no float "
        "compute), for NPUs, Edge TPUs and microcontrollers",
        field="fix",
        in_command=InCommand.UNLESS_DEFAULT,
    ),
    RunOption(
        "fix_budget",
        ("--fix-budget",),
        value_type=int,
        metavar="N",
        help="with --auto-fix: at most N candidate evaluations per variant (default 24); a "
        "count, not seconds, so every machine derives the same fix",
        field="fix_budget",
        checks=(at_least(1),),
        in_command=InCommand.UNLESS_DEFAULT,
    ),
    RunOption(
        "fix_seed",
        ("--fix-seed",),
        value_type=int,
        metavar="SEED",
        help="with --auto-fix: the seed that splits the images into those that choose a fix "
        "and those that judge it (default 0)",
        field="fix_seed",
        checks=(at_least(0),),
        in_command=InCommand.UNLESS_DEFAULT,
    ),
    RunOption(
        "calibration_data",
        ("--calibration-data",),
        metavar="PATH",
        help="calibrate on this separate set (CSV, folder or .zip, as --data); nothing is "
        "held out of --data then",
        field="calibration_data",
        checks=(_existing_calibration_set,),
        to_job=_resolved,
        in_command=InCommand.UNLESS_DEFAULT,
        widget=SetupWidget(
            WidgetKind.TEXT,
            "Separate calibration set (optional path)",
            key="setup.calibration_data",
            placeholder="/data/calibration.csv, a class-folder tree or a .zip",
            help="Calibrate int8 on these images instead of drawing them from the data set; "
            "nothing is held out of evaluation then.",
            default="",
            remember=False,
        ),
    ),
    RunOption(
        "calibration_overlap",
        ("--calibration-overlap",),
        is_flag=True,
        help="draw calibration images from the whole data set, also evaluated (the old "
        "behaviour); by default they are held out",
        field="calibration_overlap",
        in_command=InCommand.UNLESS_DEFAULT,
        widget=SetupWidget(
            WidgetKind.CHECKBOX,
            "Calibrate on evaluated images too",
            key="setup.calibration_overlap",
            help="Off (default): calibration images are held out of evaluation when the data "
            "set has at least twice the calibration count.",
        ),
    ),
    RunOption(
        "calibration_sweep",
        ("--calibration-sweep",),
        default=None,
        metavar="N,N,...",
        help="also quantize int8 (and int16x8) with each of these calibration sizes and "
        "--sweep-seeds draws, on the quantizer backend, and evaluate each on the run's images",
        field="calibration_sweep",
        to_job=lambda value, values: parse_sweep_sizes(value),
        in_command=InCommand.UNLESS_DEFAULT,
        to_text=_joined,
        widget=SetupWidget(
            WidgetKind.TEXT,
            "Calibration sweep sizes (optional)",
            key="setup.calibration_sweep",
            placeholder="10,25,50,100,200",
            help="After the run's own results: int8 and int16x8 quantized with each number of "
            "calibration images and each seed (quantizer backend), each evaluated on the run's "
            "images. The Agreement page plots agreement and KL against the size.",
            default="",
        ),
    ),
    RunOption(
        "sweep_seeds",
        ("--sweep-seeds",),
        value_type=int,
        metavar="S",
        help="calibration draws per sweep size (default 3)",
        field="sweep_seeds",
        checks=(at_least(1),),
        in_command=InCommand.ALWAYS,
        command_when=lambda job: bool(job.calibration_sweep),
        widget=SetupWidget(
            WidgetKind.NUMBER,
            "Seeds per size",
            key="setup.sweep_seeds",
            minimum=1,
            maximum=10,
            help="Draws of calibration images per size: the spread says how much the choice "
            "of images matters.",
        ),
    ),
    RunOption(
        "runtimes",
        ("--runtimes",),
        default=None,
        metavar="R,R,...",
        help="also evaluate every variant under these runtimes: xnnpack (the run's threads), "
        "xnnpack1 (1 thread), builtin (built-in kernels), reference (reference kernels, what "
        "TFLite-Micro matches), tflm (TFLite-Micro, integer-only variants); builtin, "
        "reference and tflm run on --runtime-images images",
        field="runtimes",
        to_job=_runtimes,
        in_command=InCommand.UNLESS_DEFAULT,
        to_text=_joined,
        widget=SetupWidget(
            WidgetKind.MULTISELECT,
            "Runtimes (optional)",
            key="setup.runtimes",
            help="Evaluate each variant's .tflite under other kernels too: the answers of "
            "XNNPACK, the built-in and the reference kernels (a microcontroller's stand-in) "
            "and TFLite-Micro can differ. The slow kernels run at 1 thread on a seeded "
            f"subset of {RUNTIME_SUBSET} images.",
            choice_labels={str(r): r.label for r in Runtime},
            default=[],
        ),
    ),
    RunOption(
        "runtime_images",
        ("--runtime-images",),
        value_type=int,
        metavar="N",
        help=f"images the built-in and reference kernels and TFLite-Micro run on, drawn with "
        f"the run's seed (default {RUNTIME_SUBSET}; 0 = every image)",
        field="runtime_images",
        checks=(at_least(0),),
        to_job=lambda value, values: value or None,
        in_command=InCommand.UNLESS_DEFAULT,
        command_when=lambda job: bool(job.runtimes),
        to_text=lambda value: "0" if value is None else str(value),
    ),
    RunOption(
        "name",
        ("--name",),
        help="a name for the run in the history",
        field="name",
        widget=SetupWidget(
            WidgetKind.TEXT,
            "Run name (optional)",
            key="setup.run_name",
            max_chars=120,
            help="Left empty, the run is named after the model and the time: saved_model · 14:03.",
            remember=False,
        ),
    ),
    # Fixed for every run: recorded in job.json and report.json, asked for nowhere.
    RunOption("warmup_runs", (), field="warmup_runs"),
    RunOption("seed", (), field="seed"),
    # How the command runs the job, not the job itself.
    RunOption(
        "out",
        ("--out",),
        default=None,
        help="run folder for report.json and the .tflite files",
    ),
    RunOption(
        "timeout",
        ("--timeout",),
        value_type=float,
        default=None,
        help="wall-clock limit of the job in seconds, > 0 (default 3600)",
        checks=(above_zero_limit,),
        commands=("run", "rescore"),
    ),
    RunOption(
        "memory_gb",
        ("--memory-gb",),
        value_type=float,
        default=None,
        help="memory limit of the worker, > 0 (default 16)",
        checks=(above_zero_limit,),
        commands=("run", "rescore"),
    ),
    RunOption(
        "report",
        ("--report",),
        choices=("json", "html"),
        default="json",
        help="html also writes report.html",
        commands=("run", "rescore"),
    ),
    RunOption(
        "export",
        ("--export",),
        choices=(EXPORT_MODEL_EXPLORER,),
        default=None,
        help=EXPORT_HELP,
        commands=("run", "rescore"),
    ),
)


def run_options() -> tuple[RunOption, ...]:
    """The declaration, read at call time (a test may extend it)."""
    return RUN_OPTIONS


def option(name: str) -> RunOption:
    """The declared option called `name` (its argparse dest)."""
    for candidate in run_options():
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def widget_key(name: str) -> str:
    """The Setup session key of an option's widget."""
    widget = option(name).widget
    if widget is None:
        raise KeyError(f"{name} has no Setup widget")
    return widget.key


# -- the parser ---------------------------------------------------------------------------------
def add_cli_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Add every declared option `command` (run, rescore) takes to its subparser."""
    for opt in run_options():
        if command not in opt.commands or not takes_argument(opt):
            continue
        kwargs: dict[str, Any] = {"help": opt.help}
        if opt.is_flag:
            kwargs["action"] = "store_true"
        else:
            if opt.flags:
                kwargs["default"] = opt.cli_default
            for key, value in (
                ("type", opt.value_type),
                ("metavar", opt.metavar),
                ("nargs", opt.nargs),
                ("const", opt.const),
            ):
                if value is not None:
                    kwargs[key] = value
            if opt.choices is not None:
                kwargs["choices"] = list(opt.choices)
        if opt.flags:
            parser.add_argument(*opt.flags, dest=opt.name, **kwargs)
        else:
            parser.add_argument(opt.name, **kwargs)


def takes_argument(opt: RunOption) -> bool:
    """Whether the command line has an argument for this option (warmup_runs and seed have none)."""
    return bool(opt.flags) or opt.nargs is not None


def check_command_values(values: Values, command: str) -> None:
    """Check the options that govern the command rather than the job (--timeout, --memory-gb),
    before any work starts.

    Raises:
        QuantLensError: the first refused value, in declaration order.
    """
    for opt in run_options():
        if command in opt.commands and opt.field is None and opt.name in values:
            for check in opt.checks:
                check(opt, values[opt.name], values)


def job_from_values(values: Values) -> JobSpec:
    """The JobSpec that parsed `run` arguments describe, every value checked.

    `values` holds every declared option by name (argparse's namespace as a dict); the
    model and data are already filled in (the CLI's demo fallback).

    Raises:
        QuantLensError: a value the declaration refuses, with one line saying how to fix it.
    """
    kwargs: dict[str, Any] = {}
    for opt in run_options():
        if opt.field is None or opt.name not in values:
            continue  # a fixed field keeps JobSpec's default
        value = values[opt.name]
        for check in opt.checks:
            check(opt, value, values)
        kwargs[opt.field] = value if opt.to_job is None else opt.to_job(value, values)
    return JobSpec(**kwargs)


# -- the reproduce command ----------------------------------------------------------------------
def reproduce_command(job: JobSpec) -> str:
    """The CLI command that reproduces this job (`parse(reproduce_command(job)) == job`)."""
    parts = ["python -m core run"]
    for opt in run_options():
        if opt.field is None or opt.in_command is InCommand.NEVER:
            continue
        value = getattr(job, opt.field)
        if opt.in_command is InCommand.UNLESS_DEFAULT and value == job_default(opt.field):
            continue
        if opt.command_when is not None and not opt.command_when(job):
            continue
        if opt.is_flag:
            parts.append(opt.flag)
            continue
        text = shlex.quote(str(value) if opt.to_text is None else opt.to_text(value))
        if not opt.flags:
            parts.append(text)
        elif opt.nargs == "?":  # an optional value must be attached to its flag
            parts.append(f"{opt.flag}={text}")
        else:
            parts += [opt.flag, text]
    return " ".join(parts)


# -- Setup --------------------------------------------------------------------------------------
def setup_options() -> tuple[RunOption, ...]:
    """The options Setup asks for, in declaration order (the page arranges some by hand)."""
    return tuple(opt for opt in run_options() if opt.widget is not None)
