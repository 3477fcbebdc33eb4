"""Every page of the dashboard on a real run that holds derived variants: one kept in float by
`--modes`, one added by `--auto-fix`, one added by a re-score. Such variants have no table row
for the layers they keep in float, names with `:` and `+`, and a parent: each page opens on
them, and each variant picker offers and shows them, with no exception."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.inputs import rundir
from tests.app.conftest import ROOT, OpenPage
from tests.app.derived_fixtures import AUTO_FIX, KEEP_FLOAT, RESCORED, report
from ui import keys

pytestmark = pytest.mark.slow

DERIVED = (KEEP_FLOAT, AUTO_FIX, RESCORED)


def app_pages() -> list[str]:
    """The pages app.py's navigation lists (views/<name>.py), in its order."""
    text = (ROOT / "app.py").read_text(encoding="utf-8")
    return re.findall(r'st\.Page\("views/(\w+)\.py"', text)


def test_the_page_list_is_every_view() -> None:
    """A page added to the navigation is added to the parametrised test below by itself."""
    assert sorted(app_pages()) == sorted(p.stem for p in (ROOT / "views").glob("*.py"))


def _ok(at: AppTest, where: str) -> None:
    assert not at.exception, (where, [e.value for e in at.exception])


def _shown_text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [" ".join(map(str, d.value.to_numpy().ravel())) for d in at.dataframe]
    return " ".join(parts)


@pytest.mark.parametrize("page", app_pages())
def test_every_page_opens_on_a_run_with_derived_variants(
    derived_home: Path, open_page: OpenPage, page: str
) -> None:
    rep = report(derived_home)
    at = open_page(page)  # asserts no exception
    if page == "setup":
        return  # Setup starts a new run: nothing of this run is shown
    if page == "history":
        assert "derived" in list(at.dataframe[0].value["name"])
        return
    if page == "compare":
        run_id = rep["run"]["id"]
        at.session_state[keys.COMPARE_ITEMS] = [f"{run_id}/{n}" for n in ("int8", *DERIVED)]
        at.run()
        _ok(at, page)
        assert all(n in _shown_text(at) for n in DERIVED)
        return
    pickers = {
        "agreement": keys.AGREEMENT_VARIANT,
        "disagreements": keys.DISAGREE_VARIANT,
        "layers": keys.LAYERS_VARIANT,
    }
    if page in pickers:
        # Options read "<name>" or "<name> — <n> disagree".
        offered = [o.split(" — ")[0] for o in at.selectbox(key=pickers[page]).options]
        assert set(DERIVED) <= set(offered), offered
        for name in offered:  # every variant, the derived ones included, renders
            at.selectbox(key=pickers[page]).set_value(name).run()
            _ok(at, f"{page}: {name}")
        return
    if page == "deltas":
        assert set(DERIVED) <= set(at.multiselect(key=keys.DELTAS_VARIANTS).value)
    text = _shown_text(at)
    assert all(n in text for n in DERIVED), (page, text[:500])


def test_layers_shows_each_derived_variant_with_its_float_layers_selected(
    derived_home: Path, open_page: OpenPage
) -> None:
    """The "Keep in float" picker of a derived variant holds its layers in float, although its
    per-layer table (only quantized ops) has no row for them."""
    by_name = {v["name"]: v for v in report(derived_home)["variants"]}
    at = open_page("layers")
    for name in DERIVED:
        at.selectbox(key=keys.LAYERS_VARIANT).set_value(name).run()
        _ok(at, name)
        kept = by_name[name]["float_layers"]
        keep = at.multiselect(key=f"{keys.LAYERS_KEEP_FLOAT}.{name}")
        assert keep.value == kept
        assert set(kept) <= set(keep.options)
        assert not set(kept) & set(at.dataframe[0].value["layer"])  # the table has no row


def test_layers_after_its_own_rescore_button(
    derived_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-score from the page (the real supervisor and worker), then open the new variant."""
    import time

    from tests.app.history_fixtures import copy_workspace

    home = copy_workspace(derived_home, tmp_path / "ws")
    monkeypatch.setenv("QUANTLENS_HOME", str(home))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.switch_page("views/layers.py")
    at.run()
    at.selectbox(key=keys.LAYERS_VARIANT).set_value("int8").run()
    at.multiselect(key=f"{keys.LAYERS_KEEP_FLOAT}.int8").set_value(["pool"])
    at.button(key="layers.rescore").click()
    at.run()
    _ok(at, "re-score")
    (run_dir,) = (home / "runs").iterdir()
    for _ in range(600):  # the job is a real conversion and evaluation of a tiny model
        if rundir.read_json(run_dir / rundir.STATUS).get("status") not in ("queued", "running"):
            break
        time.sleep(0.5)
    assert rundir.read_json(run_dir / rundir.STATUS)["status"] == "done"
    at.run()
    _ok(at, "after the re-score")
    at.selectbox(key=keys.LAYERS_VARIANT).set_value("int8:keep=pool").run()
    _ok(at, "int8:keep=pool")
    assert at.multiselect(key=f"{keys.LAYERS_KEEP_FLOAT}.int8:keep=pool").value == ["pool"]
