"""Memory that stays flat with the number of images: per-sample files are written batch by
batch as outputs arrive (a crash leaves the batches so far), and the dashboard's readers read
only what a page shows from a large run folder.

Synthetic outputs and real files; expected values are computed here with numpy and csv,
independently of core.metrics and the engine.
"""

from __future__ import annotations

import csv
import tracemalloc
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from core.engine.stages.context import ReportFile, RunContext
from core.engine.stages.evaluate import VariantWriter
from core.engine.stages.files import BATCH
from core.engine.stages.reference import ReferenceOutputs
from core.inputs import rundir
from core.reporting.results import load_results
from core.types import JobSpec, Mode, VariantSpec

CLASSES = 5


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _synthetic_run(run_dir: Path, n: int) -> tuple[RunContext, ReferenceOutputs]:
    """A run folder holding the original's probabilities for n samples, and its context."""
    run_dir.mkdir()
    rng = np.random.default_rng(0)
    np.save(run_dir / rundir.REFERENCE_PROBS, _softmax(rng.normal(size=(n, CLASSES))).astype("f4"))
    report = ReportFile(
        run_dir / rundir.REPORT, {"variants": [{"name": "float16", "status": "running"}]}
    )
    run = RunContext(
        job=JobSpec(model_path="m", data_path="d"),
        run_dir=run_dir,
        progress=lambda _e: None,
        cache_dir=None,
        model=cast(Any, None),  # the writer never touches the model
        model_sha="",
        dataset=cast(Any, None),
        specs=(VariantSpec(Mode.FLOAT16),),
        report=report,
    )
    reference = ReferenceOutputs(
        probs_path=run_dir / rundir.REFERENCE_PROBS,
        num_classes=CLASSES,
        softmax=False,
        labels=np.arange(n, dtype=np.int64) % CLASSES,
        sample_indices=[1000 + i for i in range(n)],
        calibration=None,
    )
    return run, reference


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _npy_data_rows(path: Path) -> np.ndarray:
    """The float32 rows a .npy holds on disk, whatever its header promises."""
    raw = path.read_bytes()
    header_end = raw.index(b"\n") + 1  # a version 1.0 header ends with the first newline
    return np.frombuffer(raw[header_end:], dtype="<f4").reshape(-1, CLASSES)


def test_a_variants_files_hold_each_batch_as_soon_as_it_is_added(tmp_path: Path) -> None:
    n = 2 * BATCH + 7
    run, reference = _synthetic_run(tmp_path / "run", n)
    ref = np.load(reference.probs_path).astype(np.float64)
    outputs = ref.astype(np.float32)
    outputs[::5] = np.roll(outputs[::5], 1, axis=1)  # every 5th sample flips its top-1
    writer = VariantWriter(run, reference, VariantSpec(Mode.FLOAT16))

    writer.add(outputs[:BATCH])
    # What a crash right now would leave: exactly the first batch, in both files.
    rows = _csv_rows(rundir.variant_samples_path(run.run_dir, rundir.FileId("float16")))
    assert [int(r["index"]) for r in rows] == list(range(1000, 1000 + BATCH))
    agree = ref[:BATCH].argmax(1) == outputs[:BATCH].argmax(1)
    assert [r["agree"] == "1" for r in rows] == agree.tolist()
    on_disk = _npy_data_rows(rundir.probs_path(run.run_dir, rundir.FileId("float16")))
    np.testing.assert_array_equal(on_disk, outputs[:BATCH])

    writer.add(outputs[BATCH : 2 * BATCH])
    writer.add(outputs[2 * BATCH :])
    done = writer.finish(cast(Any, None), {})
    np.testing.assert_array_equal(
        np.load(rundir.probs_path(run.run_dir, rundir.FileId("float16"))), outputs
    )
    assert len(_csv_rows(rundir.variant_samples_path(run.run_dir, rundir.FileId("float16")))) == n
    expected_agree = ref.argmax(1) == outputs.argmax(1)
    assert done.metrics.n == n
    assert done.metrics.disagreements == int((~expected_agree).sum()) == len(range(0, n, 5))
    assert done.metrics.top1_agreement_pct == pytest.approx(100 * expected_agree.mean())
    labels = reference.labels
    assert done.metrics.tflite_accuracy_pct == pytest.approx(
        100 * (outputs.argmax(1) == labels).mean()
    )


