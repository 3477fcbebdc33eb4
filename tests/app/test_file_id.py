"""A variant's files are named by a short, stable file_id; reports from before file ids are
read through the name; long names are summarised where they are shown."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from core.inputs import rundir
from core.reporting.report import format_table
from core.reporting.results import load_results
from core.reporting.runmodel import RunReport, read_report
from core.reporting.sections.variant import Variant, VariantIdentity
from core.types import Mode, VariantSpec, short_name
from tests.app.conftest import OpenPage
from tests.app.fixtures import build_run
from ui import keys

LAYERS = tuple(f"feature_extractor_block_{i:02d}_conv" for i in range(12))


def test_plain_variants_keep_their_name_and_overrides_get_mode_plus_a_hash() -> None:
    for text in ("int8", "int8-uint8", "int8_q", "float16+tf", "int16x8_q", "float32"):
        assert VariantSpec.parse(text).file_id == text
    long_name = "int8:keep=" + "+".join(LAYERS)
    spec = VariantSpec.parse(long_name)
    # Independently: the base name, "-k", then 8 hex of the SHA-256 of the full name.
    digest = hashlib.sha256(long_name.encode()).hexdigest()[:8]
    assert spec.file_id == f"int8-k{digest}"
    # Stable whatever order the layers were given in; another list is another id.
    assert VariantSpec.parse("int8:keep=" + "+".join(reversed(LAYERS))).file_id == spec.file_id
    assert VariantSpec.parse("int8:keep=dense").file_id != spec.file_id
    assert VariantSpec.parse("int8_q:keep=a:int16=b").file_id.startswith("int8_q-k")


def test_the_file_id_is_stored_on_the_variant_and_older_reports_fall_back_to_the_name() -> None:
    spec = VariantSpec.parse("int8:keep=" + "+".join(LAYERS))
    written = Variant(VariantIdentity.from_spec(spec)).to_dict()
    assert written["file_id"] == spec.file_id
    assert Variant.from_dict(written).file_id == spec.file_id
    # A report written before file ids: its files carry the variant's name.
    old = {"name": "int8:keep=dense", "mode": "int8", "float_layers": ["dense"]}
    assert Variant.from_dict(old).file_id == "int8:keep=dense"
    assert RunReport.from_dict({"variants": [old]}).files_of("int8:keep=dense").file_id == (
        "int8:keep=dense"
    )
    assert VariantIdentity(name="float16", mode=Mode.FLOAT16).file_id == "float16"


def test_a_report_without_file_ids_is_read_through_the_names(tmp_path: Path) -> None:
    """build_run writes its report the old way (no file_id), its files named by the name."""
    run = build_run(tmp_path, flips={"float16": 0, "int8:keep=dense": 3}, failed_variant=None)
    report = json.loads((run / rundir.REPORT).read_text())
    assert all("file_id" not in v for v in report["variants"])
    assert (run / "int8:keep=dense.samples.csv").is_file()
    res = load_results(run)
    joined = res.variant_samples("int8:keep=dense")
    assert len(joined) == 40 and int((joined["agree"] == 0).sum()) == 3
    assert res.probs("int8:keep=dense") is not None
    assert read_report(run).variant("int8:keep=dense").file_id == "int8:keep=dense"


def test_long_names_are_summarised_in_the_table_and_short_ones_are_not(tmp_path: Path) -> None:
    long_name = "int8:keep=" + "+".join(f"conv2d_{i}" for i in range(12))
    assert short_name(long_name) == "int8:keep=conv2d_0+conv2d_1+conv2d_2 … and 9 more"
    assert short_name("int8:keep=conv2d+dense") == "int8:keep=conv2d+dense"
    assert short_name("int8_q:keep=" + "+".join(LAYERS) + ":int16=dense") == (
        f"int8_q:keep={LAYERS[0]} … and 11 more:int16=dense"
    )
    assert len(short_name("int8:keep=" + "x" * 500)) <= 160
    run = build_run(tmp_path, flips={"float16": 0, long_name: 2}, failed_variant=None)
    table = format_table(read_report(run))
    assert "conv2d_0+conv2d_1+conv2d_2 … and 9 more" in table
    assert "conv2d_11" not in table


def test_pages_open_on_an_old_report_with_a_long_override_variant(
    home: Path, open_page: OpenPage
) -> None:
    long_name = "int8:keep=" + "+".join(f"conv2d_{i}" for i in range(12))
    build_run(home, flips={"float16": 0, long_name: 4}, failed_variant=None)
    at = open_page("overview")
    headings = [m.value.replace("\\", "") for m in at.markdown if m.value.startswith("####")]
    assert "#### int8:keep=conv2d_0+conv2d_1+conv2d_2 … and 9 more" in headings
    gallery = open_page("disagreements", state={keys.DISAGREE_VARIANT: long_name})
    assert len([b for b in gallery.button if str(b.key).startswith("disagreements.tile.")]) == 4
