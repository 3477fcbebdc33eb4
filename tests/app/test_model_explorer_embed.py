"""The Layers page embeds Model Explorer on the variant's own .tflite with the error overlay the
page's table shows; on another interface it is refused and the download stays."""

from __future__ import annotations

import csv
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote, urlparse

import pytest
from streamlit import config as st_config

from core.jobs import model_explorer_server as explorer
from tests.app.conftest import OpenPage
from tests.app.history_fixtures import copy_workspace

pytestmark = [
    pytest.mark.slow,  # the real run the page reads is built with TensorFlow
    pytest.mark.skipif(not explorer.installed(), reason="ai-edge-model-explorer missing"),
]


@pytest.fixture
def own_derived(derived_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the session's real derived run (the page writes the overlay file)."""
    home = copy_workspace(derived_home, tmp_path / "ws")
    monkeypatch.setenv("QUANTLENS_HOME", str(home))
    return home


@pytest.fixture
def served_on() -> Iterator[None]:
    before = st_config.get_option("server.address")
    yield
    st_config.set_option("server.address", before)
    explorer.stop()


def _iframe_src(at: object) -> str:
    frames = at.get("iframe")  # type: ignore[attr-defined]
    assert len(frames) == 1, "no embedded graph"
    return str(frames[0].proto.src)


def test_the_graph_is_the_variant_with_the_tables_error(
    own_derived: Path, open_page: OpenPage, served_on: None
) -> None:
    st_config.set_option("server.address", "127.0.0.1")
    at = open_page("layers", state={"layers.variant": "int8"})
    url = urlparse(_iframe_src(at))
    assert url.hostname == "127.0.0.1"
    data = json.loads(parse_qs(url.query)["data"][0])
    (run_dir,) = (own_derived / "runs").iterdir()
    assert data["models"] == [{"url": str((run_dir / "int8.tflite").resolve())}]
    # The overlay as Model Explorer itself serves it to the browser ...
    (overlay,) = data["nodeData"]
    read = f"http://127.0.0.1:{url.port}/api/v1/read_text_file?path={quote(overlay)}"
    with urllib.request.urlopen(read, timeout=10) as r:
        served = json.loads(json.loads(r.read())["content"])
    # ... colours each op by the page's table's error column (flipped images here), joined to
    # the op through the per-layer CSV's tensor names.
    with (run_dir / "int8.layers.csv").open(encoding="utf-8") as f:
        layer_of = {row["tensor_name"]: row["layer"] for row in csv.DictReader(f)}
    table = at.dataframe[0].value
    column = next(c for c in table.columns if c.endswith("(flipped)"))
    shown = dict(zip(table["layer"], table[column], strict=True))
    assert served["results"], "an empty overlay"
    for tensor, value in served["results"].items():
        assert value["value"] == pytest.approx(shown[layer_of[tensor]])
    assert at.get("download_button")  # the download stays beside the graph


def test_another_interface_gets_no_graph_and_one_line_why(
    own_derived: Path, open_page: OpenPage, served_on: None
) -> None:
    st_config.set_option("server.address", "0.0.0.0")
    at = open_page("layers", state={"layers.variant": "int8"})
    assert not at.get("iframe")
    why = [i.value for i in at.info if "graph is not shown" in i.value]
    assert len(why) == 1 and explorer.ANY_INTERFACE_ENV in why[0]
    assert at.get("download_button")