def test_a_variant_that_stops_short_of_every_image_does_not_finish(tmp_path: Path) -> None:
    from core.errors import QuantLensError

    run, reference = _synthetic_run(tmp_path / "run", BATCH + 3)
    writer = VariantWriter(run, reference, VariantSpec(Mode.FLOAT16))
    writer.add(np.load(reference.probs_path)[:BATCH])
    with pytest.raises(QuantLensError, match=f"outputs for {BATCH} of {BATCH + 3} images"):
        writer.finish(cast(Any, None), {})


# -- the dashboard's readers on a large run -----------------------------------------------------
LARGE = 20_000


def _large_run_folder(run_dir: Path) -> None:
    """samples.csv and v.samples.csv for LARGE samples, written with the csv module."""
    run_dir.mkdir()
    rundir.write_json_atomic(
        run_dir / rundir.REPORT,
        {
            "schema": 2,
            "run": {"id": "big"},
            "variants": [{"name": "v", "mode": "float16", "status": "done"}],
        },
    )
    with (run_dir / rundir.SAMPLES).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["index", "relpath", "label", "ref_top1", "ref_top1_prob", "ref_margin"])
        for i in range(LARGE):
            w.writerow([i, f"images/some/long/folder/name/{i:06d}.png", i % 7, i % 7, 0.9, 0.5])
    with rundir.variant_samples_path(run_dir, rundir.FileId("v")).open(
        "w", newline="", encoding="utf-8"
    ) as f:
        w = csv.writer(f)
        columns = ["index", "tfl_top1", "tfl_top1_prob", "agree", "max_abs_delta", "kl"]
        w.writerow([*columns, "top1_prob_delta"])
        for i in range(LARGE):
            flipped = i % 100 == 0
            w.writerow([i, (i + flipped) % 7, 0.8, int(not flipped), i / LARGE, 0.01, -i / LARGE])


@pytest.fixture(scope="module")
def large_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("large") / "run"
    _large_run_folder(run_dir)
    return run_dir


def test_a_gallery_page_reads_only_its_rows(large_run: Path) -> None:
    res = load_results(large_run)
    tracemalloc.start()
    page = res.variant_rows("v", [19_999, 5, 12_345])
    _, peak_page = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert page["row"].tolist() == [19_999, 5, 12_345]  # in the order asked for
    assert page["relpath"].tolist() == [
        f"images/some/long/folder/name/{i:06d}.png" for i in (19_999, 5, 12_345)
    ]
    assert page["tfl_top1"].tolist() == [19_999 % 7, 5 % 7, (12_345) % 7]
    assert page["agree"].tolist() == [True, True, True]
    assert page["abs_top1_prob_delta"].tolist() == pytest.approx(
        [19_999 / LARGE, 5 / LARGE, 12_345 / LARGE]
    )
    # Nothing of the whole table was kept, and far less memory than reading it was used.
    assert not any(key.startswith("samples") for key in res._memo)
    tracemalloc.start()
    whole = load_results(large_run).variant_samples("v")
    _, peak_whole = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(whole) == LARGE
    assert peak_page < peak_whole / 4, (peak_page, peak_whole)


def test_the_summary_holds_every_sample_but_no_text_columns(large_run: Path) -> None:
    res = load_results(large_run)
    summary = res.variant_summary("v")
    assert len(summary) == LARGE
    assert "relpath" not in summary.columns and "label" not in summary.columns
    assert int((~summary["agree"]).sum()) == LARGE // 100
    assert summary["row"].tolist()[:3] == [0, 1, 2]
    assert res.variant_summary("v") is summary  # read once per version of the files


def test_report_html_streams_the_per_sample_files(large_run: Path) -> None:
    """report.html's gallery holds the most different disagreements and the right counts,
    built without holding either 20,000-row file whole."""
    from core.reporting.html import MAX_GALLERY, render_report_html

    tracemalloc.start()
    page = render_report_html(large_run)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert f"v: {LARGE // 100} of {LARGE} samples disagree" in page
    # Disagreements are the multiples of 100; max |Δp| grows with the index: the last ones.
    shown = [i for i in range(0, LARGE, 100)][-MAX_GALLERY:]
    for i in shown:
        assert f"{i:06d}.png" in page
    assert f"{shown[0] - 100:06d}.png" not in page
    # The two files as lists of dicts take tens of MB; streamed, a few MB at most.
    assert peak < 8_000_000, peak
