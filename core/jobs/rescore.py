"""Re-score a finished run with chosen layers kept in float (issue 12, the Layers page's button
and `python -m core rescore`), and re-open it for the per-layer diagnosis of variants that
flipped no image (`request_diagnosis`: the Layers page and `export` ask for it).

The derived variant joins the SAME run: its pending entry is added to report.json (with
`derived_by`), and the run is queued again. The worker the supervisor then starts treats it as
a restarted worker does a variant `--auto-fix` added (core.engine.stages.start.derived_specs):
it decodes the same samples again, converts, evaluates, diagnoses and times only the new
variant, and leaves every finished one as it was. If the re-score fails, crashes or is
cancelled, the run gets its previous status back (core.jobs.outcome) and only the new variant
says what went wrong.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from core.errors import QuantLensError
from core.fix_variants import fixed_spec
from core.inputs import rundir
from core.jobs.workspace import opened_store
from core.reporting import runmodel
from core.reporting.report_changes import put_variant, set_run, set_variant_part
from core.reporting.sections.variant import Variant
from core.runfolder import protocol
from core.types import RunStatus, VariantSpec, VariantStatus

DERIVED_BY_RESCORE = "re-score"  # a variant entry's `derived_by`: added by a re-score
RESCORE_KEY = "rescore"  # status.json: the re-score in flight and the run's status before it


# The fixes a re-score can build (the fix page's rungs), each with what a parent that cannot
# take it cannot do: each is a variant name the worker converts like any other (`:keep=`,
# `:eq`, `:int16=` on the quantizer, `:bc=`).
RESCORE_FIXES = {
    "keep_float": "keep layers in float; choose an int8 or a quantizer (_q) variant",
    "equalize": "be equalized; choose an int8 variant",
    "int16_activations": "take 16-bit activations; choose an int8 variant",
    "weight_only": "be quantized weight-only; choose an int8 variant",
    "bias_correction": "be bias corrected; choose an int8 variant",
}


def add_rescore_variant(
    directory: Path,
    parent: str,
    layers: list[str] | tuple[str, ...],
    *,
    home: Path | None,
    fix: str = "keep_float",
) -> str:
    """Add `parent` with a fix to the finished run in `directory`, and queue the run again; the
    caller starts its supervisor. The fix is `layers` kept in float (the default), the model
    cross-layer equalized (`fix="equalize"`, layers unused), `layers` given 16-bit
    activations (`fix="int16_activations"`, on the quantizer backend) or `layers`' biases
    corrected against the parent's int8 error (`fix="bias_correction"`).

    Returns:
        The derived variant's name (e.g. `int8:keep=conv2d+dense`, `int8:eq`).

    Raises:
        QuantLensError: no layer chosen, the run is not finished, the parent is unknown, not
            done or cannot take the fix, a layer is unknown, or the variant exists.
    """
    if fix not in RESCORE_FIXES:
        raise QuantLensError(
            f"a re-score cannot apply {fix}; choose one of {', '.join(RESCORE_FIXES)}"
        )
    chosen = tuple(sorted({name.strip() for name in layers if name.strip()}))
    if not chosen and fix != "equalize":
        raise QuantLensError("no layer chosen; pick at least one layer to keep in float")
    added: list[VariantSpec] = []

    def queue(report: dict[str, Any]) -> None:
        # Under the report lock: a second re-score of this run waits here, then finds it queued.
        status = protocol.read_status(directory)
        state = RunStatus(status.get("status") or RunStatus.QUEUED)
        if not state.finished:
            raise QuantLensError(
                f"the run is still {state}; re-score it once it has finished (or cancel it)"
            )
        entry = _parent_entry(report, parent)
        if rundir.read_json(directory / rundir.JOB).get("engine") == "ray":
            raise QuantLensError(
                "this run was evaluated on Ray, whose images stay on the cluster; re-score a "
                "run made with --engine local"
            )
        derived = _derived_spec(parent, chosen, fix)
        _require_known_layers(directory, entry, chosen)
        if any(v["name"] == derived.name for v in report["variants"]):
            raise QuantLensError(f"{derived.name} is already in this run; choose other layers")
        _require_stored(status, directory, home)
        _queue_again(directory, report, derived, status, parent=parent)
        added.append(derived)

    report = runmodel.update_report(directory, queue)
    if report is None:
        raise QuantLensError(
            f"run {directory.name} has no report yet; wait for it to finish or pick another run"
        )
    run_id = str(protocol.read_status(directory).get("run_id") or directory.name)
    with opened_store(home) as store:
        store.sync_report(run_id, report)
        store.set_status(run_id, RunStatus.QUEUED)
    return added[0].name


def _parent_entry(report: dict[str, Any], parent: str) -> dict[str, Any]:
    entry: dict[str, Any] | None = next(
        (v for v in report["variants"] if v["name"] == parent), None
    )
    if entry is None:
        names = ", ".join(v["name"] for v in report["variants"])
        raise QuantLensError(f"this run has no variant {parent}; choose one of {names}")
    if entry.get("status") != VariantStatus.DONE:
        raise QuantLensError(f"{parent} did not finish ({entry.get('status')}); choose another")
    return entry


def _derived_spec(parent: str, layers: tuple[str, ...], fix: str = "keep_float") -> VariantSpec:
    """`parent` with the fix: `layers` in float, the model equalized, or `layers` at 16 bits
    on the quantizer backend, named as the fix ladder names it (core.fix_variants)."""
    spec = VariantSpec.parse(parent)
    if spec.has_overrides:
        raise QuantLensError(
            f"{parent} is itself derived; re-score its parent {_root_name(spec)} instead"
        )
    try:
        return fixed_spec(spec, fix, layers)
    except QuantLensError:
        raise QuantLensError(f"{parent} cannot {RESCORE_FIXES[fix]}") from None


def _root_name(spec: VariantSpec) -> str:
    return spec.without_overrides().name


def known_layers(directory: Path, entry: dict[str, Any]) -> set[str] | None:
    """The Keras layer names of the parent's per-layer table, or None when it has none (the
    worker's conversion then names an unknown layer itself)."""
    table = (entry.get("diagnosis") or {}).get("table")
    path = directory / str(table) if table else None
    if path is None or not path.is_file():
        return None
    names: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            # `layers` lists every Keras layer fused into the op (re_lu+conv2d), `layer` the main one.
            names.update(n for n in (row.get("layers") or "").split("+") if n)
            if row.get("layer") and not row["layer"].startswith("("):
                names.add(row["layer"])
    return names


