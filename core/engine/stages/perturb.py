"""The flip hunt (`--perturb`): every finished variant and the original on the decoded images
under each small perturbation (core.inputs.perturb), agreement counted only on the images whose
original answer did not change. Writes each variant's `flip_hunt` in report.json and its new
flips to `<variant>.flip-hunt.csv` (row, data set index, perturbation, original's class,
variant's class).

Off by default: it runs the original and every variant five more times over the images.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from core.engine.stages.context import RunContext
from core.engine.stages.files import DecodedCache
from core.engine.stages.reference import ReferenceOutputs
from core.inputs import rundir
from core.inputs.perturb import PERTURBATIONS, Perturbation
from core.metrics.agreement import to_probabilities, top1, wilson_interval
from core.reporting.sections.flip_hunt import PerturbedAgreement
from core.runfolder.protocol import DECODED_CACHE
from core.types import VariantStatus

NO_DECODED_IMAGES = (
    "the flip hunt needs the decoded images on this machine; with --engine ray they stay on "
    "the cluster, so --perturb was not run"
)


def run_flip_hunt(run: RunContext, reference: ReferenceOutputs) -> None:
    """The flip hunt of every finished variant that has none yet (nothing without --perturb)."""
    if not run.job.perturb:
        return
    names = [
        s.name
        for s in run.specs
        if run.report.variant(s.name)["status"] == VariantStatus.DONE
        and not run.report.variant(s.name).get("flip_hunt")
    ]
    if not names:
        return
    if not (run.run_dir / DECODED_CACHE).is_file():
        if run.report.add_warnings([NO_DECODED_IMAGES]):
            run.report.save()
        return
    clean_original = top1(np.load(reference.probs_path))
    clean = {
        n: top1(np.load(rundir.probs_path(run.run_dir, run.report.files_of(n)))) for n in names
    }
    found: dict[str, list[PerturbedAgreement]] = {n: [] for n in names}
    flips: dict[str, list[tuple[int, int, str, int, int]]] = {n: [] for n in names}
    for i, perturbation in enumerate(PERTURBATIONS):
        run.emit("perturb", i / len(PERTURBATIONS), f"flip hunt: {perturbation.name}")
        original, variants = _perturbed_answers(run, reference, perturbation, names, seed=i)
        kept = original == clean_original  # the original's answer did not change
        for name in names:
            agree = variants[name] == original
            new = kept & (clean[name] == clean_original) & ~agree
            counted, agreeing = int(kept.sum()), int((agree & kept).sum())
            low, high = wilson_interval(agreeing, counted)
            found[name].append(
                PerturbedAgreement(
                    perturbation=perturbation.name,
                    n=len(original),
                    original_changed=len(original) - counted,
                    counted=counted,
                    agreeing=agreeing,
                    agreement_pct=100.0 * agreeing / counted if counted else None,
                    ci95=(100.0 * low, 100.0 * high) if counted else None,
                    new_flips=int(new.sum()),
                )
            )
            flips[name] += [
                (
                    int(r),
                    int(reference.sample_indices[r]),  # the data set index the gallery filters by
                    perturbation.name,
                    int(original[r]),
                    int(variants[name][r]),
                )
                for r in np.flatnonzero(new)
            ]
    for name in names:
        _write_flips(
            rundir.variant_file(run.run_dir, run.report.files_of(name), rundir.FLIP_HUNT),
            flips[name],
        )
        run.report.set_result(name, flip_hunt=tuple(found[name]))
    run.report.save()


def _perturbed_answers(
    run: RunContext,
    reference: ReferenceOutputs,
    perturbation: Perturbation,
    names: list[str],
    *,
    seed: int,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Top-1 of the original and of each variant on every decoded image under `perturbation`
    (the same perturbed pixels for all of them, seeded by the run's seed and the perturbation)."""
    from core.engine.runtime import OriginalRunner
    from core.engine.stages.measure import run_runner

    cache = DecodedCache(run.run_dir / DECODED_CACHE, run.image_shape)
    rng = np.random.default_rng([run.job.seed, seed])
    runners = {
        n: run_runner(
            run, rundir.tflite_path(run.run_dir, run.report.files_of(n)).read_bytes(), name=n
        )
        for n in names
    }
    source = OriginalRunner(run.model, preset=run.job.preset)
    original: list[np.ndarray] = []
    variants: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for pixels in cache.batches():
        perturbed = perturbation.apply(pixels, rng)  # the runners apply the run's preset
        original.append(_top1(source.infer(perturbed), reference.softmax))
        for n, runner in runners.items():
            variants[n].append(_top1(runner.infer(perturbed), reference.softmax))
    return np.concatenate(original), {n: np.concatenate(v) for n, v in variants.items()}


def _top1(outputs: np.ndarray, softmax: bool) -> np.ndarray:
    """The answer per image, decided as the evaluate stage decides it (the original's
    logits-or-probabilities decision, one-column binary outputs as two classes)."""
    return top1(to_probabilities(outputs, softmax=softmax))


def _write_flips(path: Path, rows: list[tuple[int, int, str, int, int]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "index", "perturbation", "original_class", "variant_class"])
        writer.writerows(rows)
    tmp.replace(path)
