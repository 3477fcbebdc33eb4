"""Result pages against a hand-built run: what a user reads matches report.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.app.conftest import OpenPage
from tests.app.expected import megabytes, pct2, shown_as_text
from tests.app.fixtures import build_run, read_report
from ui import keys


def _tiles(at) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for b in at.button if str(b.key).startswith("disagreements.tile."))


def test_overview_verdicts_and_metrics_match_the_report(crafted: Path, open_page: OpenPage) -> None:
    rep = read_report(crafted)
    at = open_page("overview")
    md = [m.value for m in at.markdown]
    for v in rep["variants"]:
        if v["status"] != "done":
            continue
        badge = "PASS" if v["passed"] else "FAIL"
        idx = md.index(f"#### {v['name']}")
        assert badge in md[idx + 1]
    agreements = [m.value for m in at.metric if m.label == "Top-1 agreement"]
    done = [v for v in rep["variants"] if v["status"] == "done"]
    assert agreements == [pct2(v["top1_agreement_pct"]) for v in done]
    # float16 agrees everywhere (40/40), int8 flips 6 of 40: 34/40 = 85 %.
    assert agreements == ["100.00 %", "85.00 %"]
    sizes = [m.value for m in at.metric if m.label == "Size"]
    assert sizes == [megabytes(v["size_bytes"]) for v in done] == ["1.20 MB", "0.650 MB"]
    # the crashed variant says why, in one line, as text
    crashed = next(v for v in rep["variants"] if v["status"] == "crashed")
    assert any(shown_as_text(c.value, crashed["error"]) for c in at.caption)
    passed = sum(1 for v in rep["variants"] if v.get("passed") is True)
    assert md[0].startswith(f"**{passed} of {len(rep['variants'])}**")
    table = at.dataframe[0].value
    assert list(table["model"]) == ["original", "float16", "int8", "int16x8"]
    assert table.loc[table["model"] == "int8", "disagreements"].item() == 6
    assert not at.error  # accuracy is far from chance here


def test_overview_warns_loudly_when_accuracy_is_near_chance(
    home: Path, open_page: OpenPage
) -> None:
    build_run(home, near_chance=True)
    at = open_page("overview")
    assert any("not clearly above always answering the majority class" in e.value for e in at.error)


def _card_badges(at) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """variant name -> the markdown right under its card title (the badge)."""
    md = [m.value for m in at.markdown]
    return {m[5:]: md[i + 1] for i, m in enumerate(md) if m.startswith("#### ")}


@pytest.mark.parametrize("legacy", [False, True], ids=["engine-reason", "report-before-the-rule"])
def test_near_chance_run_shows_no_pass_anywhere(
    home: Path, open_page: OpenPage, legacy: bool
) -> None:
    d = build_run(home, near_chance=True, legacy_report=legacy)
    rep = read_report(d)
    assert rep["reference"]["accuracy_pct"] < 15.0  # 10 classes: chance is 10 %
    float16 = next(v for v in rep["variants"] if v["name"] == "float16")
    assert float16["top1_agreement_pct"] == 100.0  # agreement alone would pass
    at = open_page("overview")
    badges = _card_badges(at)
    for name in ("float16", "int8"):
        assert "NO VERDICT" in badges[name] and "PASS" not in badges[name].replace("NO VERDICT", "")
    acc = rep["reference"]["accuracy_pct"]
    baseline = rep["reference"]["accuracy_baseline"]
    reason = (
        f"the original is {acc:.1f} % accurate, not clearly above always answering the "
        f"majority class {baseline['majority_class']} at "
        f"{100 * baseline['majority_count'] / baseline['n']:.1f} % of n=40 (one-sided binomial "
        f"p = {baseline['p_value']:.2g}): check the preprocessing preset or the labels"
    )
    assert sum(shown_as_text(c.value, reason) for c in at.caption) == 2
    table = at.dataframe[0].value
    assert list(table["verdict"]) == ["", "NO VERDICT", "NO VERDICT", ""]
    assert "**No verdict** for 2 of 3 variant(s)" in at.markdown[0].value
    assert not any("PASS" in m.value for m in at.markdown)


def test_a_larger_model_is_shown_as_a_red_increase(home: Path, open_page: OpenPage) -> None:
    from streamlit.proto.Metric_pb2 import Metric

    # The original is 2.4 MB: float16 at 2.52 MB is 5 % larger, int8 at 0.6 MB 75 % smaller.
    build_run(home, sizes={"float16": 2_520_000, "int8": 600_000})
    at = open_page("overview")
    cards = {m.value: m for m in at.metric if m.label == "Size"}
    larger, smaller = cards["2.52 MB"], cards["0.600 MB"]
    assert larger.proto.delta == "+5.0 % vs original"
    assert larger.proto.color == Metric.MetricColor.RED
    assert larger.proto.direction == Metric.MetricDirection.UP
    assert smaller.proto.delta == "\u221275.0 % vs original"  # a true minus, as the tables
    assert smaller.proto.color == Metric.MetricColor.GREEN
    assert smaller.proto.direction == Metric.MetricDirection.DOWN
    table = at.dataframe[0].value.set_index("model")
    changes = table["size change vs original (%)"]
    assert changes["float16"] == pytest.approx(5.0) and changes["int8"] == pytest.approx(-75.0)


def test_latency_card_colours_follow_the_time_change(home: Path, open_page: OpenPage) -> None:
    """The card's change is against float32 TFLite on the same runtime (the speed-up's
    baseline), not against the TensorFlow original."""
    from streamlit.proto.Metric_pb2 import Metric

    d = build_run(home)
    rep = read_report(d)
    at = open_page("overview")
    cards = [m for m in at.metric if m.label == "p50 latency"]
    done = [v for v in rep["variants"] if v["status"] == "done"]
    assert len(cards) == len(done)
    for card, v in zip(cards, done, strict=True):
        speed = v["speedup"]["value"]
        change = 100.0 * (1.0 / speed - 1.0)
        assert card.proto.delta == f"{change:+.1f} % vs float32 TFLite".replace("-", "\u2212")
        faster = change < 0
        assert card.proto.color == (Metric.MetricColor.GREEN if faster else Metric.MetricColor.RED)


def test_the_speed_up_names_float32_tflite_as_its_baseline_and_shows_its_spread(
    home: Path, open_page: OpenPage
) -> None:
    """Each card states the speed-up against float32 TFLite with the range over timing blocks,
    then the TensorFlow original labelled as such; a variant whose blocks disagree is flagged."""
    d = build_run(home, busy_blocks="int8")
    rep = read_report(d)
    at = open_page("overview")
    captions = [c.value.replace("\\", "") for c in at.caption]
    for v in rep["variants"]:
        if v["status"] != "done":
            continue
        sp, original = v["speedup"], v["speedup"]["vs_original"]
        # Recomputed from the block medians the report keeps: baseline over variant, per block.
        ratios = np.array(sp["baseline_block_p50_ms"]) / np.array(sp["block_p50_ms"])
        assert sp["value"] == pytest.approx(float(np.median(ratios)))
        x = sp["value"]
        times = f"{x:.1f}× faster" if x >= 1 else f"{1 / x:.1f}× slower"
        headline = (
            f"vs float32 TFLite (same LiteRT runtime): {times} "
            f"(blocks {ratios.min():.2f}–{ratios.max():.2f}×, 5 blocks)"
        )
        assert headline in captions, (headline, captions)
        y = original["value"]
        second = (
            f"vs the TensorFlow original: {y:.1f}× faster" if y >= 1 else f"{1 / y:.1f}× slower"
        )
        assert any(c.startswith(second) for c in captions), (second, captions)
    int8 = next(v for v in rep["variants"] if v["name"] == "int8")
    ratios = np.array(int8["speedup"]["block_ratios"])
    flag = f"unstable: blocks disagree by {ratios.max() / ratios.min():.1f}×"
    warnings = [w.value.replace("\\", "") for w in at.warning]
    assert any(w.startswith(flag) for w in warnings), warnings
    float16 = next(v for v in rep["variants"] if v["name"] == "float16")
    assert float16["speedup"]["unstable"] is None  # its card has no such warning
    assert sum("blocks disagree" in w for w in warnings) == 1


def test_run_name_is_shown_as_text_not_html(crafted: Path, open_page: OpenPage) -> None:
    at = open_page("overview")
    header = at.main.caption[0].value
    assert "\\<b\\>fixture\\</b\\>" in header  # markdown-escaped, so the tags show literally


def test_empty_workspace_explains_what_to_do(home: Path, open_page: OpenPage) -> None:
    at = open_page("overview")
    assert "No run yet" in at.info[0].value


def test_gallery_shows_one_tile_per_disagreement(crafted: Path, open_page: OpenPage) -> None:
    rep = read_report(crafted)
    at = open_page("disagreements", state={keys.DISAGREE_VARIANT: "int8"})
    n_dis = next(v["disagreements"] for v in rep["variants"] if v["name"] == "int8")
    assert _tiles(at) == n_dis == 6
    assert len(at.get("image")) == n_dis
    assert f"**{n_dis}** disagreements of **40** samples" in at.markdown[0].value


def test_gallery_empty_state_when_everything_agrees(crafted: Path, open_page: OpenPage) -> None:
    at = open_page("disagreements", state={keys.DISAGREE_VARIANT: "float16"})
    assert at.success[0].value == "No disagreements — all 40 samples agree."
    assert _tiles(at) == 0


def test_gallery_pages_by_24(home: Path, open_page: OpenPage) -> None:
    build_run(home, flips={"int8": 30})
    at = open_page("disagreements", state={keys.DISAGREE_VARIANT: "int8"})
    rep = read_report(home / "runs" / "run-fixture")
    n_dis = rep["variants"][0]["disagreements"]
    assert n_dis > 24
    assert _tiles(at) == 24
    at.number_input(key=keys.DISAGREE_PAGE).set_value(2).run()
    assert _tiles(at) == n_dis - 24


def test_flip_filter_from_the_matrix_narrows_the_gallery(
    crafted: Path, open_page: OpenPage
) -> None:
    rep = read_report(crafted)
    m = next(v["flip_matrix"] for v in rep["variants"] if v["name"] == "int8")
    r, c = max(((i, j) for i in range(10) for j in range(10)), key=lambda ij: m[ij[0]][ij[1]])
    at = open_page(
        "disagreements", state={keys.DISAGREE_VARIANT: "int8", keys.DISAGREE_FLIP: ("int8", r, c)}
    )
    assert _tiles(at) == m[r][c] > 0
    at.button(key=keys.DISAGREE_CLEAR_FLIP).click().run()
    assert _tiles(at) == 6


def test_at_risk_shows_agreeing_samples_with_small_margin(
    crafted: Path, open_page: OpenPage
) -> None:
    import pandas as pd

    at = open_page("disagreements", state={keys.DISAGREE_VARIANT: "int8"})
    at.toggle(key=keys.DISAGREE_AT_RISK).set_value(True).run()
    at.slider(key=keys.DISAGREE_MARGIN).set_value(0.9).run()
    s = pd.read_csv(crafted / "samples.csv").merge(
        pd.read_csv(crafted / "int8.samples.csv"), on="index"
    )
    expected = int((s["agree"] & (s["ref_margin"] < 0.9)).sum())
    assert expected > 0
    assert _tiles(at) == min(expected, 24)


def test_tile_opens_a_dialog_with_both_top5_lists(crafted: Path, open_page: OpenPage) -> None:
    at = open_page("disagreements", state={keys.DISAGREE_VARIANT: "int8"})
    first = next(b for b in at.button if str(b.key).startswith("disagreements.tile."))
    first.click().run()
    assert not at.exception
    row = str(first.key).rsplit(".", 1)[1]
    assert any(
        str(getattr(e, "key", "")) == f"dialog.topk.int8.{row}" for e in at.get("plotly_chart")
    )


def test_size_table_lists_original_and_converted_variants(
    crafted: Path, open_page: OpenPage
) -> None:
    rep = read_report(crafted)
    at = open_page("size")
    rows = at.dataframe[0].value
    assert list(rows["model"]) == ["original", "float16", "int8"]
    assert list(rows["bytes"]) == [rep["reference"]["size_bytes"]] + [
        v["size_bytes"] for v in rep["variants"] if v["size_bytes"]
    ]


def test_size_chart_labels_carry_the_true_sign(home: Path, open_page: OpenPage) -> None:
    import json

    build_run(home, sizes={"float16": 2_520_000, "int8": 600_000})
    at = open_page("size")
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    labels = fig["data"][0]["text"]
    # original 2.4 MB; float16 5 % larger; int8 75 % smaller
    assert labels == ["2.40 MB", "2.52 MB<br>+5.0 %", "0.60 MB<br>\u221275.0 %"]
    table = at.dataframe[0].value
    assert list(table["change vs original"]) == ["—", "+5.0 %", "\u221275.0 %"]


def test_latency_table_matches_report(crafted: Path, open_page: OpenPage) -> None:
    rep = read_report(crafted)
    at = open_page("latency")
    rows = at.dataframe[0].value
    assert list(rows["model"]) == ["original", "float16", "int8"]
    assert rows["p50 (ms)"].tolist() == pytest.approx(
        [rep["reference"]["latency_ms"]["p50"]]
        + [v["latency_ms"]["p50"] for v in rep["variants"] if v["status"] == "done"]
    )
    assert "threads 2" in at.main.caption[-1].value and "LiteRT 2.3.0" in at.main.caption[-1].value


def test_agreement_page_shows_accuracy_and_flip_matrix(crafted: Path, open_page: OpenPage) -> None:
    rep = read_report(crafted)
    at = open_page("agreement", state={keys.AGREEMENT_VARIANT: "int8"})
    rows = at.dataframe[0].value
    assert list(rows["variant"]) == ["float16", "int8"]
    int8 = next(v for v in rep["variants"] if v["name"] == "int8")
    assert rows["accuracy TFLite"].tolist()[1] == pct2(int8["tflite_accuracy_pct"])
    assert rows["n"].tolist()[1] == int8["n"]
    keys_drawn = [str(getattr(e, "key", "")) for e in at.get("plotly_chart")]
    assert keys.AGREEMENT_FLIP_CHART in keys_drawn
    at.selectbox(key=keys.AGREEMENT_VARIANT).set_value("float16").run()
    assert at.success[0].value == "No disagreements — all 40 samples agree."


def test_deltas_page_summarises_each_variant(crafted: Path, open_page: OpenPage) -> None:
    import pandas as pd

    at = open_page("deltas")
    stats = at.dataframe[0].value
    assert list(stats["variant"]) == ["float16", "int8"]
    assert list(stats["n"]) == [40, 40]
    mx = pd.read_csv(crafted / "int8.samples.csv")["max_abs_delta"]
    assert stats["max |value|"].tolist()[1] == pytest.approx(float(mx.abs().max()))


def test_a_cli_run_kept_outside_the_workspace_opens_through_the_store(
    crafted: Path, home: Path, open_page: OpenPage, tmp_path: Path
) -> None:
    import json
    import shutil

    from core.history.store import open_store
    from ui import keys

    elsewhere = tmp_path / "ci-artifacts" / "run"
    shutil.move(str(home / "runs" / "run-fixture"), elsewhere)
    report = json.loads((elsewhere / "report.json").read_text())
    store = open_store(home)
    try:
        store.create_run("cli-run-1", name="from CI", run_dir=elsewhere, job={})
        store.sync_report("cli-run-1", report)
    finally:
        store.close()
    at = open_page("overview", state={keys.SELECTED_RUN: "cli-run-1"})
    agreement = next(v for v in report["variants"] if v["name"] == "int8")["top1_agreement_pct"]
    shown = [m.value for m in at.metric]
    assert any(f"{agreement:.2f}" in str(value) for value in shown), shown


def test_agreement_per_class_table_worst_first_and_opens_the_gallery(
    crafted: Path, open_page: OpenPage
) -> None:
    # Expected counts straight from the files the run wrote, without core.reporting.results.
    ref = pd.read_csv(crafted / "samples.csv")
    var = pd.read_csv(crafted / "int8.samples.csv")
    joined = ref.merge(var, on="index")
    counts: dict[int, list[int]] = {}
    for cls, agree in zip(joined["ref_top1"], joined["agree"], strict=True):
        counts.setdefault(int(cls), [0, 0])
        counts[int(cls)][0] += 1
        counts[int(cls)][1] += int(str(agree).lower() in ("true", "1"))
    at = open_page("agreement", state={keys.AGREEMENT_VARIANT: "int8"})
    table = next(d.value for d in at.dataframe if "agreement (%)" in d.value.columns)
    assert sum(table["n"]) == 40 and sum(table["agree"]) == 34
    shown = {
        int(str(c).split(":")[0]): (n, a)
        for c, n, a in zip(table["class"], table["n"], table["agree"], strict=True)
    }
    assert shown == {c: (n, a) for c, (n, a) in counts.items()}
    pct = table["agreement (%)"].tolist()
    assert pct == sorted(pct) and pct[0] < 100.0
    worst = int(str(table["class"].iloc[0]).split(":")[0])
    assert at.selectbox(key=keys.AGREEMENT_CLASS).value == worst
    at.button(key=keys.AGREEMENT_OPEN_CLASS).click().run()
    assert at.session_state[keys.DISAGREE_CLASS] == worst
    assert at.selectbox(key=keys.DISAGREE_CLASS).value == worst
    worst_disagree = counts[worst][0] - counts[worst][1]
    assert _tiles(at) == worst_disagree


def test_latency_quotes_p99_from_100_runs_and_max_below(crafted: Path, open_page: OpenPage) -> None:
    import json

    from core.inputs import rundir

    rep = read_report(crafted)
    # float16 is re-labelled as timed 120 times; the others keep the fixture's 60 runs.
    float16 = next(v for v in rep["variants"] if v["name"] == "float16")
    float16["latency_ms"]["n"] = 120
    float16["latency_warning"] = "unstable timing (two clusters), measured twice"
    (crafted / rundir.REPORT).write_text(json.dumps(rep), encoding="utf-8")
    at = open_page("latency")
    rows = at.dataframe[0].value.set_index("model")
    int8_samples = np.load(rundir.latency_path(crafted, rundir.FileId("int8")))
    assert rows.loc["float16", "p99 (ms)"] == pytest.approx(float16["latency_ms"]["p99"])
    assert pd.isna(rows.loc["int8", "p99 (ms)"]) and pd.isna(rows.loc["original", "p99 (ms)"])
    assert rows.loc["int8", "max (ms)"] == pytest.approx(float(int8_samples.max()))
    caption = at.main.caption[-1].value
    assert "float32 TFLite on the same runtime" in caption and "interleaved" in caption
    assert "TensorFlow original's serving call comes second" in caption
    # The headers name the baselines, so a cell is the number with its spread, whole.
    speedup = next(v for v in rep["variants"] if v["name"] == "int8")["speedup"]
    for column, spread in (
        ("speed-up vs float32 TFLite", speedup),
        ("second: vs the TensorFlow original", speedup["vs_original"]),
    ):
        cell = rows.loc["int8", column]
        word = "faster" if spread["value"] >= 1 else "slower"
        factor = spread["value"] if spread["value"] >= 1 else 1 / spread["value"]
        assert cell == (
            f"{factor:.1f}× {word} (blocks {spread['low']:.2f}–{spread['high']:.2f}×, "
            f"{spread['blocks']} blocks)"
        ), column
    assert any("float16" in w.value and "unstable timing" in w.value for w in at.warning)


def test_card_says_what_the_speed_up_compares_and_warns_on_unstable_timing(
    crafted: Path, open_page: OpenPage
) -> None:
    import json

    from core.inputs import rundir

    rep = read_report(crafted)
    int8 = next(v for v in rep["variants"] if v["name"] == "int8")
    int8["latency_warning"] = "unstable timing (wide spread), measured twice"
    (crafted / rundir.REPORT).write_text(json.dumps(rep), encoding="utf-8")
    at = open_page("overview")
    assert any("vs float32 TFLite \\(same LiteRT runtime\\)" in c.value for c in at.caption)
    assert any("vs the TensorFlow original" in c.value for c in at.caption)
    assert [w.value for w in at.warning if "unstable timing" in w.value]
