"""The command line: `python -m core run|rescore|export|demo|history` (DESIGN §7)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from core import options, posix
from core.errors import QuantLensError
from core.inputs import rundir
from core.inputs.demo_paths import DemoPaths
from core.options import EXPORT_HELP, EXPORT_MODEL_EXPLORER
from core.reporting.runmodel import RunReport
from core.types import JobSpec, ProgressEvent, RunStatus, short_name

# The exit status table (docs/command-line.md, "Exit status"); every row is tested through the real CLI.
EXIT_PASS = 0  # every variant was judged and meets --min-agreement
EXIT_BELOW_THRESHOLD = 1  # the job finished; some variant is below the bar or failed on its own
EXIT_BAD_INPUT = 2  # an argument, path, model, data set or the workspace was refused
EXIT_JOB_FAILED = 3  # the job itself did not finish: crash, out of memory or time outside a variant
EXIT_CANCELLED = 130  # stopped by the user: Ctrl-C, or Cancel in the dashboard
# Stopped by a signal: 128 + its number, as a shell reports it (SIGINT 130, SIGHUP 129,
# SIGTERM 143); the run ends cancelled either way.
EXIT_SIGNAL_BASE = 128


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
    options.add_cli_arguments(run, "run")

    rescore = sub.add_parser(
        "rescore",
        help="add a fixed variant (layers kept in float, equalized, 16-bit activations, "
        "weight-only or bias corrected) to a finished run, scored on its images",
    )
    rescore.add_argument("run", help="the run folder (its --out) or its run id")
    rescore.add_argument(
        "--variant", required=True, help="the parent variant in the run, e.g. int8 or int8_q"
    )
    fix = rescore.add_mutually_exclusive_group(required=True)
    fix.add_argument(
        "--keep-float",
        metavar="LAYER[,LAYER]",
        help="Keras layer names to keep in float (see the parent's <variant>.layers.csv)",
    )
    fix.add_argument(
        "--equalize",
        action="store_true",
        help="cross-layer equalize the model before quantizing it as the parent (int8:eq)",
    )
    fix.add_argument(
        "--int16",
        metavar="LAYER[,LAYER]",
        help="Keras layers given 16-bit activations, on the quantizer backend (int8_q:int16=...)",
    )
    fix.add_argument(
        "--weight-only",
        metavar="LAYER[,LAYER]",
        help="Keras layers quantized weight-only (int8 weights, float compute), on the "
        "quantizer backend (int8_q:wo=...)",
    )
    fix.add_argument(
        "--bias-correct",
        metavar="LAYER[,LAYER]",
        help="conv/dense layers whose biases absorb the parent's mean int8 error (int8:bc=...)",
    )
    options.add_cli_arguments(rescore, "rescore")

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


def _job_from_args(args: argparse.Namespace) -> JobSpec:
    """The job the `run` arguments describe (core.options declares and checks each one); with
    no MODEL or --data, the embedded demo's, built first when missing."""
    from core.inputs.demo_paths import demo_paths

    values = vars(args).copy()
    if values["model"] is None or values["data"] is None:
        paths = demo_paths()
        if not paths.ready():
            print("building the embedded demo (about a minute, once)...", file=sys.stderr)
            _build_demo_in_worker(paths.root)
        values["model"] = values["model"] or str(paths.saved_model)
        values["data"] = values["data"] or str(paths.data_csv)
    return options.job_from_values(values)


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

    options.check_command_values(vars(args), args.command)
    job = _job_from_args(args)
    recover_interrupted()
    out = Path(args.out).resolve() if args.out else None
    run_id = create_run(job, directory=out)
    directory = out or rundir.runs_root() / run_id
    return _supervise(directory, run_id, args)


def _supervise(directory: Path, run_id: str, args: argparse.Namespace) -> int:
    """Run the queued job in `directory` to its end, print its table, return the exit status."""
    from core.jobs.launch import read_status
    from core.jobs.supervisor import Supervisor
    from core.reporting.report import exit_status, format_table
    from core.reporting.runmodel import read_report
    from core.runfolder.protocol import DEFAULT_MEMORY_LIMIT_GB, DEFAULT_TIMEOUT_S

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
        _print_runtimes(report)
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
    if report.sweep is not None and report.sweep.statement:
        print(f"calibration sweep: {report.sweep.statement}")


def _print_runtimes(report: RunReport) -> None:
    """The runtime matrix, when the run asked for one (--runtimes)."""
    from core.reporting.runtimes import format_runtime_table

    table = format_runtime_table(report)
    if table:
        print(table)


def _print_tracking(report: RunReport) -> None:
    """Where the run was logged; a logging failure is already among the table's warnings."""
    tracking = report.tracking
    if tracking is not None and tracking.run_id:
        print(f"mlflow: run {tracking.run_id} at {tracking.uri}")


def _print_model_explorer_export(directory: Path) -> None:
    from core.reporting.model_explorer import export_run

    written = export_run(directory)
    for path in written:
        print(f"model explorer node data: {path}")
    if not written:
        print("model explorer node data: none (no variant has a per-layer diagnosis)")


def cmd_export(args: argparse.Namespace) -> int:
    """`export RUN --export model-explorer`: the node data of a finished run's quantized
    variants; those that flipped no image are diagnosed first (the run is re-opened for them)."""
    from core.jobs.launch import recover_interrupted
    from core.jobs.rescore import request_diagnosis

    directory = _run_folder(args.run)
    if not (directory / rundir.REPORT).is_file():
        raise QuantLensError(
            f"{directory} has no report.json yet; export once the run has finished"
        )
    recover_interrupted()
    asked = request_diagnosis(directory, home=None)
    if not asked:
        _print_model_explorer_export(directory)
        return EXIT_PASS
    print(f"diagnosing {', '.join(asked)} first (they flipped no image)", file=sys.stderr)
    run_id = str(rundir.read_json(directory / rundir.STATUS).get("run_id") or directory.name)
    quiet = argparse.Namespace(timeout=None, memory_gb=None, report=None, export=args.export)
    code = _supervise(directory, run_id, quiet)
    # The run's own verdict is not the export's: a finished re-open exported what it could.
    done = rundir.read_json(directory / rundir.STATUS).get("status") == RunStatus.DONE
    return EXIT_PASS if done else code


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
    """`rescore RUN --variant P --keep-float A,B | --equalize | --int16 A,B | --weight-only A |
    --bias-correct A`: the fix page's re-score, in the terminal."""
    from core.jobs.launch import recover_interrupted
    from core.jobs.rescore import add_rescore_variant

    options.check_command_values(vars(args), args.command)
    recover_interrupted()
    directory = _run_folder(args.run)
    if args.equalize:
        fix, layers = "equalize", []
    elif args.int16:
        fix, layers = "int16_activations", args.int16.split(",")
    elif args.weight_only:
        fix, layers = "weight_only", args.weight_only.split(",")
    elif args.bias_correct:
        fix, layers = "bias_correction", args.bias_correct.split(",")
    else:
        fix, layers = "keep_float", args.keep_float.split(",")
    name = add_rescore_variant(directory, args.variant, layers, home=None, fix=fix)
    print(f"re-scoring {name} on the run's images", file=sys.stderr)
    run_id = str(rundir.read_json(directory / rundir.STATUS).get("run_id") or directory.name)
    return _supervise(directory, run_id, args)


def cmd_demo(args: argparse.Namespace) -> int:
    from core.inputs.demo_paths import (
        demo_paths,
        demo_root,
        mobilenet_demo_paths,
        outlier_demo_paths,
    )

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
    print(f"{'try:':<13}python -m core run {paths.run_model} --data {paths.data_csv}")


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
