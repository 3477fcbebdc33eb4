"""The Layers page's "rank by statistics" is the diagnosis's own ranking: on a real run, the
page's table order is the order of report.json's suspects, and each layer the sensitivity scan
measured carries in report.json (`stat_rank`) the rank the page shows for it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.app.conftest import OpenPage
from tests.core.conftest import build_tiny_model
from tests.core.test_cli import run_cli
from tests.core.test_selective import _write_images
from ui import keys

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scanned_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real int8 run with a sensitivity scan, on the tiny model with its logits scaled up so
    that the model output's softmax ranks among the layers (above conv2d): the output row is in
    the page's table, and no layer of its own."""
    home = tmp_path_factory.mktemp("scanned")
    model = build_tiny_model()
    scores = model.get_layer("scores")
    weights, bias = scores.get_weights()
    scores.set_weights([weights * 40, bias])
    model.export(str(home / "model"), verbose=False)
    data = _write_images(home / "data")
    # 24 images cannot put the lower Wilson bound at 99 %: int8 is below the bar, so it is
    # scanned whatever its agreement.
    done = run_cli(
        "run",
        str(home / "model"),
        "--data",
        str(data),
        "--modes",
        "int8",
        "--auto-fix=1",
        "--verdict",
        "lower-bound",
        "--min-agreement",
        "99",
        "--preprocess",
        "unit",
        "--latency-runs",
        "3",
        home=home,
    )
    assert done.returncode in (0, 1), done.stderr[-2000:]
    return home


def test_page_rank_is_report_rank(
    scanned_home: Path, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUANTLENS_HOME", str(scanned_home))
    (path,) = (scanned_home / "runs").glob("*/report.json")
    int8 = next(v for v in json.loads(path.read_text())["variants"] if v["name"] == "int8")
    at = open_page("layers")
    assert at.selectbox(key=keys.LAYERS_VARIANT).value == "int8"
    table = at.dataframe[0].value
    ranks = list(table["rank by statistics"])
    assert ranks == list(range(1, len(ranks) + 1))  # every op ranked, in the table's order
    # The suspects are the table's first rows, in its order.
    suspects = [s["order"] for s in int8["diagnosis"]["suspects"]]
    assert list(table["order"])[: len(suspects)] == suspects
    # A layer's stat_rank is the page's rank of its best op, the model output counted.
    page_rank: dict[str, int] = {}
    for layer, rank in zip(table["layer"], ranks, strict=True):
        page_rank.setdefault(layer, int(rank))
    scan = int8["auto_fix"]["sensitivity"]
    assert scan, int8["auto_fix"]
    assert {m["layer"]: m["stat_rank"] for m in scan} == {
        m["layer"]: page_rank[m["layer"]] for m in scan
    }
    # The case where two rankings parted: the output's softmax ranks above a layer it follows.
    assert page_rank["(model output)"] < page_rank["conv2d"]
