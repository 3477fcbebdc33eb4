"""Set up the model frameworks in a worker process, before any model work starts."""

from __future__ import annotations

import os
import warnings


def quiet_tensorflow() -> None:
    """TF's C++ and absl logs drown the worker's stderr tail, which users read after a crash.

    Call it before TensorFlow is imported: the environment is read once, at import.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def configure_threads(threads: int | None) -> None:
    """Same thread count for TensorFlow as for the interpreter, set before any op runs."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
