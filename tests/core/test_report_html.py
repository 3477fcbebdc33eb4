"""Tests of the self-contained report.html built from a hand-made run directory."""

from __future__ import annotations

import base64
import csv
import io
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.errors import QuantLensError
from core.reporting.html import render_report_html, thumbnail_data_uri, write_report_html

EVIL_NAME = '<script>alert("pwned")</script> & co'
COMMAND = "python -m core run /models/m.keras --data /data/set --modes float16,int8 --samples 6"


class _Parsed(HTMLParser):
    """Collects tags with attributes, text outside <script>, table cells and script bodies."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text_outside_scripts: list[str] = []
        self.scripts: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._in_script = False
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
        elif tag == "table":
            self._table = a.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data
            return
        self.text_outside_scripts.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _parse(text: str) -> _Parsed:
    p = _Parsed()
    p.feed(text)
    p.close()
    return p


def _png(path: Path, size: tuple[int, int], mode: str, color: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _variant(name: str, **kw: Any) -> dict[str, Any]:
    v: dict[str, Any] = {
        "name": name,
        "mode": name,
        "io_type": None,
        "allow_select_tf_ops": False,
        "status": "done",
        "error": None,
        "size_bytes": None,
        "size_reduction_pct": None,
        "size_reduction_vs_float32_pct": None,
        "n": 6,
        "top1_agreement_pct": None,
        "top1_agreement_ci95": None,
        "k": 3,
        "topk_agreement_pct": None,
        "disagreements": None,
        "reference_accuracy_pct": 83.33,
        "tflite_accuracy_pct": None,
        "accuracy_delta_pct": None,
        "mcnemar_p": None,
        "max_abs_prob_delta": None,
        "mean_kl": None,
        "nan_outputs": 0,
        "flip_matrix": [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
        "latency_ms": None,
        "speedup_vs_reference": None,
        "conversion_seconds": 1.0,
        "select_tf_ops_used": [],
        "passed": None,
    }
    v.update(kw)
    return v


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished run: float16 passes, int8 fails with 3 flips, int16x8 crashed."""
    data = tmp_path / "data"
    _png(data / "cat" / "a.png", (8, 8), "RGB", (200, 30, 30))  # tiny: upscaled
    _png(data / "cat" / "b.png", (300, 150), "RGBA", (0, 0, 255, 128))  # alpha, downscaled
    _png(data / "dog" / "c.png", (20, 20), "L", 128)
    (data / "dog" / "broken.png").write_bytes(b"not an image at all")
    # dog/missing.png is listed in samples.csv but never written.
    _png(data / "bird" / "e.png", (10, 10), "RGB", (0, 255, 0))
    _png(tmp_path / "outside.png", (10, 10), "RGB", (0, 0, 0))

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    ref_size = 14_200_000
    report = {
        "schema_version": 1,
        "run": {
            "id": "r1",
            "name": EVIL_NAME,
            "created": "2025-01-02T03:04:05+00:00",
            "status": "done",
            "command": COMMAND,
            "trusted": False,
        },
        "reference": {
            "path": "/models/m.keras",
            "format": "keras",
            "size_bytes": ref_size,
            "sha256": "ab" * 32,
            "input_shape": [None, 32, 32, 3],
            "input_dtype": "float32",
            "num_classes": 3,
            "outputs_probabilities": True,
            "accuracy_pct": 83.33,
            "latency_ms": {
                "min": 4,
                "p50": 5.5,
                "p90": 6,
                "p99": 7.25,
                "mean": 5.6,
                "std": 0.4,
                "n": 50,
            },
        },
        "dataset": {
            "path": str(data),
            "kind": "folder",
            "num_samples": 6,
            "num_skipped": 2,
            "has_labels": True,
            "class_names": ["cat", "dog", "bird"],
            "skipped": [
                {"relpath": "dog/x.jpg", "reason": "truncated JPEG"},
                {"relpath": "<b>evil</b>.png", "reason": "not an image"},
            ],
        },
        "preprocessing": {
            "preset": "mobilenet_v2",
            "height": 32,
            "width": 32,
            "channels": 3,
            "value_range": [-1, 1],
        },
        "options": {
            "calibration_samples": 6,
            "max_samples": None,
            "threads": 2,
            "min_agreement_pct": 90.0,
            "seed": 0,
            "latency_runs": 50,
            "warmup_runs": 5,
        },
        "variants": [
            _variant(
                "float16",
                size_bytes=7_123_456,
                size_reduction_pct=49.84,
                top1_agreement_pct=100.0,
                top1_agreement_ci95=[60.97, 100.0],
                topk_agreement_pct=100.0,
                disagreements=0,
                tflite_accuracy_pct=83.33,
                latency_ms={
                    "min": 1,
                    "p50": 1.234,
                    "p90": 1.5,
                    "p99": 2.468,
                    "max": 2.6,
                    "mean": 1.3,
                    "std": 0.1,
                    "n": 50,
                },
                passed=True,
            ),
            _variant(
                "int8",
                size_bytes=3_654_321,
                size_reduction_pct=74.27,
                size_reduction_vs_float32_pct=74.0,
                top1_agreement_pct=50.0,
                top1_agreement_ci95=[18.76, 81.24],
                topk_agreement_pct=83.33,
                disagreements=3,
                tflite_accuracy_pct=33.33,
                latency_ms={
                    "min": 0.5,
                    "p50": 0.812,
                    "p90": 0.9,
                    "p99": 1.057,
                    "max": 1.2,
                    "mean": 0.8,
                    "std": 0.1,
                    "n": 50,
                },
                passed=False,
            ),
            _variant(
                "int16x8",
                status="crashed",
                n=None,
                reference_accuracy_pct=None,
                error="crashed (SIGSEGV) during conversion",
            ),
        ],
        "environment": {
            "tensorflow": "2.21.0",
            "litert": "2.3",
            "keras": "3.15",
            "python": "3.11.7",
            "numpy": "2.4",
            "platform": "Linux",
            "cpu": "Test CPU <x86>",
            "threads": 2,
        },
    }
    (run / "report.json").write_text(json.dumps(report), encoding="utf-8")
    samples = [
        ("cat/a.png", 0, 0, 0.91),
        ("cat/b.png", 0, 0, 0.85),
        ("dog/c.png", 1, 1, 0.77),
        ("dog/missing.png", 1, 1, 0.66),
        ("dog/broken.png", 1, 0, 0.55),
        ("../outside.png", 2, 2, 0.99),
    ]
    _write_csv(
        run / "samples.csv",
        [
            {
                "index": i,
                "relpath": rel,
                "label": lab,
                "ref_top1": top,
                "ref_top1_prob": p,
                "ref_margin": 0.1,
            }
            for i, (rel, lab, top, p) in enumerate(samples)
        ],
    )
    # int8 flips samples 1 (prob delta 0.40), 3 (0.70) and 5 (0.20); 0, 2, 4 agree.
    flips = {1: (2, 0.61, 0.40), 3: (0, 0.52, 0.70), 5: (1, 0.48, 0.20)}
    _write_csv(
        run / "int8.samples.csv",
        [
            {
                "index": i,
                "tfl_top1": flips[i][0] if i in flips else samples[i][2],
                "tfl_top1_prob": flips[i][1] if i in flips else 0.9,
                "agree": 0 if i in flips else 1,
                "max_abs_delta": flips[i][2] if i in flips else 0.01,
                "top1_prob_delta": -0.3 if i in flips else -0.01,
                "kl": 0.2,
            }
            for i in range(6)
        ],
    )
    _write_csv(
        run / "float16.samples.csv",
        [
            {
                "index": i,
                "tfl_top1": samples[i][2],
                "tfl_top1_prob": 0.9,
                "agree": 1,
                "max_abs_delta": 0.001,
                "top1_prob_delta": 0.0,
                "kl": 0.0,
            }
            for i in range(6)
        ],
    )
    return run


