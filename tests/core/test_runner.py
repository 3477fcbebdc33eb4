"""One runner runs every model: the only code in core/ that invokes one, and it gives, bit for
bit, what a bare `ai_edge_litert` loop written here gives, under each kernel choice.

The expected outputs are computed with the interpreter constructed directly (its
`experimental_op_resolver_type` set here), the preset and the input quantization written out
in a few lines of numpy, one image per invoke: nothing shared with core.engine.runtime.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER_MODULE = Path("core/engine/runtime.py")
# Reading the original's traced function is not running it: the converter takes it whole.
CONVERTS_THE_ORIGINAL = Path("core/engine/convert.py")


def _model_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """Lines where a tree invokes an interpreter or touches the original's serving function
    (called, or read to be called later)."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "invoke"
        ):
            found.append((node.lineno, ".invoke("))
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ("serve", "concrete_function")
            and isinstance(node.ctx, ast.Load)
        ):
            found.append((node.lineno, f".{node.attr}"))
    return found


def test_only_the_runner_module_runs_a_model() -> None:
    offenders = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel == RUNNER_MODULE:
            continue
        for line, what in _model_calls(ast.parse(path.read_text(encoding="utf-8"))):
            if rel == CONVERTS_THE_ORIGINAL and what == ".concrete_function":
                continue
            offenders.append(f"{rel}:{line} {what}")
    assert offenders == [], "run models through core.engine.runtime's runners: " + ", ".join(
        offenders
    )
    # The scan does see the runner's own calls (it is not blind).
    runner_calls = _model_calls(ast.parse((ROOT / RUNNER_MODULE).read_text(encoding="utf-8")))
    assert {what for _, what in runner_calls} >= {".invoke(", ".serve", ".concrete_function"}


# Every variant kind: float, float16 weights, dynamic range, int8 with float and with int8 I/O,
# int16x8, and one made by the LiteRT Quantizer backend.
VARIANTS = ("float32", "float16", "dynamic", "int8-float32", "int8", "int16x8", "int8_q")
KERNELS = ("xnnpack", "builtin", "reference")
RESOLVER = {
    "xnnpack": "AUTO",
    "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
    "reference": "BUILTIN_REF",
}


@pytest.fixture(scope="module")
def converted(tiny_models: dict[str, Path], tiny_data: Path) -> dict[str, Any]:
    """The tiny model in every variant kind, its 24 decoded uint8 images, and the original."""
    from core.engine.backends import tflite_from_reference
    from core.engine.models import load_reference, model_sha256
    from core.inputs.datasets import load_dataset
    from core.inputs.images import decode_image
    from core.types import VariantSpec

    model = load_reference(tiny_models["keras"])
    samples = load_dataset(tiny_data).samples
    pixels = np.stack([decode_image(s.path, height=16, width=16, channels=3) for s in samples])
    calibration = _mobilenet_v2(pixels)
    sha = model_sha256(tiny_models["keras"])
    out: dict[str, Any] = {"pixels": pixels, "model": model}
    for variant in VARIANTS:
        out[variant] = tflite_from_reference(
            model, VariantSpec.parse(variant), model_sha256=sha, calibration=calibration
        ).tflite
    return out


def _mobilenet_v2(pixels: np.ndarray) -> np.ndarray:
    """The mobilenet_v2 preset written out: [0, 255] to [-1, 1] in float32."""
    return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _bare_loop(tflite: bytes, floats: np.ndarray, kernels: str) -> np.ndarray:
    """Float outputs [N, C]: a directly constructed interpreter, one invoke per image."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=tflite,
        num_threads=1,
        experimental_op_resolver_type=getattr(OpResolverType, RESOLVER[kernels]),
    )
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for image in floats:
        x = image[None]
        if inp["dtype"] != np.float32:
            scale, zero_point = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            scaled = x.astype(np.float64) / scale  # round half away from zero
            q = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + zero_point
            x = np.clip(q, info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0]
        if out["dtype"] != np.float32:
            scale, zero_point = out["quantization"]
            y = (y.astype(np.int64) - zero_point) * np.float64(scale)
        rows.append(np.asarray(y, dtype=np.float32))
    return np.stack(rows)


@pytest.mark.slow
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_runner_equals_a_bare_interpreter_bit_for_bit(
    converted: dict[str, Any], variant: str, kernels: str
) -> None:
    from core.engine.runtime import Kernels, TFLiteRunner

    pixels = converted["pixels"]
    runner = TFLiteRunner(
        converted[variant], threads=1, kernels=Kernels(kernels), preset="mobilenet_v2"
    )
    want = _bare_loop(converted[variant], _mobilenet_v2(pixels), kernels)
    np.testing.assert_array_equal(runner.infer(pixels), want)
    # Streamed in batches of 10, 10 and 4, the same rows.
    streamed = list(runner.outputs(pixels[i : i + 10] for i in range(0, len(pixels), 10)))
    assert [len(b) for b in streamed] == [10, 10, 4]
    np.testing.assert_array_equal(np.concatenate(streamed), want)


@pytest.mark.slow
def test_the_kernel_choices_are_really_different_resolvers(converted: dict[str, Any]) -> None:
    """The runner's kernel choice reaches the interpreter: XNNPACK takes ops into a DELEGATE
    node, the built-in and reference kernels leave none."""
    from core.engine.runtime import Kernels, TFLiteRunner

    def delegated(kernels: Kernels) -> bool:
        runner = TFLiteRunner(converted["float32"], threads=1, kernels=kernels)
        ops = runner._interpreter._get_ops_details()
        return any(op["op_name"] == "DELEGATE" for op in ops)

    assert delegated(Kernels.XNNPACK)
    assert not delegated(Kernels.BUILTIN)
    assert not delegated(Kernels.REFERENCE)
    assert TFLiteRunner(converted["int8"], kernels=Kernels.REFERENCE).describe()["delegate"] == (
        "none (reference kernels)"
    )


@pytest.mark.slow
def test_the_original_runner_calls_the_serving_function_on_the_preset(
    converted: dict[str, Any],
) -> None:
    import tensorflow as tf

    from core.engine.runtime import OriginalRunner

    model, pixels = converted["model"], converted["pixels"]
    want = np.asarray(model.serve(tf.constant(_mobilenet_v2(pixels))), dtype=np.float32)
    runner = OriginalRunner(model, preset="mobilenet_v2")
    np.testing.assert_array_equal(runner.infer(pixels), want)
    streamed = np.concatenate(list(runner.outputs([pixels[:24]])))
    np.testing.assert_array_equal(streamed, want)
    call = runner.timed_call(pixels[0])
    np.testing.assert_allclose(np.asarray(call())[0], want[0], rtol=0, atol=1e-6)
