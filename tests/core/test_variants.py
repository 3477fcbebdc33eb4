"""Variant names: the backend suffix and per-layer overrides, `parse` as the inverse of `name`,
the --backend expansion, and one-line refusals (no TensorFlow needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import QuantLensError
from core.types import Backend, IOType, Mode, VariantSpec, variants_for_backend

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "mode", "io_type", "backend", "keep", "int16"),
    [
        ("int8", Mode.INT8, IOType.INT8, Backend.CONVERTER, (), ()),
        ("int8_q", Mode.INT8, IOType.INT8, Backend.QUANTIZER, (), ()),
        ("int8-uint8_q", Mode.INT8, IOType.UINT8, Backend.QUANTIZER, (), ()),
        ("int4w_q", Mode.INT4W, None, Backend.QUANTIZER, (), ()),
        ("float16_q:keep=conv2d", Mode.FLOAT16, None, Backend.QUANTIZER, ("conv2d",), ()),
        (
            "int8_q:keep=dense+Conv1_relu:int16=conv2d_1",
            Mode.INT8,
            IOType.INT8,
            Backend.QUANTIZER,
            ("Conv1_relu", "dense"),
            ("conv2d_1",),
        ),
    ],
)
def test_parse_reads_backend_and_overrides(
    text: str,
    mode: Mode,
    io_type: IOType | None,
    backend: Backend,
    keep: tuple[str, ...],
    int16: tuple[str, ...],
) -> None:
    spec = VariantSpec.parse(text)
    assert (spec.mode, spec.io_type, spec.backend) == (mode, io_type, backend)
    assert spec.float_layers == keep and spec.int16_layers == int16
    assert VariantSpec.parse(spec.name) == spec


def test_names_are_canonical_and_layer_case_is_kept() -> None:
    spec = VariantSpec.parse("INT8_Q:keep=dense+Conv1+dense")
    assert spec.name == "int8_q:keep=Conv1+dense"
    assert spec.to_dict()["float_layers"] == ["Conv1", "dense"]
    assert spec.to_dict()["backend"] == "quantizer"
    # Today's converter names do not change.
    for name in ("float32", "dynamic", "float16", "int8", "int8-uint8", "int8-float32", "int16x8"):
        assert VariantSpec.parse(name).name == name
        assert VariantSpec.parse(name).backend is Backend.CONVERTER
    assert VariantSpec.parse("float16+tf").name == "float16+tf"


def test_backend_choice_expands_the_modes() -> None:
    modes = ["float32", "float16", "int8-uint8", "int4w"]
    assert variants_for_backend(modes, "quantizer") == (
        "float32",  # the baseline both backends share is the converter's float32
        "float16_q",
        "int8-uint8_q",
        "int4w_q",
    )
    assert variants_for_backend(modes, "both") == (
        "float32",
        "float16",
        "float16_q",
        "int8-uint8",
        "int8-uint8_q",
        "int4w_q",
    )
    assert variants_for_backend(["int8", "int8_q"], "converter") == ("int8", "int8_q")
    # int8 keeps layers float on both backends; int16= and other modes only on the quantizer.
    assert variants_for_backend(["int8:keep=dense"], "both") == (
        "int8:keep=dense",
        "int8_q:keep=dense",
    )
    assert variants_for_backend(["int8:int16=dense"], "both") == ("int8_q:int16=dense",)
    assert variants_for_backend(["float16:keep=dense"], "both") == ("float16_q:keep=dense",)


@pytest.mark.parametrize(
    ("names", "backend", "expected"),
    [
        (["int4w"], "converter", "int4w runs on the quantizer backend only; use int4w_q"),
        (
            ["float16:keep=dense"],
            "converter",
            "on the converter backend only int8 keeps layers in float (keep=)",
        ),
        (
            ["int8:int16=dense"],
            "converter",
            "only int8 keeps layers in float (keep=); write int8_q",
        ),
        (
            ["float16+tf"],
            "quantizer",
            "the quantizer backend cannot calibrate or run SELECT_TF_OPS",
        ),
        (["float32_q"], "converter", "float32 is the converter's model the quantizer starts from"),
        (["float32:keep=dense"], "quantizer", "float32 quantizes nothing"),
        (["float16:int16=conv2d"], "quantizer", "int16= gives int16 activations to layers of an"),
        (["int8:keep=a:int16=a"], "quantizer", "a cannot be both kept in float and given int16"),
        (["int8:keep"], "quantizer", "cannot read 'keep' in variant 'int8:keep'"),
        (["int8:keep=a:keep=b"], "quantizer", "gives keep= twice"),
        (["int8"], "tflite", "unknown backend 'tflite'; choose converter, quantizer, both"),
    ],
)
def test_refusals_are_one_line(names: list[str], backend: str, expected: str) -> None:
    with pytest.raises(QuantLensError) as info:
        variants_for_backend(names, backend)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_refuses_int4w_on_the_converter_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "model.keras").write_bytes(b"not read: the variants are checked first")
    (tmp_path / "data.csv").write_text("filepath,label\n", encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "core",
            "run",
            str(tmp_path / "model.keras"),
            "--data",
            str(tmp_path / "data.csv"),
            "--modes",
            "float16,int4w",
        ],
        cwd=REPO,
        env={"QUANTLENS_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: int4w runs on the quantizer backend only; use int4w_q (--backend quantizer or both)"
    )
    assert done.stdout == ""


def test_importing_the_quantizer_backend_loads_no_framework() -> None:
    code = (
        "import sys, core.engine.quantizer, core.engine.convert;"
        "print(','.join(m for m in ('tensorflow', 'keras', 'ai_edge_litert', 'litert_quantizer')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_an_equalized_variant_is_named_parsed_and_filed_apart_from_its_parent() -> None:
    """`int8:eq` is the int8 model made from the cross-layer equalized Keras model: its name
    round-trips, it derives from int8, its files do not overwrite int8's, and a mode that does
    not quantize activations refuses it in one line."""
    from core.errors import QuantLensError
    from core.reporting.report import parent_name
    from core.types import VariantSpec

    spec = VariantSpec.parse("int8:keep=b+a:eq")
    assert spec.equalized and spec.name == "int8:eq:keep=a+b"
    assert VariantSpec.parse(spec.name) == spec
    assert parent_name(spec) == "int8" and spec.file_id != "int8"
    assert VariantSpec.parse("int8_q:eq").name == "int8_q:eq"
    with pytest.raises(QuantLensError, match="use :eq with int8"):
        VariantSpec.parse("float16:eq")


def test_a_weight_only_layer_is_named_parsed_and_refused_where_it_cannot_be_made() -> None:
    """`int8_q:wo=conv` quantizes that layer's weights only (float activations and compute)."""
    from core.errors import QuantLensError
    from core.reporting.sections.variant import VariantIdentity
    from core.types import VariantSpec

    spec = VariantSpec.parse("int8_q:wo=conv")
    assert spec.weight_only_layers == ("conv",) and spec.name == "int8_q:wo=conv"
    assert VariantIdentity.from_dict(VariantIdentity.from_spec(spec).to_dict()).spec == spec
    with pytest.raises(QuantLensError, match="on the converter backend"):
        VariantSpec.parse("int8:wo=conv")
    with pytest.raises(QuantLensError, match="named by wo= and by keep= or int16="):
        VariantSpec.parse("int8_q:wo=conv:keep=conv")