def _row(parsed: _Parsed, table: str, first_cell: str) -> list[str]:
    [row] = [r for r in parsed.tables[table] if r and r[0] == first_cell]
    return row


def test_verdict_table_shows_report_values(run_dir: Path) -> None:
    parsed = _parse(render_report_html(run_dir))
    report = json.loads((run_dir / "report.json").read_text())
    header = parsed.tables["verdict"][0]
    col = {name: i for i, name in enumerate(header)}
    for v in report["variants"][:2]:
        row = _row(parsed, "verdict", v["name"])
        assert row[col["size (MB)"]] == f"{v['size_bytes'] / 1e6:.3f}"
        assert v["size_reduction_pct"] > 0  # smaller than the original: a minus sign
        assert row[col["size vs original"]].startswith(f"\u2212{v['size_reduction_pct']:.1f} %")
        lo, hi = v["top1_agreement_ci95"]
        assert row[col["top-1 agreement (95 % CI)"]] == (
            f"{v['top1_agreement_pct']:.2f} % ({lo:.2f} \u2013 {hi:.2f})"
        )
        assert row[col["n"]] == str(v["n"])
        assert row[col["top-3 agreement"]] == f"{v['topk_agreement_pct']:.2f} %"
        assert row[col["disagreements"]] == str(v["disagreements"])
        assert row[col["p50 (ms)"]] == f"{v['latency_ms']['p50']:.3f}"
        # 50 runs each: the table quotes the max, named as such, not a p99.
        assert row[col["p99 or max (ms)"]] == f"max {v['latency_ms']['max']:.3f}"
        assert row[col["accuracy original / TFLite"]] == (
            f"{v['reference_accuracy_pct']:.2f} % / {v['tflite_accuracy_pct']:.2f} %"
        )
    assert _row(parsed, "verdict", "float16")[col["verdict"]] == "PASS"
    assert _row(parsed, "verdict", "int8")[col["verdict"]] == "FAIL"
    int8_size = _row(parsed, "verdict", "int8")[col["size vs original"]]
    assert "\u221274.0 % vs float32 TFLite" in int8_size
    crashed = _row(parsed, "verdict", "int16x8")
    assert crashed[col["status"]] == "crashed"
    assert _row(parsed, "verdict", "int16x8 error") == [
        "int16x8 error",
        "crashed (SIGSEGV) during conversion",
    ]
    assert len(parsed.tables["verdict"]) == 1 + 3 + 1  # header, 3 variants, 1 error row
    assert crashed[col["verdict"]] == "—"
    text = " ".join(parsed.text_outside_scripts)
    assert "2 of 3 variant(s) do not meet the 90 % threshold" in text


