"""The command line: `python -m core run|rescore|export|demo|history` (DESIGN §7)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from core import posix
from core.errors import QuantLensError
from core.inputs import rundir
from core.inputs.demo import DemoPaths
from core.reporting.runmodel import RunReport
from core.types import (
    BACKEND_CHOICES,
    DEFAULT_MIN_AGREEMENT_PCT,
    RAY_NODE_IP_ENV,
    JobSpec,
    Preset,
    ProgressEvent,
    RunStatus,
    VariantSpec,
    parse_sweep_sizes,
    short_name,
    variants_for_backend,
)

# The exit status table (docs/command-line.md, "Exit status"); every row is tested through the real CLI.
EXIT_PASS = 0  # every variant was judged and meets --min-agreement
EXIT_BELOW_THRESHOLD = 1  # the job finished; some variant is below the bar or failed on its own
EXIT_BAD_INPUT = 2  # an argument, path, model, data set or the workspace was refused
EXIT_JOB_FAILED = 3  # the job itself did not finish: crash, out of memory or time outside a variant
EXIT_CANCELLED = 130  # stopped by the user: Ctrl-C, or Cancel in the dashboard
# Stopped by a signal: 128 + its number, as a shell reports it (SIGINT 130, SIGHUP 129,
# SIGTERM 143); the run ends cancelled either way.
EXIT_SIGNAL_BASE = 128
DEFAULT_MODES = "float32,dynamic,float16,int8"
EXPORT_MODEL_EXPLORER = "model-explorer"
EXPORT_HELP = (
    "model-explorer: write <variant>.model-explorer.json per diagnosed variant, node data "
    "that colours the variant's .tflite by per-layer error in Google's Model Explorer"
)


def _program_name() -> str:
    """What the user typed: the `quantlens` console script or `python -m core` (same CLI)."""
    return "quantlens" if Path(sys.argv[0]).name == "quantlens" else "python -m core"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_program_name(),
        description="Convert a TensorFlow image classifier to TFLite and compare it with the original.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="convert, compare and time a model (the demo when MODEL is omitted)"
    )
    run.add_argument(
        "model", nargs="?", help="SavedModel folder, .keras file or .zip of a SavedModel"
    )
    run.add_argument("--data", help="CSV (filepath,label), class-folder tree or .zip of either")
    run.add_argument(
        "--modes",
        default=DEFAULT_MODES,
        help=f"comma-separated variants (default {DEFAULT_MODES}); also int8-uint8, int8-float32, int16x8, int4w (quantizer only); append +tf to allow SELECT_TF_OPS; on the quantizer, :keep=LAYER+LAYER keeps layers in float and :int16=LAYER gives them int16 activations",
    )
    run.add_argument(
        "--backend",
        default="converter",
        choices=list(BACKEND_CHOICES),
        help="converter (a TFLiteConverter run per mode, default), quantizer (LiteRT Quantizer recipes on one float32 conversion; names end in _q) or both side by side",
    )
    run.add_argument(
        "--engine",
        default="local",
        choices=["local", "ray"],
        help="local (this machine, default) or ray (decode and evaluate on a Ray cluster's "
        "shards; conversion and latency stay on this machine)",
    )
    run.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="HOST:PORT of a running Ray cluster (printed by `ray start --head`); without it "
        "--engine ray starts a local Ray sized to this machine",
    )
    run.add_argument(
        "--ray-node-ip",
        default=None,
        metavar="IP",
        help="this machine's address in the Ray cluster, as its nodes are bound (`ray start "
        "--node-ip-address`), such as 127.0.0.1 for a cluster on loopback (default: "
        "RAY_NODE_IP_ADDRESS, else Ray's choice)",
    )
    run.add_argument(
        "--ray-connect-timeout",
        type=float,
        default=JobSpec.ray_connect_timeout_s,
        metavar="S",
        help=f"seconds to join the Ray cluster (or start the local Ray) before the run fails "
        f"(default {JobSpec.ray_connect_timeout_s:g})",
    )
    run.add_argument(
        "--keep-float",
        default=None,
        metavar="LAYER[,LAYER]",
        help="also run each int8 (or quantizer) variant with these Keras layers kept in float, "
        "as a variant derived from it (int8:keep=LAYER+LAYER)",
    )
    run.add_argument(
        "--auto-fix",
        nargs="?",
        type=int,
        const=5,
        default=None,
        metavar="K",
        help="for each int8 (or quantizer) variant below --min-agreement, keep up to K layers "
        "(default 5) in float, most sensitive first as measured, until it meets the bar; the "
        "result is a derived variant (write --auto-fix=K before MODEL)",
    )
    run.add_argument(
        "--samples",
        type=int,
        default=None,
        help="evaluate at most N images (seeded draw from those not held out for calibration)",
    )
    run.add_argument(
        "--calibration-samples",
        type=int,
        default=100,
        help="images int8/int16x8 are calibrated with (default 100); held out of evaluation "
        "when the data set has at least twice as many",
    )
    run.add_argument(
        "--calibration-data",
        default=None,
        metavar="PATH",
        help="calibrate on this separate set (CSV, folder or .zip, as --data); nothing is "
        "held out of --data then",
    )
    run.add_argument(
        "--calibration-overlap",
        action="store_true",
        help="draw calibration images from the whole data set, also evaluated (the old "
        "behaviour); by default they are held out",
    )
    run.add_argument(
        "--calibration-sweep",
        default=None,
        metavar="N,N,...",
        help="also quantize int8 (and int16x8) with each of these calibration sizes and "
        "--sweep-seeds draws, on the quantizer backend, and evaluate each on the run's images",
    )
    run.add_argument(
        "--sweep-seeds",
        type=int,
        default=3,
        metavar="S",
        help="calibration draws per sweep size (default 3)",
    )
    run.add_argument(
        "--preprocess", default=str(Preset.MOBILENET_V2), choices=[str(p) for p in Preset]
    )
    run.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for both models (default: every usable CPU but one)",
    )
    run.add_argument(
        "--min-agreement",
        type=float,
        default=DEFAULT_MIN_AGREEMENT_PCT,
        help="top-1 agreement %% a variant needs to PASS",
    )
    run.add_argument(
        "--verdict",
        default="point",
        choices=["point", "lower-bound"],
        help="judge each variant by its agreement (point, default) or by the lower end of its "
        "95 %% Wilson interval (lower-bound: a PASS that sampling noise cannot explain)",
    )
    run.add_argument("--out", default=None, help="run folder for report.json and the .tflite files")
    run.add_argument("--labels", default=None, help="labels.txt with one class name per line")
    run.add_argument(
        "--input-size", default=None, help="HxW, for models whose spatial size is None"
    )
    run.add_argument(
        "--signature",
        default=None,
        help="SavedModel signature to compare (default serving_default)",
    )
    run.add_argument(
        "--select-tf-ops",
        action="store_true",
        help="allow the SELECT_TF_OPS fallback for every mode",
    )
    run.add_argument(
        "--trusted",
        action="store_true",
        help="allow Lambda layers, custom objects and file ops: only for models you trust",
    )
    run.add_argument(
        "--latency-runs",
        type=int,
        default=None,
        help="timed runs per model (default: as many as fit in --latency-budget, 10 to 1000)",
    )
    run.add_argument(
        "--latency-budget",
        type=float,
        default=JobSpec.latency_budget_s,
        help="seconds of timing per model when --latency-runs is not given (default: 2)",
    )
    run.add_argument("--name", default="", help="a name for the run in the history")
    run.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="wall-clock limit of the job in seconds, > 0 (default 3600)",
    )
    run.add_argument(
        "--memory-gb", type=float, default=None, help="memory limit of the worker, > 0 (default 16)"
    )
    run.add_argument(
        "--report", choices=["json", "html"], default="json", help="html also writes report.html"
    )
    run.add_argument("--export", choices=[EXPORT_MODEL_EXPLORER], default=None, help=EXPORT_HELP)
    run.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        default=None,
        metavar="URI",
        help="log the run to MLflow, a nested run per variant: alone, the workspace store "
        "(sqlite:///<workspace>/mlflow.db); or a tracking URI such as http://host:5000 "
        "(write --mlflow=URI before MODEL)",
    )

    rescore = sub.add_parser(
        "rescore",
        help="add a variant with layers kept in float to a finished run, scored on its images",
    )
    rescore.add_argument("run", help="the run folder (its --out) or its run id")
    rescore.add_argument(
        "--variant", required=True, help="the parent variant in the run, e.g. int8 or int8_q"
    )
    rescore.add_argument(
        "--keep-float",
        required=True,
        metavar="LAYER[,LAYER]",
        help="Keras layer names to keep in float (see the parent's <variant>.layers.csv)",
    )
    for flag, kind, text in (
        ("--timeout", float, "wall-clock limit of the job in seconds, > 0 (default 3600)"),
        ("--memory-gb", float, "memory limit of the worker, > 0 (default 16)"),
    ):
        rescore.add_argument(flag, type=kind, default=None, help=text)
    rescore.add_argument(
        "--report", choices=["json", "html"], default="json", help="html also writes report.html"
    )
    rescore.add_argument(
        "--export", choices=[EXPORT_MODEL_EXPLORER], default=None, help=EXPORT_HELP
    )

    export = sub.add_parser("export", help="export a finished run's per-layer error")
    export.add_argument("run", help="the run folder (its --out) or its run id")
    export.add_argument(
        "--export", choices=[EXPORT_MODEL_EXPLORER], default=EXPORT_MODEL_EXPLORER, help=EXPORT_HELP
    )

    demo = sub.add_parser(
        "demo",
        help="build the embedded demo data set and its three models (small, outlier, MobileNetV2)",
    )
    demo.add_argument("--out", default=None, help="demo folder (default <workspace>/demo)")
    demo.add_argument(
        "--only",
        choices=["small", "outlier", "mobilenetv2"],
        default=None,
        help="build one model: small (about a minute, what `run` needs), outlier (a conv net "
        "with one outlier activation channel, whose int8 collapses; seconds more) or "
        "mobilenetv2 (MobileNetV2-0.35 at 96x96, about two minutes more); the last two need "
        "the small one's data",
    )

    clean = sub.add_parser(
        "clean",
        help="free disk space: trim the conversion cache to its cap "
        "(QUANTLENS_CACHE_MAX_BYTES, default 2 GiB), least recently used first",
    )
    clean.add_argument(
        "--cache", action="store_true", help="empty the conversion cache instead of trimming it"
    )

    history = sub.add_parser("history", help="list stored runs")
    history.add_argument("--search", default=None)
    history.add_argument("--limit", type=int, default=50)
    history.add_argument(
        "--reindex",
        action="store_true",
        help="add to the history every run whose folder (under runs/, or a noted --out) "
        "the history lacks, e.g. after a damaged database was moved aside",
    )
    return parser


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _check_limits(args: argparse.Namespace) -> None:
    """A limit of 0 would stop every job at once; there is no "no limit" value, only large ones."""
    for flag, value in (("--timeout", args.timeout), ("--memory-gb", args.memory_gb)):
        if value is not None and not value > 0:  # also refuses NaN
            raise QuantLensError(
                f"{flag} must be greater than 0; got {value:g} (leave it out for the default)"
            )


def _tracking_uri(value: str | None) -> str | None:
    """The tracking URI of `--mlflow`, refused before any work when MLflow cannot log there."""
    from core.reporting.tracking import missing_package, resolve_uri

    uri = resolve_uri(value)
    missing = missing_package(uri) if uri else None
    if missing:
        raise QuantLensError(missing)
    return uri


def _job_from_args(args: argparse.Namespace) -> JobSpec:
    from core.inputs.demo import demo_paths

    model, data, labels = args.model, args.data, args.labels
    if model is None or data is None:
        paths = demo_paths()
        if not paths.ready():
            print("building the embedded demo (about a minute, once)...", file=sys.stderr)
            _build_demo_in_worker(paths.root)
        model = model or str(paths.saved_model)
        data = data or str(paths.data_csv)
    for what, path in (("model", model), ("data", data)):
        if not Path(path).exists():
            raise QuantLensError(f"{what} path {path} does not exist; check the path")
    names = [v.strip() for v in args.modes.split(",") if v.strip()]
    if args.select_tf_ops:
        names = [_with_select_tf_ops(v) for v in names]
    variants = variants_for_backend(names, args.backend)
    if args.keep_float is not None:
        variants = with_keep_float(variants, args.keep_float)
    if not variants:
        raise QuantLensError(
            "--modes is empty; give at least one of float32,dynamic,float16,int8,int16x8"
        )
    if len(set(variants)) != len(variants):
        raise QuantLensError(f"--modes names a variant twice ({args.modes}); list each once")
    for flag, value, low in (
        ("--samples", args.samples, 1),
        ("--calibration-samples", args.calibration_samples, 1),
        ("--threads", args.threads, 1),
        ("--latency-runs", args.latency_runs, 1),
        ("--auto-fix", args.auto_fix, 1),
        ("--latency-budget", args.latency_budget, 0.01),
    ):
        if value is not None and value < low:
            raise QuantLensError(f"{flag} must be at least {low}; got {value}")
    if args.sweep_seeds < 1:
        raise QuantLensError(f"--sweep-seeds must be at least 1; got {args.sweep_seeds}")
    sweep = parse_sweep_sizes(args.calibration_sweep)
    calibration_data = args.calibration_data
    if calibration_data is not None and not Path(calibration_data).exists():
        raise QuantLensError(
            f"--calibration-data {calibration_data} does not exist; check the path"
        )
    if calibration_data is not None and args.calibration_overlap:
        raise QuantLensError(
            "--calibration-overlap draws from --data, --calibration-data from another set; "
            "give one of them"
        )
    if not 0 <= args.min_agreement <= 100:
        raise QuantLensError(
            f"--min-agreement is a percentage from 0 to 100; got {args.min_agreement:g}"
        )
    if args.ray_address and args.engine != "ray":
        raise QuantLensError(
            f"--ray-address {args.ray_address} needs --engine ray; add it, or drop the address"
        )
    node_ip = args.ray_node_ip or os.environ.get(RAY_NODE_IP_ENV, "").strip() or None
    if args.ray_node_ip and args.engine != "ray":
        raise QuantLensError(
            f"--ray-node-ip {args.ray_node_ip} needs --engine ray; add it, or drop the option"
        )
    if args.ray_connect_timeout <= 0:
        raise QuantLensError(
            f"--ray-connect-timeout is a number of seconds above 0; got {args.ray_connect_timeout:g}"
        )
    input_size = None
    if args.input_size:
        try:
            h, w = (int(v) for v in args.input_size.lower().split("x"))
        except ValueError:
            raise QuantLensError(
                f"--input-size takes HxW such as 224x224; got {args.input_size!r}"
            ) from None
        input_size = (h, w)
    return JobSpec(
        model_path=str(Path(model).resolve()),
        data_path=str(Path(data).resolve()),
        variants=variants,
        preset=Preset(args.preprocess),
        calibration_samples=args.calibration_samples,
        max_samples=args.samples,
        threads=args.threads,
        min_agreement_pct=args.min_agreement,
        latency_runs=args.latency_runs,
        latency_budget_s=args.latency_budget,
        labels_file=str(Path(labels).resolve()) if labels else None,
        trusted=args.trusted,
        name=args.name,
        input_size=input_size,
        signature_key=args.signature,
        mlflow_uri=_tracking_uri(args.mlflow),
        verdict=args.verdict,
        engine=args.engine,
        ray_address=args.ray_address,
        ray_node_ip=node_ip if args.engine == "ray" else None,
        ray_connect_timeout_s=args.ray_connect_timeout,
        auto_fix=args.auto_fix,
        calibration_data=str(Path(calibration_data).resolve()) if calibration_data else None,
        calibration_overlap=args.calibration_overlap,
        calibration_sweep=sweep,
        sweep_seeds=args.sweep_seeds,
    )


def with_keep_float(variants: tuple[str, ...], layers_text: str) -> tuple[str, ...]:
    """Each variant that can keep layers in float, followed by its derived `:keep=` variant.

    Raises:
        QuantLensError: no layer named, or no selected variant can keep layers in float.
    """
    from dataclasses import replace

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


def _with_select_tf_ops(name: str) -> str:
    """`int8` -> `int8+tf`; the flag goes before any per-layer override (`:keep=...`)."""
    head, sep, rest = name.partition(":")
    return (head if head.endswith("+tf") else head + "+tf") + sep + rest


def _build_demo_in_worker(root: Path, command: str = "demo") -> None:
    """Model work stays in a worker process, also for the CLI (command: demo | demo-mobilenetv2)."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "core.jobs.worker", command, str(root)], check=False
    )
    if done.returncode != 0:
        what = {"demo-mobilenetv2": "MobileNetV2 demo", "demo-outlier": "outlier demo"}.get(
            command, "demo"
        )
        raise QuantLensError(
            f"building the {what} failed (see the output above); run `python -m core demo` again"
        )


