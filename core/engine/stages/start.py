"""The start stage: resolve the model and data, load the original, and open report.json.

Writes report.json (every variant pending) and labels.txt; a restarted worker reopens the
report it finds instead of starting a new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.engine.faults import maybe_inject
from core.engine.stages.context import ProgressFn, ReportFile, RunContext, effective_threads, emit
from core.inputs import rundir
from core.options import reproduce_command
from core.types import Dataset, JobSpec, RunStatus, SkippedSample, VariantSpec

if TYPE_CHECKING:
    from core.engine.models import ReferenceModel
    from core.reporting.sections.engine_info import EngineInfo


@dataclass(frozen=True)
class Inputs:
    """The resolved model and data of a job (zips extracted, paths checked)."""

    model_path: Path
    dataset: Dataset
    calibration_data: Dataset | None = None  # --calibration-data, enumerated


def open_run(
    job: JobSpec, run_dir: Path, *, progress: ProgressFn, cache_dir: Path | None
) -> RunContext:
    """Load the job's model and data and open its report; the context every later stage takes."""
    from core.engine.models import load_reference, model_sha256
    from core.reporting.report import with_pivot

    emit(progress, "load", 0.0, "reading the data set and the model")
    maybe_inject("load")
    inputs = resolve_inputs(job, run_dir)
    input_size = tuple(job.input_size) if job.input_size else None
    model = load_reference(
        inputs.model_path,
        trusted=job.trusted,
        input_size=input_size,  # type: ignore[arg-type]
        signature_key=job.signature_key,
    )
    selected = [VariantSpec.parse(name) for name in job.variants]
    # The float32 pivot joins whenever a variant is quantized (core.reporting.report.with_pivot).
    specs = tuple(with_pivot(selected))
    report = ReportFile.open(run_dir)
    specs += derived_specs(report.read_only, specs)
    sha = model_sha256(inputs.model_path)
    if report.read_only:
        require_same_inputs(
            report.read_only,
            model_sha=sha,
            dataset=inputs.dataset,
            calibration_data=inputs.calibration_data,
        )
    if not report.read_only:
        report.start(
            new_report(job, run_dir, inputs, model, sha, specs, {s.name for s in selected})
        )
        report.add_warnings(class_count_warnings(inputs.dataset, model))
        report.save()
    if inputs.dataset.class_names:
        rundir.write_atomic(
            run_dir / rundir.LABELS, ("\n".join(inputs.dataset.class_names) + "\n").encode()
        )
    dataset = drop_labels_outside(inputs.dataset, model.signature.num_classes)
    if "preset_check" not in report.read_only:
        emit(progress, "load", 0.5, "checking the preprocessing preset on a few dozen images")
        check_preset(report, model, dataset, job)
        report.save()
    return RunContext(
        job=job,
        run_dir=run_dir,
        progress=progress,
        cache_dir=cache_dir,
        model=model,
        model_sha=sha,
        dataset=dataset,
        specs=specs,
        report=report,
        calibration_data=inputs.calibration_data,
    )


def check_preset(report: ReportFile, model: ReferenceModel, dataset: Dataset, job: JobSpec) -> None:
    """report.json's `preset_check`: the original under every preset on a few dozen images;
    when another preset is clearly better, its one line joins the run's warnings."""
    from core.engine.preset_trial import preset_trial
    from core.metrics.preset_check import judge_presets

    used = str(job.preset)
    check = judge_presets(preset_trial(model, dataset.samples, used=used), used)
    report.set_run_part("preset_check", check)
    if check["advice"]:
        report.add_warnings([check["advice"]])


def derived_specs(
    report: Mapping[str, Any], specs: tuple[VariantSpec, ...]
) -> tuple[VariantSpec, ...]:
    """Variants `--auto-fix` added before a worker restart: part of the job from then on."""
    known = {spec.name for spec in specs}
    return tuple(
        VariantSpec.parse(entry["name"])
        for entry in report.get("variants") or []
        if entry.get("derived_by") and entry["name"] not in known
    )