def test_is_self_contained_with_plotly_inlined_once(run_dir: Path) -> None:
    page = render_report_html(run_dir)
    parsed = _parse(page)
    for tag, attrs in parsed.tags:
        for key, value in attrs.items():
            v = (value or "").strip().lower()
            assert not v.startswith(("http:", "https:", "//")), (tag, key, value)
        if tag == "script":
            assert "src" not in attrs, attrs
        if tag == "link":
            pytest.fail(f"external stylesheet or font link: {attrs}")
    outside = "".join(parsed.text_outside_scripts)
    assert "http://" not in outside
    assert "https://" not in outside
    assert "url(" not in outside  # no CSS fetches (fonts, backgrounds)
    # One big script is the plotly bundle; four small ones draw the four charts (size,
    # agreement, latency, trade-off).
    big = [s for s in parsed.scripts if len(s) > 500_000]
    assert len(big) == 1
    assert page.count("Plotly.newPlot") >= 4
    assert sum(s.count("Plotly.newPlot") for s in parsed.scripts if len(s) < 500_000) == 4


def test_images_are_small_png_data_uris_with_placeholders(run_dir: Path) -> None:
    parsed = _parse(render_report_html(run_dir))
    imgs = [a for tag, a in parsed.tags if tag == "img"]
    # int8 flipped samples 1, 3 and 5: b.png renders; missing.png is missing and
    # ../outside.png escapes the data set root, so both become placeholders.
    assert [a["alt"] for a in imgs] == ["cat/b.png"]
    for a in imgs:
        src = a["src"] or ""
        assert src.startswith("data:image/png;base64,")
        thumb = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert thumb.format == "PNG"
        assert max(thumb.size) == 96
        assert thumb.size == (96, 48)  # aspect kept
        # Semi-transparent blue over white, not over black.
        r, g, b = thumb.convert("RGB").getpixel((10, 10))
        assert r > 100 and g > 100 and b == 255
    text = " ".join(parsed.text_outside_scripts)
    assert text.count("image unavailable") + text.count("no image") == 2
    assert "int8: 3 of 6 samples disagree" in text
    assert "float16: every sample agrees" in text
    # Cards come most-different first (max_abs_delta 0.70, 0.40, 0.20) with both answers.
    cards = [t.strip() for t in parsed.text_outside_scripts if t.strip()]
    order = [t for t in cards if t in ("dog/missing.png", "cat/b.png", "../outside.png")]
    assert order == ["dog/missing.png", "cat/b.png", "../outside.png"]
    assert "original: dog (1) 0.660 TFLite: cat (0) 0.520" in " ".join(text.split())


