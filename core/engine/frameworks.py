"""Set up the model frameworks in a worker process, before any model work starts."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import FrameType, ModuleType

# Keras imports scikit-learn (for its estimator wrappers, and through it scipy.stats),
# matplotlib.pyplot (for its plotting helpers), pandas (to slice DataFrames given to `fit`) and
# IPython (for its notebook file editor) when it is imported, if they are installed: about a
# third of the CPU seconds of `import tensorflow, keras`, paid by every worker process for code
# the engine never calls. Keras falls back to None when the import fails, so they are refused
# to TensorFlow's and Keras's own imports; anyone else (the demo build's digits) still gets them.
FRAMEWORKS = ("tensorflow", "keras")
FRAMEWORK_EXTRAS = ("sklearn", "matplotlib", "pandas", "IPython")


def quiet_tensorflow() -> None:
    """TF's C++ and absl logs drown the worker's stderr tail, which users read after a crash.

    Call it before TensorFlow is imported: the environment is read once, at import.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


class _FrameworkExtrasRefused:
    """A meta path finder that refuses FRAMEWORK_EXTRAS to imports made by FRAMEWORKS."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name.partition(".")[0] in FRAMEWORK_EXTRAS:
            importer = _importer(sys._getframe(1))
            if importer.startswith(FRAMEWORKS):
                raise ImportError(f"{name} is not loaded for {importer} in a QuantLens worker")
        return None  # the next finder looks for it, as usual


def _importer(frame: FrameType | None) -> str:
    """The module whose `import` statement is running: the first frame outside importlib."""
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if not module.startswith(("importlib", "_frozen_importlib")):
            return module
        frame = frame.f_back
    return ""


def skip_framework_extras() -> None:
    """Refuse FRAMEWORK_EXTRAS to TensorFlow and Keras in this process; call it before either is
    imported (later, it changes nothing)."""
    if not any(isinstance(finder, _FrameworkExtrasRefused) for finder in sys.meta_path):
        sys.meta_path.insert(0, _FrameworkExtrasRefused())


def configure_threads(threads: int | None) -> None:
    """Same thread count for TensorFlow as for the interpreter, set before any op runs."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