def require_same_inputs(
    report: Mapping[str, Any],
    *,
    model_sha: str,
    dataset: Dataset,
    calibration_data: Dataset | None = None,
) -> None:
    """A reopened run (a restarted worker, a re-score) must see the model, images and
    calibration images it was scored on, or its new variant would be compared on other images
    than the finished ones, or calibrated on others.

    Raises:
        QuantLensError: the model file, the data set or the --calibration-data set changed
            since the run was made.
    """
    from core.errors import QuantLensError
    from core.inputs.datasets import dataset_sha256
    from core.reporting.sections.base import section_of
    from core.reporting.sections.calibration_record import CalibrationRecord

    if report["reference"].get("sha256") not in (None, model_sha):
        raise QuantLensError(
            "the model file changed since this run was made; start a new run to score it"
        )
    if report["dataset"].get("sha256") not in (None, dataset_sha256(dataset)):
        raise QuantLensError(
            "the data set changed since this run was made (images or labels differ); start a "
            "new run to score it"
        )
    # Recorded by the decode stage (core.engine.stages.decode.write_calibration_record).
    calibration = section_of(report, CalibrationRecord)
    calibrated_on = None if calibration is None else calibration.sha256
    if calibrated_on is not None and (
        calibration_data is None or dataset_sha256(calibration_data) != calibrated_on
    ):
        raise QuantLensError(
            "the calibration data (--calibration-data) changed since this run was made; start "
            "a new run to calibrate on it"
        )


def resolve_inputs(job: JobSpec, run_dir: Path) -> Inputs:
    """Extract zipped models or data into the run directory and enumerate the data set."""
    from core.errors import DatasetError, UnsupportedModel
    from core.inputs.archives import content_named, extract_once, find_saved_model_dir
    from core.inputs.datasets import load_dataset
    from core.inputs.paths import allowed_roots, require_under_roots

    roots = allowed_roots()
    model_path = require_under_roots(Path(job.model_path), roots, what="model")
    if model_path.suffix.lower() == ".zip":
        target = extract_once(model_path, content_named(run_dir / "model", model_path))
        kerases = sorted(p for p in target.rglob("*.keras") if "__MACOSX" not in p.parts)
        if (list(target.rglob("saved_model.pb"))) or not kerases:
            model_path = find_saved_model_dir(target)
        elif len(kerases) == 1:
            model_path = kerases[0]
        else:
            raise UnsupportedModel(
                f"{Path(job.model_path).name} holds {len(kerases)} .keras files; zip one model"
            )
    # A restarted worker reuses run_dir/data-<hash> through the same call, so it reads the same
    # samples; another archive (a rerun into the same --out) gets its own folder.
    dataset = load_dataset(
        job.data_path,
        labels_file=job.labels_file,
        extract_dir=run_dir / "data",
        allowed_roots=roots,
    )
    calibration_data = None
    if job.calibration_data:
        calibration_data = load_dataset(
            job.calibration_data, extract_dir=run_dir / "calibration-data", allowed_roots=roots
        )
        if not calibration_data.samples:
            raise DatasetError(
                f"--calibration-data {job.calibration_data} holds no usable image; point it at "
                "a folder, zip or CSV of images"
            )
    return Inputs(model_path=model_path, dataset=dataset, calibration_data=calibration_data)


def drop_labels_outside(dataset: Dataset, num_classes: int) -> Dataset:
    """Skip samples whose integer label the model cannot predict; they are listed, not scored."""
    kept = tuple(s for s in dataset.samples if s.label is None or s.label < num_classes)
    if len(kept) == len(dataset.samples):
        return dataset
    skipped = tuple(
        SkippedSample(
            relpath=s.relpath,
            reason=f"label {s.label} is outside the model's {num_classes} classes",
        )
        for s in dataset.samples
        if s.label is not None and s.label >= num_classes
    )
    return replace(dataset, samples=kept, skipped=dataset.skipped + skipped)


