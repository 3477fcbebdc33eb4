"""The runtime matrix on the dashboard: the variants x runtimes table on Overview, and the
Disagreements filter "flipped by the runtime, not the quantization", on a hand-built run whose
matrix is written through the run model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from core.inputs import rundir
from core.reporting.runmodel import read_report, update_report
from core.reporting.sections.base import put_section
from core.reporting.sections.runtime_matrix import RuntimeCell, RuntimeMatrix
from tests.app.conftest import OpenPage
from ui import keys

TFLM_REASON = "int8 needs an op TFLite-Micro lacks"


def _with_matrix(run_dir: Path) -> list[int]:
    """Write a matrix where the reference kernels flip two images int8 agrees on under
    XNNPACK; returns those images' data set indices."""
    report = read_report(run_dir)
    int8 = report.variant("int8")
    assert int8 is not None
    samples = pd.read_csv(rundir.variant_samples_path(run_dir, int8))
    flipped = [int(i) for i in samples.loc[samples["agree"] == 1, "index"][:2]]
    n = len(samples)
    cells = (
        RuntimeCell(
            "float16",
            "xnnpack",
            n=n,
            agree=n,
            agreement_pct=100.0,
            ci_low_pct=91.2,
            ci_high_pct=100.0,
        ),
        RuntimeCell(
            "float16",
            "reference",
            n=n,
            agree=n,
            agreement_pct=100.0,
            ci_low_pct=91.2,
            ci_high_pct=100.0,
        ),
        RuntimeCell("float16", "tflm", reason="float16 is not integer-only"),
        RuntimeCell(
            "int8", "xnnpack", n=n, agree=34, agreement_pct=85.0, ci_low_pct=70.9, ci_high_pct=92.9
        ),
        RuntimeCell(
            "int8",
            "reference",
            n=n,
            agree=32,
            agreement_pct=80.0,
            ci_low_pct=65.2,
            ci_high_pct=89.5,
            runtime_flips=tuple(flipped),
        ),
        RuntimeCell("int8", "tflm", reason=TFLM_REASON),
    )
    matrix = RuntimeMatrix(
        runtimes=("xnnpack", "reference", "tflm"), total=n, subset=n, cells=cells
    )
    update_report(run_dir, lambda report: put_section(report, matrix))
    return flipped


def test_overview_shows_one_table_of_variants_by_runtimes(
    crafted: Path, open_page: OpenPage
) -> None:
    _with_matrix(crafted)
    at = open_page("overview")
    table = next(df.value for df in at.dataframe if "reference kernels" in list(df.value.columns))
    assert list(table.columns) == [
        "variant",
        "XNNPACK (run's threads)",
        "reference kernels",
        "TFLite-Micro",
    ]
    row = table.set_index("variant").loc["int8"]
    assert row["reference kernels"] == "80.00% [65.2, 89.5] n=40 · 2 runtime flips"
    assert row["TFLite-Micro"] == f"not run: {TFLM_REASON}"
    assert any("not the quantization" in c.value for c in at.caption)


def test_the_gallery_shows_the_images_the_runtime_flipped(
    crafted: Path, open_page: OpenPage
) -> None:
    flipped = _with_matrix(crafted)
    at = open_page(
        "disagreements",
        state={keys.DISAGREE_VARIANT: "int8", keys.DISAGREE_RUNTIME: "reference"},
    )
    tiles = [b for b in at.button if str(b.key).startswith("disagreements.tile.")]
    assert len(tiles) == len(flipped) == 2  # images int8 agrees on under XNNPACK
    assert "**2** runtime-flipped images of **40** samples" in at.markdown[0].value
    assert any("reference kernels" in i.value for i in at.info)
    at.selectbox(key=keys.DISAGREE_RUNTIME).set_value("").run()
    assert "**6** disagreements of **40** samples" in at.markdown[0].value


@pytest.mark.slow
def test_setup_chooses_the_runtimes_in_one_multiselect(
    fresh_demo_home: Path, open_page: OpenPage
) -> None:
    from core.jobs import launch as jobs

    at = open_page("setup", timeout=180)
    picker = at.multiselect(key=keys.SETUP_RUNTIMES)
    assert picker.value == []  # no matrix unless asked for: a run is not slowed
    assert picker.options == [
        "XNNPACK (run's threads)",
        "XNNPACK, 1 thread",
        "built-in kernels",
        "reference kernels",
        "TFLite-Micro",
    ]
    at.multiselect(key=keys.SETUP_MODES).set_value(["float16"]).run()
    picker = at.multiselect(key=keys.SETUP_RUNTIMES)
    picker.set_value(["reference", "xnnpack"]).run()
    at.button(key=keys.SETUP_RUN).click().run(timeout=60)
    rid = at.session_state[keys.SELECTED_RUN]
    job = json.loads((fresh_demo_home / "runs" / rid / "job.json").read_text())
    jobs.cancel_run(rid)
    assert job["runtimes"] == ["xnnpack", "reference"]
    assert job["runtime_images"] == 200


def test_the_gallery_shows_the_images_a_perturbation_flipped(
    crafted: Path, open_page: OpenPage
) -> None:
    """A flip-hunt file naming two agreeing images under the crop: the filter shows exactly
    those, says which perturbation, and the list goes back to the disagreements when off."""
    report = read_report(crafted)
    int8 = report.variant("int8")
    assert int8 is not None
    samples = pd.read_csv(rundir.variant_samples_path(crafted, int8))
    flipped = [int(i) for i in samples.loc[samples["agree"] == 1, "index"][-2:]]
    hunt = rundir.variant_file(crafted, report.files_of("int8"), rundir.FLIP_HUNT)
    hunt.write_text(
        "row,index,perturbation,original_class,variant_class\n"
        + "".join(f"{i},{i},crop 92 %,0,1\n" for i in flipped)
        + "0,0,brightness +10 %,0,1\n",
        encoding="utf-8",
    )
    at = open_page(
        "disagreements",
        state={keys.DISAGREE_VARIANT: "int8", keys.DISAGREE_PERTURBATION: "crop 92 %"},
    )
    tiles = [b for b in at.button if str(b.key).startswith("disagreements.tile.")]
    assert sorted(int(str(b.key).rsplit(".", 1)[-1]) for b in tiles) == sorted(flipped)
    assert "**2** perturbation-flipped images of **40** samples" in at.markdown[0].value
    assert any("newly flips under **crop 92 %**" in i.value for i in at.info)
    at.selectbox(key=keys.DISAGREE_PERTURBATION).set_value("").run()
    assert "**6** disagreements of **40** samples" in at.markdown[0].value