def _require_known_layers(directory: Path, entry: dict[str, Any], layers: tuple[str, ...]) -> None:
    names = known_layers(directory, entry)
    unknown = sorted(set(layers) - names) if names is not None else []
    if unknown:
        raise QuantLensError(
            f"{entry['name']} has no layer named {', '.join(unknown)}; pick names from its "
            "per-layer table"
        )


def _queue_again(
    directory: Path,
    report: dict[str, Any],
    derived: VariantSpec,
    status: dict[str, Any],
    *,
    parent: str,
) -> None:
    """The pending entry (written as the lock is released) and a fresh queued status.json.

    Called under the report lock, so a second re-score sees the run queued; the worker
    starts only once the caller has queued the run in the store, after both are written.
    """
    from core.reporting.report import ROLE_SELECTED, pending_variant

    # The parent is the variant the user chose: `int8` for `int8_q:int16=...`, which its name
    # alone would give as `int8_q` (the fix page finds a rung's variant by its parent).
    put_variant(
        report, Variant.from_dict(pending_variant(derived, role=ROLE_SELECTED, parent=parent))
    )
    set_variant_part(report, derived.name, "derived_by", DERIVED_BY_RESCORE)
    set_variant_part(
        report, derived.name, "command", rescore_command(directory, derived, parent=parent)
    )
    _reopen(directory, report, status, {"variant": derived.name})


def _reopen(
    directory: Path, report: dict[str, Any], status: dict[str, Any], what: dict[str, Any]
) -> None:
    """The run queued again (report.json and a fresh status.json) for the work `what` names,
    with the status it goes back to if that work does not finish."""
    set_run(report, status=RunStatus.QUEUED)
    for stale in (protocol.CANCEL_FLAG, rundir.PROGRESS):
        (directory / stale).unlink(missing_ok=True)
    rundir.write_json_atomic(
        directory / rundir.STATUS,
        {
            "status": str(RunStatus.QUEUED),
            "error": None,
            "run_id": status.get("run_id") or directory.name,
            "created": time.time(),
            "finished": None,
            RESCORE_KEY: {
                **what,
                "previous_status": status.get("status"),
                "previous_error": status.get("error"),
            },
        },
    )