def class_count_warnings(dataset: Dataset, model: ReferenceModel) -> list[str]:
    names, num_classes = dataset.class_names, model.signature.num_classes
    if names and len(names) != num_classes:
        return [
            f"the data set names {len(names)} classes but the model outputs {num_classes}; "
            "check labels.txt or the class folders"
        ]
    return []


def new_report(
    job: JobSpec,
    run_dir: Path,
    inputs: Inputs,
    model: ReferenceModel,
    model_sha: str,
    specs: tuple[VariantSpec, ...],
    selected_names: set[str],
) -> dict[str, Any]:
    """report.json before any work: the run, the original, the data, every variant pending."""
    from core.engine.models import model_size_bytes
    from core.inputs.datasets import dataset_sha256
    from core.inputs.presets import preset_value_range
    from core.reporting.report import (
        ROLE_PIVOT,
        ROLE_SELECTED,
        SCHEMA_VERSION,
        environment,
        pending_variant,
        pivot_name,
    )
    from core.reporting.sections.base import put_section

    sig = model.signature
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run": {
            "id": run_dir.name,
            "name": job.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "status": str(RunStatus.RUNNING),
            "command": reproduce_command(job),
            "trusted": job.trusted,
        },
        "reference": {
            "path": str(inputs.model_path),
            "format": sig.format,
            "size_bytes": model_size_bytes(inputs.model_path),
            "sha256": model_sha,
            "input_shape": list(sig.input_shape),
            "input_dtype": sig.input_dtype,
            "num_classes": sig.num_classes,
            "output_columns": sig.raw_columns,
            "outputs_probabilities": sig.outputs_probabilities,
            "accuracy_pct": None,
            "latency_ms": None,
        },
        "dataset": {
            "path": inputs.dataset.path,
            "file": job.data_path,  # the CSV (or folder, zip) the user named
            "sha256": dataset_sha256(inputs.dataset),
            "kind": inputs.dataset.kind,
            "num_samples": 0,
            "num_skipped": len(inputs.dataset.skipped),
            "has_labels": inputs.dataset.has_labels,
            "class_names": list(inputs.dataset.class_names) if inputs.dataset.class_names else None,
            "skipped": [s.to_dict() for s in inputs.dataset.skipped],
        },
        "preprocessing": {
            "preset": str(job.preset),
            "height": sig.height,
            "width": sig.width,
            "channels": sig.channels,
            "value_range": list(preset_value_range(job.preset)),
        },
        "options": {
            "calibration_samples": job.calibration_samples,
            "max_samples": job.max_samples,
            "threads": job.threads,
            "min_agreement_pct": job.min_agreement_pct,
            "verdict": job.verdict,
            "target": job.target,
            "arena_kb": job.arena_kb,
            "perturb": job.perturb,
            "seed": job.seed,
            "latency_runs": job.latency_runs,  # None: as many as the budget allows
            "latency_budget_s": None if job.latency_runs else job.latency_budget_s,
            "warmup_runs": job.warmup_runs,
            "calibration_data": job.calibration_data,
            "calibration_overlap": job.calibration_overlap,
            "calibration_sweep": list(job.calibration_sweep),
            "sweep_seeds": job.sweep_seeds if job.calibration_sweep else None,
        },
        "pivot": pivot_name(list(specs)),
        "variants": [
            pending_variant(spec, role=ROLE_SELECTED if spec.name in selected_names else ROLE_PIVOT)
            for spec in specs
        ],
        "environment": environment(threads=effective_threads(job)),
        "warnings": [],
    }
    put_section(report, local_engine_info())  # the Ray stage replaces it once it joins a cluster
    return report


def local_engine_info() -> EngineInfo:
    """report.json's `engine` for a run on this machine alone (it also times the models)."""
    import socket

    from core.reporting.sections.engine_info import EngineInfo

    host = socket.gethostname()
    return EngineInfo(name="local", address=None, nodes=(host,), latency_node=host)
