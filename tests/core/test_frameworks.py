"""A worker's TensorFlow and Keras import without the extras they would load for nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import sys
from core.engine.frameworks import quiet_tensorflow, skip_framework_extras
quiet_tensorflow()
skip_framework_extras()
import tensorflow, keras
from keras.src.wrappers import fixes
from keras.src.visualization import plot_image_gallery
from keras.src.trainers.data_adapters import array_slicing
from keras.src.saving import file_editor
assert fixes.sklearn is None and plot_image_gallery.plt is None, "keras got its extras"
assert array_slicing.pandas is None and file_editor.ipython is None, "keras got its extras"
loaded = {"sklearn", "matplotlib", "pandas", "IPython"} & set(sys.modules)
assert not loaded, f"extras were loaded: {loaded}"
model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
assert model(tensorflow.ones((1, 2))).shape == (1, 1)
from sklearn.datasets import load_digits  # the demo build's own import still works
assert load_digits().images.shape == (1797, 8, 8)
import pandas  # and the engine's own
assert pandas.DataFrame({"a": [1]}).shape == (1, 1)
print("ok")
"""


@pytest.mark.slow  # the child imports TensorFlow
def test_keras_gets_no_sklearn_matplotlib_pandas_or_ipython_and_everyone_else_still_does() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