def test_tiny_image_is_upscaled_with_nearest(run_dir: Path) -> None:
    # Make the 8x8 image a flip so it appears in the gallery.
    path = run_dir / "int8.samples.csv"
    rows = list(csv.DictReader(path.open()))
    rows[0].update(agree="0", tfl_top1="2", max_abs_delta="0.9")
    _write_csv(path, rows)
    parsed = _parse(render_report_html(run_dir))
    [tiny] = [a for tag, a in parsed.tags if tag == "img" and a.get("alt") == "cat/a.png"]
    thumb = Image.open(io.BytesIO(base64.b64decode((tiny["src"] or "").split(",", 1)[1])))
    assert thumb.size == (96, 96)
    assert set(thumb.convert("RGB").getdata()) == {(200, 30, 30)}  # no blur from resampling


def test_user_text_is_escaped(run_dir: Path) -> None:
    page = render_report_html(run_dir)
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; co" in page
    assert "<b>evil</b>" not in page
    parsed = _parse(page)
    text = " ".join(parsed.text_outside_scripts)
    assert f"QuantLens report — {EVIL_NAME}" in text  # shown verbatim as text
    [title] = [t for t in parsed.text_outside_scripts if t.startswith("QuantLens report")][:1]
    assert title == f"QuantLens report — {EVIL_NAME}"
    assert "Test CPU <x86>" in text
    # The run name override (a rename in the store) is escaped as well.
    renamed = render_report_html(run_dir, name="<img src=x onerror=alert(1)>")
    assert "<img src=x" not in renamed
    assert "&lt;img src=x onerror=alert(1)&gt;" in renamed


def test_sections_environment_skipped_and_command(run_dir: Path) -> None:
    parsed = _parse(render_report_html(run_dir))
    assert _row(parsed, "dataset", "samples skipped") == ["samples skipped", "2"]
    assert ["<b>evil</b>.png", "not an image"] in parsed.tables["skipped"]
    assert _row(parsed, "environment", "tensorflow") == ["tensorflow", "2.21.0"]
    assert _row(parsed, "environment", "litert") == ["litert", "2.3"]
    assert _row(parsed, "reference", "size (MB)") == ["size (MB)", "14.200"]
    text = "".join(parsed.text_outside_scripts)
    assert COMMAND in text


def test_write_is_atomic_and_matches_render(run_dir: Path) -> None:
    path = write_report_html(run_dir)
    assert path == run_dir / "report.html"
    written = path.read_text(encoding="utf-8")
    assert written.startswith("<!DOCTYPE html>")
    assert written.rstrip().endswith("</html>")
    assert written == render_report_html(run_dir)
    assert not list(run_dir.glob(".report.html.*"))  # no temporary file left behind


