"""The Targets page on a hand-built run whose variants carry a deployability pre-flight: the
pick per target with the variants it excludes and why, the arena limit, the pre-flight tables
(Vela's NPU/CPU split among them) and the gpu target never faked."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from core.reporting.runmodel import update_report
from core.reporting.sections.deployability import (
    CellStatus,
    Deployability,
    IntegerOnlyCell,
    MicroCell,
    VelaCell,
)
from core.reporting.targets import GPU_NOT_EVALUATED
from tests.app.conftest import OpenPage
from tests.app.fixtures import build_run
from ui import keys

FLOAT16 = Deployability(
    IntegerOnlyCell(False, False, ("CONV_2D conv (FLOAT32)",)),
    MicroCell(CellStatus.FAILS, reason="TFLite-Micro cannot plan it (DEQUANTIZE failed)"),
    VelaCell(CellStatus.NOT_APPLICABLE, reason="no op computes in integers"),
)
INT8 = Deployability(
    IntegerOnlyCell(True, True, ()),
    MicroCell(CellStatus.OK, arena_bytes=40_960),
    VelaCell(
        CellStatus.OK,
        accelerator="ethos-u55-128",
        npu_ops=12,
        cpu_ops=2,
        cpu_op_types=("DEQUANTIZE", "QUANTIZE"),
        sram_bytes=21_824,
        flash_bytes=19_984,
        cycles=48_249,
        inferences_per_second=10_362.9,
    ),
)


def _with_preflight(run: Path) -> None:
    def add(report: dict[str, Any]) -> None:
        for v in report["variants"]:
            found = {"float16": FLOAT16, "int8": INT8}.get(v["name"])
            if found is not None:
                v["deployability"] = found.to_dict()

    update_report(run, add)


def _text(at) -> str:  # type: ignore[no-untyped-def]
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    return re.sub(r"\\(.)", r"\1", "\n".join(parts))


def test_each_target_picks_excludes_and_shows_the_preflight(
    home: Path, open_page: OpenPage
) -> None:
    # 200 images: float16 agrees on all, int8 flips one: both pass at 95 %.
    _with_preflight(build_run(home, n=200, flips={"float16": 0, "int8": 1}))
    at = open_page("targets", state={keys.TARGETS_TARGET: "integer-only"})
    assert [s.value for s in at.success] == ["**Recommended: int8**"]
    text = _text(at)
    assert "float16** excluded: computes in float: 1 op (CONV_2D)" in text
    tables = [t.value for t in at.dataframe]
    vela = next(t for t in tables if "Ethos-U ops (NPU / CPU)" in t.columns)
    int8 = vela[vela["variant"] == "int8"].iloc[0]
    assert (
        int8["Ethos-U ops (NPU / CPU)"] == "12 / 2 (DEQUANTIZE, QUANTIZE) — falls back to the CPU"
    )
    assert int8["Ethos-U SRAM / flash"] == "21.3 KiB / 19.5 KiB"  # 21824/1024, 19984/1024
    micro = next(t for t in tables if "TFLite-Micro" in t.columns)
    assert micro[micro["variant"] == "int8"].iloc[0]["TFLite-Micro"] == "runs; arena 40.0 KiB"
    assert "TensorFlow's GPU compatibility analyzer is not used" in text
    assert "Coral's Edge TPU compiler is not available" in text
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    flagged = next(t for t in chart["data"] if t.get("name") == "CPU fallback (Vela)")
    assert flagged["text"][0].startswith("int8: Ethos-U: 2 of 14 ops on the CPU")
    crossed = next(t for t in chart["data"] if t.get("name") == "not runnable here")
    assert crossed["text"][0].startswith("float16: computes in float")

    # mcu with a 32 KiB arena: int8's 40 KiB does not fit, float16 computes in float.
    at.number_input(key=keys.TARGETS_ARENA).set_value(32)
    at.segmented_control(key=keys.TARGETS_TARGET).set_value("mcu").run()
    assert [w.value for w in at.warning] == ["**No variant qualifies for a recommendation.**"]
    assert "int8** excluded: needs a 40.0 KiB arena, over the 32 KiB limit" in _text(at)

    at.segmented_control(key=keys.TARGETS_TARGET).set_value("gpu").run()
    assert not at.success
    assert GPU_NOT_EVALUATED in _text(at)


def test_setup_asks_for_the_target_the_arena_and_the_flip_hunt(
    home: Path, open_page: OpenPage
) -> None:
    (home / "demo-build.pid").write_text("999999")  # no demo: the form alone
    at = open_page("setup")
    target = at.radio(key=keys.SETUP_TARGET)
    assert target.value == "cpu"
    assert target.options[:4] == [
        "cpu: CPU (LiteRT with XNNPACK)",
        "integer-only: integer-only accelerator (NPU, Edge TPU-like)",
        "mcu: microcontroller (TFLite-Micro)",
        "gpu: mobile GPU (float16 numerics)",
    ]
    assert at.number_input(key=keys.SETUP_ARENA_KB).value == 0  # 0 = no limit
    assert at.checkbox(key=keys.SETUP_PERTURB).value is False  # the flip hunt is off by default


def test_the_flip_hunt_shows_on_the_agreement_page_and_in_report_html(
    home: Path, open_page: OpenPage
) -> None:
    from core.reporting.html import render_report_html
    from core.reporting.sections.flip_hunt import PerturbedAgreement

    # 40 images; under JPEG the original changed its answer on 4, int8 agrees on 33 of the
    # other 36 (91.7 %), 2 of them new flips.
    row = PerturbedAgreement("JPEG quality 75", 40, 4, 36, 33, 100 * 33 / 36, (78.2, 97.1), 2)
    run = build_run(home, flips={"float16": 0, "int8": 6})

    def add(report: dict[str, Any]) -> None:
        for v in report["variants"]:
            if v["name"] == "int8":
                v["flip_hunt"] = [row.to_dict()]

    update_report(run, add)
    at = open_page("agreement")
    table = next(t.value for t in at.dataframe if "perturbation" in t.value.columns)
    first = table.iloc[0]
    assert (first["variant"], first["perturbation"], first["n counted"]) == (
        "int8",
        "JPEG quality 75",
        36,
    )
    assert round(float(first["agreement (%)"]), 1) == 91.7
    assert first["original changed its answer"] == "4 of 40"
    html = render_report_html(run)
    assert (
        "JPEG quality 75: 91.7 % agree [78.2, 97.1] n=36; 2 new flips; the original changed its "
        "own answer on 4 of 40" in html
    )