class ProgressPrinter:
    """tqdm bars on a terminal; one line per finished variant otherwise (CI logs stay short)."""

    def __init__(self) -> None:
        self.interactive = sys.stderr.isatty()
        self.bar: Any = None
        self.key: tuple[str, str | None] | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if not self.interactive:
            if event.step in ("variant", "done", "load", "queued", "sweep"):
                print(event.shown_message, file=sys.stderr, flush=True)
            return
        from tqdm import tqdm

        key = (event.step, event.variant)
        if key != self.key:
            self.close()
            self.key = key
            label = f"{short_name(event.variant)}: {event.step}" if event.variant else event.step
            self.bar = tqdm(
                total=100,
                desc=label,
                unit="%",
                leave=False,
                file=sys.stderr,
                bar_format="{desc:<22} {bar} {percentage:3.0f}% {postfix}",
            )
        self.bar.n = round(event.fraction * 100)
        self.bar.set_postfix_str(event.shown_message[-60:], refresh=True)
        if event.step in ("variant", "done"):
            self.close()
            print(event.shown_message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_run(args: argparse.Namespace) -> int:
    from core.jobs.launch import create_run, recover_interrupted

    _check_limits(args)
    job = _job_from_args(args)
    recover_interrupted()
    out = Path(args.out).resolve() if args.out else None
    run_id = create_run(job, directory=out)
    directory = out or rundir.runs_root() / run_id
    return _supervise(directory, run_id, args)


def _supervise(directory: Path, run_id: str, args: argparse.Namespace) -> int:
    """Run the queued job in `directory` to its end, print its table, return the exit status."""
    from core.jobs.launch import read_status
    from core.jobs.protocol import DEFAULT_MEMORY_LIMIT_GB, DEFAULT_TIMEOUT_S
    from core.jobs.supervisor import Supervisor
    from core.reporting.report import exit_status, format_table
    from core.reporting.runmodel import read_report

    printer = ProgressPrinter()
    supervisor = Supervisor(
        directory,
        timeout_s=args.timeout or DEFAULT_TIMEOUT_S,
        memory_limit_gb=args.memory_gb or DEFAULT_MEMORY_LIMIT_GB,
        on_event=printer,
    )
    status = supervisor.run()
    printer.close()
    report_path = directory / rundir.REPORT
    error = read_status(directory).get("error") or f"the job ended as {status}"
    if status is RunStatus.DONE and report_path.exists():
        report = read_report(directory)
        print(format_table(report))
        _print_calibration(report)
        if args.report == "html":
            from core.reporting.html import write_report_html

            print(f"report: {write_report_html(directory)}")
        if args.export == EXPORT_MODEL_EXPLORER:
            _print_model_explorer_export(directory)
        print(f"run {run_id}: {report_path}")
        _print_tracking(report)
        return exit_status(report)
    if report_path.exists():  # each variant's outcome and reason is still worth seeing
        report = read_report(directory)
        print(format_table(report))
        print(f"run {run_id}: {report_path}")
        _print_tracking(report)
    if status is RunStatus.CANCELLED:
        signum = supervisor.interrupted_by
        return _fail(error, EXIT_CANCELLED if signum is None else EXIT_SIGNAL_BASE + signum)
    if supervisor.bad_input:
        return _fail(error)
    log = directory / rundir.WORKER_LOG
    return _fail(f"{error}; the worker's output is in {log}", EXIT_JOB_FAILED)


def _print_calibration(report: RunReport) -> None:
    """Where the calibration images came from, and the sweep's conclusion when one ran."""
    from core.reporting.calibration import calibration_line

    line = calibration_line(report.calibration)
    if line:
        print(line)
    sweep = report.sweep
    if sweep and sweep.get("statement"):
        print(f"calibration sweep: {sweep['statement']}")


def _print_tracking(report: RunReport) -> None:
    """Where the run was logged; a logging failure is already among the table's warnings."""
    tracking = report.extra.get("tracking") or {}
    if tracking.get("run_id"):
        print(f"mlflow: run {tracking['run_id']} at {tracking['uri']}")


def _print_model_explorer_export(directory: Path) -> None:
    from core.reporting.model_explorer import export_run

    written = export_run(directory)
    for path in written:
        print(f"model explorer node data: {path}")
    if not written:
        print("model explorer node data: none (no variant has a per-layer diagnosis)")


def cmd_export(args: argparse.Namespace) -> int:
    """`export RUN --export model-explorer`: the node data of a finished run's diagnosed variants."""
    directory = _run_folder(args.run)
    if not (directory / rundir.REPORT).is_file():
        raise QuantLensError(
            f"{directory} has no report.json yet; export once the run has finished"
        )
    _print_model_explorer_export(directory)
    return EXIT_PASS


def _run_folder(run: str) -> Path:
    """A run given as its folder or as its stored id, resolved to its folder."""
    from core.jobs.workspace import opened_store

    directory = Path(run)
    if (directory / rundir.REPORT).is_file():
        return directory.resolve()
    with opened_store(None) as store:
        row = store.get_run(run)
    if row is None:
        raise QuantLensError(
            f"{run} is neither a run folder with report.json nor a stored run id; "
            "give the run's --out folder or an id from `history`"
        )
    return row.run_dir


def cmd_rescore(args: argparse.Namespace) -> int:
    """`rescore RUN --variant P --keep-float A,B`: the Layers page's re-score, in the terminal."""
    from core.jobs.launch import recover_interrupted
    from core.jobs.rescore import add_rescore_variant

    _check_limits(args)
    recover_interrupted()
    directory = _run_folder(args.run)
    name = add_rescore_variant(directory, args.variant, args.keep_float.split(","), home=None)
    print(f"re-scoring {name} on the run's images", file=sys.stderr)
    run_id = str(rundir.read_json(directory / rundir.STATUS).get("run_id") or directory.name)
    return _supervise(directory, run_id, args)


def cmd_demo(args: argparse.Namespace) -> int:
    from core.inputs.demo import demo_paths, demo_root, mobilenet_demo_paths, outlier_demo_paths

    root = Path(args.out).resolve() if args.out else demo_root()
    small = demo_paths(root=root)
    if args.only in ("outlier", "mobilenetv2") and not small.data_csv.is_file():
        raise QuantLensError(
            f"the {args.only} demo trains on the small demo's data, missing in {root}; "
            "run `python -m core demo --only small` first"
        )
    if args.only is None or args.only == "small":
        _build_demo_in_worker(root)
        _print_demo("demo model:", small)
    if args.only is None or args.only == "outlier":
        _build_demo_in_worker(root, "demo-outlier")
        _print_demo("outlier:", outlier_demo_paths(root=root))
    if args.only is None or args.only == "mobilenetv2":
        print("building the MobileNetV2-0.35 demo (about two minutes, once)...", file=sys.stderr)
        _build_demo_in_worker(root, "demo-mobilenetv2")
        _print_demo("MobileNetV2: ", mobilenet_demo_paths(root=root))
    return EXIT_PASS


def _print_demo(title: str, paths: DemoPaths) -> None:
    print(f"{title:<13}{paths.saved_model}\n{'':<13}{paths.keras_model}")
    print(f"{'demo data:':<13}{paths.data_csv}")
    print(f"{'try:':<13}python -m core run {paths.saved_model} --data {paths.data_csv}")


def cmd_clean(args: argparse.Namespace) -> int:
    """`clean [--cache]`: trim (or empty) the conversion cache and say what was freed."""
    from core.inputs import convcache

    folder = convcache.cache_dir()
    print(convcache.freed_sentence(convcache.clean(folder, everything=args.cache), folder))
    return EXIT_PASS


def cmd_history(args: argparse.Namespace) -> int:
    from core.history.store import open_store

    store = open_store()
    try:
        if args.reindex:
            found, added = store.reindex()
            already = found - added
            print(
                f"indexed {added} runs from their folders "
                f"({found} found, {already} were already in the history)"
            )
            return EXIT_PASS
        rows = store.list_runs(search=args.search, limit=args.limit)
    finally:
        store.close()
    if not rows:
        print("no runs stored yet; start one with `python -m core run`")
        return EXIT_PASS
    header = f"{'id':<24} {'created':<20} {'status':<10} {'best agreement':>14}  name"
    print(header)
    print("-" * len(header))
    for row in rows:
        best = "-" if row.best_agreement_pct is None else f"{row.best_agreement_pct:.2f}%"
        print(f"{row.id:<24} {str(row.created)[:19]:<20} {row.status:<10} {best:>14}  {row.name}")
    return EXIT_PASS


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # SIGTERM and SIGHUP (CI cancel, `timeout`, a closed terminal, `docker stop`) end a run
    # as Ctrl-C does: the worker group is stopped and the run is finished as cancelled.
    with posix.termination_as_interrupt():
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "rescore":
            return cmd_rescore(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "clean":
            return cmd_clean(args)
        return cmd_history(args)
    except QuantLensError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt as exc:
        return _fail("interrupted", EXIT_SIGNAL_BASE + posix.interrupt_signal(exc))