def test_run_without_samples_or_charts_still_renders(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    report = {
        "run": {"id": "r", "name": "empty", "status": "failed"},
        "dataset": {"path": str(tmp_path / "nowhere"), "num_skipped": 0},
        "variants": [_variant("int8", status="failed", error="no calibration images")],
    }
    (run / "report.json").write_text(json.dumps(report))
    page = render_report_html(run)
    parsed = _parse(page)
    assert _row(parsed, "verdict", "int8 error")[-1] == "no calibration images"
    assert "No measurements to chart yet." in page
    assert "The command was not recorded." in page
    assert not parsed.scripts


def test_variant_warnings_get_a_row_of_their_own(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    warning = "the converted model outputs NaN/Inf on 3 of 40 images; they count as disagreements"
    report = {
        "run": {"id": "r", "name": "nan", "status": "done"},
        "dataset": {"path": str(tmp_path / "nowhere"), "num_skipped": 0},
        "variants": [_variant("float16", warnings=[warning]), _variant("int8")],
    }
    (run / "report.json").write_text(json.dumps(report))
    parsed = _parse(render_report_html(run))
    assert _row(parsed, "verdict", "float16 warning")[-1] == warning
    assert not [r for r in parsed.tables["verdict"] if r[0] == "int8 warning"]


def test_missing_report_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(QuantLensError, match=r"^run .* has no report yet; wait for it to finish"):
        render_report_html(tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(
        QuantLensError, match=r"^report of run .* is unreadable .*; re-run the job$"
    ):
        render_report_html(tmp_path)


def _decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def _palette_with_transparency(path: Path) -> None:
    im = Image.new("P", (20, 20), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # 0: black (transparent), 1: red
    im.save(path, transparency=0)


@pytest.mark.parametrize(
    ("name", "make", "size", "pixel"),
    [
        # 16-bit grey 30000 keeps its content (30000 / 256 = 117), not clipped to white.
        (
            "g16.png",
            lambda p: Image.fromarray(np.full((20, 30), 30000, np.uint16)).save(p),
            (96, 64),
            (117, 117, 117),
        ),
        (
            "cmyk.jpg",
            lambda p: Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(p),
            (96, 96),
            (255, 0, 0),
        ),
        ("pal.png", _palette_with_transparency, (96, 96), (255, 0, 0)),
        # Fully transparent grey composites over white.
        ("la.png", lambda p: Image.new("LA", (20, 20), (50, 0)).save(p), (96, 96), (255, 255, 255)),
        ("big.png", lambda p: Image.new("RGB", (400, 100), (1, 2, 3)).save(p), (96, 24), (1, 2, 3)),
    ],
)
def test_thumbnail_modes(tmp_path: Path, name: str, make: Any, size: tuple, pixel: tuple) -> None:
    path = tmp_path / name
    make(path)
    thumb = _decode(thumbnail_data_uri(path))
    assert thumb.size == size
    r, g, b = thumb.convert("RGB").getpixel((5, 5))
    assert all(abs(x - y) <= 3 for x, y in zip((r, g, b), pixel, strict=True)), (r, g, b)


def test_thumbnail_of_a_non_image_raises_for_the_caller(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_text("hello")
    with pytest.raises(QuantLensError, match="not an image file"):
        thumbnail_data_uri(path)


def test_the_report_says_when_in_local_time_with_its_offset(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.setenv("TZ", "Europe/Paris")  # UTC+1 in January
    time.tzset()
    try:
        html = render_report_html(run_dir)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert "created 2025-01-02 04:04:05 (UTC+01:00)" in html  # 03:04:05 UTC
    assert "2025-01-02T03:04:05+00:00" not in html.split("<pre")[0]


def test_a_long_variant_name_wraps_in_the_verdict_table_and_the_table_scrolls(
    run_dir: Path,
) -> None:
    """Measured in Chromium at 1,400 px on a name keeping eight layers in float: the table was
    3,615 px wide and the page scrolled sideways; with these rules the name wraps in its cell,
    the table scrolls inside its own box and the page stays 1,400 px wide."""
    html = render_report_html(run_dir)
    assert '<div class="wide"><table id="verdict">' in html
    assert "#verdict td:first-child { overflow-wrap: anywhere;" in html
    assert "overflow-wrap: break-word;" in html.split("</style>")[0]  # headings, banners
    assert ".chart { margin: 0.5em 0 1.5em 0; overflow-x: auto; }" in html
