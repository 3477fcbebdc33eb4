"""The integer-only check read from the flatbuffer, against the interpreter's own tensor types:
an int8 model with int8 I/O, an int8 model with float I/O (edges only), dynamic range and
float16 (float compute, each op named)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _convert(saved_model: Path, mode: str) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode.startswith("int8"):
        rng = np.random.default_rng(0)

        def calibration():  # type: ignore[no-untyped-def]
            for _ in range(8):
                yield [rng.uniform(0, 1, (1, 16, 16, 3)).astype(np.float32)]

        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if mode == "int8_io":
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def _float_compute_ops(tflite: bytes) -> set[str]:
    """Independently: the interpreter's op list and tensor dtypes; casts left out."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tflite)
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in it.get_tensor_details()}
    found = set()
    for op in it._get_ops_details():
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE", "CAST"):
            continue
        tensors = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        if any(dtypes[i].kind == "f" for i in tensors):
            found.add(op["op_name"])
    return found


@pytest.mark.parametrize("mode", ["int8_io", "int8", "dynamic", "float16"])
def test_the_integer_only_check_names_exactly_the_float_ops(
    tiny_models: dict[str, Path], mode: str
) -> None:
    from core.engine.flatbuffer import integer_only

    tflite = _convert(tiny_models["saved_model"], mode)
    check = integer_only(tflite)
    expected = _float_compute_ops(tflite)
    assert check.integer_only == (not expected)
    assert {b.split()[0] for b in check.blockers} == expected
    assert check.float_io == (mode != "int8_io")
    if mode.startswith("int8"):
        assert check.integer_only and check.blockers == ()
    else:
        assert not check.integer_only and any("FLOAT32" in b for b in check.blockers)
