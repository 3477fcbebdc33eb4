"""Which variants get a per-layer diagnosis, and how a layer table proposes scan candidates
(pure rules, no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.engine.diagnose import OUTPUT_LAYER, can_diagnose, statistic_ranks
from core.types import VariantSpec


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("int8", True),
        ("int8-uint8:keep=dense", True),
        ("int8_q", True),
        ("float16_q", True),  # the quantizer's comparison reads any recipe
        ("float32", False),
        ("float16", False),  # the debugger re-quantizes with int8 activations only
        ("dynamic", False),
        ("int16x8", False),
        ("int8+tf", False),  # TF ops this LiteRT build cannot run for the debugger
    ],
)
def test_which_variants_are_diagnosed(variant: str, expected: bool) -> None:
    assert can_diagnose(VariantSpec.parse(variant)) is expected


HEADER = (
    "order,layer,layers,op,shape,scale,zero_point,rmse_per_scale,mean_error,max_abs_error,cosine,"
    "flipped_rmse_per_scale,flipped_mean_error,flipped_max_abs_error,flipped_cosine,tensor_name\n"
)


def test_candidates_follow_the_flipped_error_once_per_layer_without_the_output(
    tmp_path: Path,
) -> None:
    table = tmp_path / "int8.layers.csv"
    table.write_text(
        HEADER
        + "0,conv2d,conv2d,CONV_2D,1x4,0.1,0,0.9,,,,0.2,,,,a\n"
        + "1,dense,dense,FULLY_CONNECTED,1x4,0.1,0,0.1,,,,0.8,,,,b\n"
        + "2,dense,dense,ADD,1x4,0.1,0,0.1,,,,0.7,,,,c\n"
        + f"3,{OUTPUT_LAYER},,SOFTMAX,1x4,0.1,0,0.1,,,,5.0,,,,d\n"
        + "4,kept,kept,CONV_2D,1x4,,,,,,,,,,,e\n",
        encoding="utf-8",
    )
    # dense's error jumps on the flipped images: it comes first, conv2d after, each once; the
    # output row is no layer and a float (kept) op has nothing to rank.
    # Each layer carries the rank of its best op as the Layers page shows it: the output row
    # ranks first (it is in the table) and takes no layer's place.
    assert statistic_ranks(table) == {"dense": 2, "conv2d": 4}


def test_the_engine_reaches_into_no_private_tensorflow_attribute() -> None:
    """The QuantizationDebugger's and the interpreter's underscored attributes change between TF
    releases without notice: the diagnosis uses their public calls and the flatbuffer."""
    import re

    root = Path(__file__).resolve().parents[2] / "core"
    private = re.compile(
        r"\.(_data_gen|_quant_interpreter|_float_interpreter|_get_tensor_details|"
        r"_get_ops_details|_get_op_details|_numeric_verify\w*|_defining_op)\b"
    )
    found = [
        f"{path.relative_to(root)}:{number}"
        for path in sorted(root.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if private.search(line)
    ]
    assert found == []
