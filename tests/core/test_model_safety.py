"""A model is a program: Lambda layers and file-system graph ops are refused unless trusted.

Every test plants a canary file path in the model. The model writes the canary only if its code
runs, so "the canary does not exist" proves the code never ran, not just that an error was raised.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.engine.models import DANGEROUS_OPS, load_reference, unsafe_ops
from core.errors import UnsafeModel

pytestmark = pytest.mark.slow  # builds real Keras models and SavedModels

REPO = Path(__file__).resolve().parents[2]


def _lambda_model(path: Path, canary: Path) -> None:
    """A .keras file whose Lambda layer writes `canary` whenever the layer's code runs."""
    import keras
    from keras import layers

    # The lambda's source holds the canary path as a literal, so the saved bytecode carries it.
    namespace: dict[str, Any] = {}
    exec(f"f = lambda t: (open({str(canary)!r}, 'w').close(), t * 2.0)[1]", namespace)
    inp = keras.Input((8, 8, 3), name="image")
    x = layers.GlobalAveragePooling2D()(layers.Lambda(namespace["f"])(inp))
    keras.Model(inp, layers.Dense(3, activation="softmax")(x)).save(path)
    canary.unlink()  # building the model ran the lambda once; start clean


def _writer_saved_model(
    path: Path, canary: Path, *, nested: bool = False, read: bool = False
) -> None:
    """A SavedModel whose serving signature writes (or reads) `canary`, then returns scores."""
    import tensorflow as tf

    @tf.function
    def side_effect() -> Any:
        if read:
            return tf.strings.length(tf.io.read_file(str(canary)))
        tf.io.write_file(str(canary), "the model ran file I/O")
        return tf.constant(0)

    class Writer(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.ones((3, 4)))

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
        def serve(self, x: Any) -> Any:
            scores = tf.nn.softmax(tf.reduce_mean(x, axis=[1, 2]) @ self.w)
            if nested:
                side_effect()  # hidden one function deeper in the library
            elif read:
                # Used in the output, so tracing cannot prune the (stateless) read.
                size = tf.cast(tf.strings.length(tf.io.read_file(str(canary))), tf.float32)
                scores += 0.0 * size
            else:
                tf.io.write_file(str(canary), "the model ran file I/O")
            return {"scores": scores}

    existed = canary.exists()
    module = Writer()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    assert canary.exists() == existed  # saving traces the graph but runs no op


@pytest.fixture(scope="module")
def unsafe_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("unsafe_models")
    paths = {"root": root}
    _lambda_model(root / "lambda.keras", root / "lambda.canary")
    paths["lambda"] = root / "lambda.keras"
    _writer_saved_model(root / "writer", root / "writer.canary")
    paths["writer"] = root / "writer"
    _writer_saved_model(root / "nested_writer", root / "nested.canary", nested=True)
    paths["nested_writer"] = root / "nested_writer"
    return paths


LAMBDA_REFUSAL = (
    "lambda.keras has a Lambda layer, which runs arbitrary Python code when loaded; refused in "
    "safe mode. Replace it with built-in layers, or enable trusted mode if you trust the file's "
    "author"
)


def test_lambda_layer_is_refused_and_never_runs(unsafe_models: dict[str, Path]) -> None:
    canary = unsafe_models["root"] / "lambda.canary"
    with pytest.raises(UnsafeModel) as info:
        load_reference(unsafe_models["lambda"])
    assert str(info.value) == LAMBDA_REFUSAL
    assert not canary.exists()


def test_lambda_layer_runs_in_trusted_mode(unsafe_models: dict[str, Path]) -> None:
    """Trusted mode really runs the model's code: that is what the label warns about."""
    canary = unsafe_models["root"] / "lambda.canary"
    model = load_reference(unsafe_models["lambda"], trusted=True)
    assert canary.exists()
    canary.unlink()
    out = model.predict(np.zeros((1, 8, 8, 3), np.float32))
    assert out.shape == (1, 3)


def test_lambda_refusal_crosses_the_worker_and_the_caller_never_loads_tensorflow(
    unsafe_models: dict[str, Path],
) -> None:
    """Worker isolation: the caller (as the web server does) inspects through a worker process,
    gets the worker's one-line refusal as the same exception class, and never imports TF."""
    canary = unsafe_models["root"] / "lambda.canary"
    script = (
        "import json, sys\n"
        "from core.jobs.launch import inspect_model\n"
        "from core.errors import QuantLensError\n"
        "try:\n"
        f"    inspect_model({str(unsafe_models['lambda'])!r})\n"
        "    result = {'error': None}\n"
        "except QuantLensError as exc:\n"
        "    result = {'error': str(exc), 'kind': type(exc).__name__}\n"
        "result['tf_loaded'] = any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules)\n"
        "print(json.dumps(result))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"error": LAMBDA_REFUSAL, "kind": "UnsafeModel", "tf_loaded": False}
    assert not canary.exists()


def test_saved_model_writing_files_is_refused_before_loading(
    unsafe_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tensorflow as tf

    canary = unsafe_models["root"] / "writer.canary"
    loads: list[str] = []
    real_load = tf.saved_model.load
    monkeypatch.setattr(
        tf.saved_model, "load", lambda path, *a, **k: loads.append(path) or real_load(path, *a, **k)
    )
    with pytest.raises(UnsafeModel) as info:
        load_reference(unsafe_models["writer"])
    assert str(info.value) == (
        "writer runs file-system or process ops (WriteFile) in its serving graph; refused in safe "
        "mode. Enable trusted mode only if you trust the model's author"
    )
    assert loads == []  # refused from the proto alone: TensorFlow never loaded the program
    assert not canary.exists()


def test_saved_model_writing_files_runs_when_trusted(unsafe_models: dict[str, Path]) -> None:
    canary = unsafe_models["root"] / "writer.canary"
    model = load_reference(unsafe_models["writer"], trusted=True)
    assert canary.read_text() == "the model ran file I/O"  # the op really runs when trusted
    canary.unlink()
    out = model.predict(np.full((2, 8, 8, 3), 0.5, np.float32))
    np.testing.assert_allclose(out, np.full((2, 4), 0.25), atol=1e-6)
    assert canary.exists()


def test_file_op_hidden_in_a_nested_function_is_found(unsafe_models: dict[str, Path]) -> None:
    assert unsafe_ops(unsafe_models["nested_writer"]) == ["WriteFile"]
    with pytest.raises(
        UnsafeModel, match=r"^nested_writer runs file-system or process ops \(WriteFile\)"
    ):
        load_reference(unsafe_models["nested_writer"])
    assert not (unsafe_models["root"] / "nested.canary").exists()


def test_reading_files_is_refused_too(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not exfiltrate")
    _writer_saved_model(tmp_path / "reader", secret, read=True)
    assert "ReadFile" in DANGEROUS_OPS
    with pytest.raises(UnsafeModel, match=r"^reader runs file-system or process ops \(ReadFile\)"):
        load_reference(tmp_path / "reader")


def test_a_plain_exported_model_has_no_unsafe_ops(tiny_models: dict[str, Path]) -> None:
    """The check must not refuse ordinary models (checkpoint I/O is not in the serving graph)."""
    assert unsafe_ops(tiny_models["saved_model"]) == []
    assert load_reference(tiny_models["saved_model"]).signature.num_classes == 4