def rescore_command(directory: Path, derived: VariantSpec, *, parent: str | None = None) -> str:
    """The command that adds this variant to the run, as `run.command` is the run's own (from
    `parent`, else from the variant its name derives from)."""
    import shlex

    parent = parent or _root_name(derived)
    head = f"python -m core rescore {shlex.quote(str(directory))} --variant {shlex.quote(parent)}"
    if derived.equalized:
        return f"{head} --equalize"
    if derived.int16_layers:
        layers = ",".join(derived.int16_layers)
        return f"{head} --int16 {shlex.quote(layers)}"
    if derived.weight_only_layers:
        layers = ",".join(derived.weight_only_layers)
        return f"{head} --weight-only {shlex.quote(layers)}"
    if derived.bias_corrected_layers:
        layers = ",".join(derived.bias_corrected_layers)
        return f"{head} --bias-correct {shlex.quote(layers)}"
    return f"{head} --keep-float {shlex.quote(','.join(derived.float_layers))}"


def status_after(
    directory: Path, status: RunStatus, error: str | None
) -> tuple[RunStatus, str | None]:
    """The run's final status and error: a re-score that did not finish gives the run back its
    previous status (its finished variants stand); the error names the re-scored variant."""
    rescore = protocol.read_status(directory).get(RESCORE_KEY)
    if not rescore or status is RunStatus.DONE:
        return status, error
    previous = RunStatus(rescore.get("previous_status") or RunStatus.DONE)
    doing = rescore.get("doing") or f"re-scoring {rescore['variant']}"
    return previous, f"{doing} {status}: {error or 'no reason given'}"


def request_diagnosis(directory: Path, *, home: Path | None) -> list[str]:
    """Ask for the per-layer diagnosis of the finished run's variants that flipped no image
    (core.reporting.report.awaiting_diagnosis) and queue the run again; the caller starts its
    supervisor. The worker then diagnoses them, as it would a variant that flipped images, and
    leaves every result as it was.

    Returns:
        The variants to be diagnosed; empty (and nothing queued) when none waits.

    Raises:
        QuantLensError: the run is not finished, or not in this workspace's history.
    """
    from core.reporting.report import DIAGNOSIS_ON_REQUEST, ON_REQUEST_ASKED, awaiting_diagnosis

    asked: list[str] = []

    def queue(report: dict[str, Any]) -> None:
        status = protocol.read_status(directory)
        state = RunStatus(status.get("status") or RunStatus.QUEUED)
        if not state.finished:
            raise QuantLensError(
                f"the run is still {state}; ask for its diagnosis once it has finished"
            )
        names = awaiting_diagnosis(report)
        if not names:
            return
        _require_stored(status, directory, home)
        for name in names:
            set_variant_part(report, name, DIAGNOSIS_ON_REQUEST, ON_REQUEST_ASKED)
        what = {"variant": ", ".join(names), "doing": f"diagnosing {', '.join(names)}"}
        _reopen(directory, report, status, what)
        asked.extend(names)

    report = runmodel.update_report(directory, queue)
    if report is None:
        raise QuantLensError(
            f"run {directory.name} has no report yet; wait for it to finish or pick another run"
        )
    if asked:
        run_id = str(protocol.read_status(directory).get("run_id") or directory.name)
        with opened_store(home) as store:
            store.sync_report(run_id, report)
            store.set_status(run_id, RunStatus.QUEUED)
    return asked


def _require_stored(status: dict[str, Any], directory: Path, home: Path | None) -> None:
    run_id = str(status.get("run_id") or directory.name)
    with opened_store(home) as store:
        if store.get_run(run_id) is None:
            raise QuantLensError(
                f"run {run_id} is not in this workspace's history; set QUANTLENS_HOME to "
                "the workspace that made it"
            )
