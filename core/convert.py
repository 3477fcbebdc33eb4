"""Turn the reference model into `.tflite` bytes for one quantization mode, with a content-hash cache.

One function per backend: the TFLiteConverter here; LiteRT Quantizer recipes applied to the
float32 model in core.quantizer, reached through the same `tflite_from_reference`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConversionFailed
from core.models import ReferenceModel
from core.rundir import write_atomic
from core.types import Backend, IOType, Mode, VariantSpec

NEEDS_CALIBRATION = frozenset({Mode.INT8, Mode.INT16X8})  # on both backends
# Part of every cache key: bump it when QuantLens changes how it converts, so bytes made by an
# older (possibly wrong) recipe are never served again. 2: Keras weights frozen correctly.
CONVERTER_RECIPE_VERSION = 3


@dataclass(frozen=True)
class ConversionResult:
    """The converted model and how it was made."""

    spec: VariantSpec
    tflite: bytes
    seconds: float
    cached: bool
    select_tf_ops_used: tuple[str, ...] = field(default=())

    @property
    def size_bytes(self) -> int:
        return len(self.tflite)


def library_versions() -> dict[str, str]:
    """Versions that change converter output; part of every cache key."""
    from importlib.metadata import version

    import tensorflow as tf

    return {"tensorflow": tf.__version__, "litert": version("ai-edge-litert")}


def cache_key(
    *,
    model_sha256: str,
    spec: VariantSpec,
    calibration: np.ndarray | None,
    input_shape: tuple[int, ...],
) -> str:
    """Content hash of everything that determines the converter's output.

    The calibration tensors themselves are hashed (not their file names), so the same images
    under another preprocessing preset are a different key.
    """
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {
                "model": model_sha256,
                "variant": spec.to_dict(),
                "input_shape": list(input_shape),
                "versions": library_versions(),
                "recipe": CONVERTER_RECIPE_VERSION,
            },
            sort_keys=True,
        ).encode()
    )
    if calibration is not None and spec.mode in NEEDS_CALIBRATION:
        digest.update(np.ascontiguousarray(calibration, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _check_calibration(spec: VariantSpec, calibration: np.ndarray | None) -> np.ndarray | None:
    if spec.mode not in NEEDS_CALIBRATION:
        return None
    if calibration is None or len(calibration) == 0:
        raise ConversionFailed(
            f"{spec.mode} needs calibration images and none could be decoded; pick a data set with "
            "usable images or choose float16 or dynamic"
        )
    bad = ~np.isfinite(calibration.reshape(len(calibration), -1)).all(axis=1)
    if bad.any():
        raise ConversionFailed(
            f"calibration data holds NaN or Inf in {int(bad.sum())} of {len(calibration)} images; "
            "fix the preprocessing preset or the images"
        )
    return calibration


def _configure(converter: Any, spec: VariantSpec, calibration: np.ndarray | None) -> None:
    import tensorflow as tf

    builtin = tf.lite.OpsSet.TFLITE_BUILTINS
    ops = [builtin]
    if spec.mode is not Mode.FLOAT32:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if spec.mode is Mode.FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
    if calibration is not None:
        samples = calibration

        def representative_dataset() -> Any:
            for i in range(len(samples)):
                yield [samples[i : i + 1]]

        converter.representative_dataset = representative_dataset
    if spec.mode is Mode.INT8:
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_dtype = {IOType.INT8: tf.int8, IOType.UINT8: tf.uint8, IOType.FLOAT32: tf.float32}[
            spec.io_type or IOType.INT8
        ]
        converter.inference_input_type = io_dtype
        converter.inference_output_type = io_dtype
    if spec.mode is Mode.INT16X8:
        ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    if spec.allow_select_tf_ops:
        ops = [*ops, tf.lite.OpsSet.SELECT_TF_OPS]
        if builtin not in ops:
            # Full-integer op sets cannot mix with Flex ops alone; float builtins bridge them.
            ops.append(builtin)
    converter.target_spec.supported_ops = ops


_TF_OP = re.compile(r"\btf\.(\w+)")
# The converter's own summary lines: "TF Select ops: A, B" (SELECT_TF_OPS would provide them) and
# "Custom ops: C" (no op set provides them). Raw MLIR also says `tf.entry_function`, so the
# summaries name ops more precisely than every `tf.X` in the text.
_SELECT_OPS = re.compile(r"TF Select ops: ([\w, ]+)")
_CUSTOM_OPS = re.compile(r"Custom ops: ([\w, ]+)")
_NOT_FLEX = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")


def _op_names(pattern: re.Pattern[str], text: str) -> list[str]:
    return sorted({op.strip() for m in pattern.findall(text) for op in m.split(",") if op.strip()})


def _conversion_error(spec: VariantSpec, exc: Exception) -> ConversionFailed:
    text = str(exc)
    select = _op_names(_SELECT_OPS, text)
    custom = _op_names(_CUSTOM_OPS, text)
    if not select and not custom and "not supported" in text:
        select = sorted(set(_TF_OP.findall(text)) - {"entry_function"})
    if select and not spec.allow_select_tf_ops:
        return ConversionFailed(
            f"{spec.name}: the model uses TensorFlow ops that TFLite builtins lack "
            f"({', '.join(select)}); allow the SELECT_TF_OPS fallback (variant {spec.name}+tf, "
            "--select-tf-ops) or replace those ops"
        )
    custom = custom or (_op_names(_NOT_FLEX, text) if not select else [])
    if custom:
        return ConversionFailed(
            f"{spec.name}: the model uses TensorFlow ops that neither TFLite builtins nor the "
            f"SELECT_TF_OPS fallback provide ({', '.join(custom)}); replace those ops"
        )
    if "Flex delegate" in text:
        # Calibration runs the model in LiteRT, and this build cannot run TensorFlow (Flex) ops.
        return ConversionFailed(
            f"{spec.name}: calibration has to run the model's TensorFlow (SELECT_TF_OPS) ops and "
            "this LiteRT build has no Flex delegate; choose float16+tf or dynamic+tf, or replace "
            "those ops"
        )
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower() and ln.strip()]
    first = (
        lines or [ln.strip() for ln in text.splitlines() if ln.strip()] or [type(exc).__name__]
    )[0]
    return ConversionFailed(f"{spec.name}: the TFLite converter failed: {first[:300]}")


def flex_ops(tflite: bytes) -> tuple[str, ...]:
    """Names of the TensorFlow (Flex) ops a converted model falls back to."""
    found = sorted({m.decode() for m in re.findall(rb"Flex([A-Z][A-Za-z0-9]+)", tflite)})
    return tuple(found)


def _converter_for(model: ReferenceModel) -> Any:
    """The converter for the reference model's serving function.

    A float32 SavedModel with a fixed image size converts straight from its folder, which is
    about 20 % faster than re-tracing it; Keras models, other input dtypes and models whose
    size was given by the user go through the traced function QuantLens serves.
    """
    import tensorflow as tf

    sig = model.signature
    direct = (
        sig.format == "saved_model"
        and sig.input_dtype == "float32"
        and None not in sig.input_shape[1:]
    )
    if direct:
        return tf.lite.TFLiteConverter.from_saved_model(
            str(model.path), signature_keys=[sig.signature_key]
        )
    return tf.lite.TFLiteConverter.from_concrete_functions(
        [model.concrete_function], model.trackable
    )


def tflite_from_reference(
    model: ReferenceModel,
    spec: VariantSpec,
    *,
    model_sha256: str,
    calibration: np.ndarray | None = None,
    cache_dir: Path | None = None,
) -> ConversionResult:
    """Convert the reference model for one variant, or return the cached bytes.

    Args:
        model: the loaded reference model (its traced serving function is converted).
        spec: mode and options.
        model_sha256: content hash of the model files, for the cache key.
        calibration: float32 [N,H,W,C] preprocessed images; required for int8 and int16x8.
        cache_dir: where converted models are kept by content hash; None disables the cache.

    Raises:
        ConversionFailed: the converter refused the model, or calibration data is unusable.
    """
    if spec.backend is Backend.QUANTIZER:
        from core.quantizer import tflite_from_quantizer

        return tflite_from_quantizer(
            model, spec, model_sha256=model_sha256, calibration=calibration, cache_dir=cache_dir
        )
    calibration = _check_calibration(spec, calibration)
    sig = model.signature
    key = cache_key(
        model_sha256=model_sha256,
        spec=spec,
        calibration=calibration,
        input_shape=(1, sig.height, sig.width, sig.channels),
    )
    cached_file = cache_dir / f"{key}.tflite" if cache_dir is not None else None
    if cached_file is not None and cached_file.is_file():
        data = cached_file.read_bytes()
        return ConversionResult(
            spec=spec, tflite=data, seconds=0.0, cached=True, select_tf_ops_used=flex_ops(data)
        )

    started = time.perf_counter()
    converter = _converter_for(model)
    _configure(converter, spec, calibration)
    try:
        data = converter.convert()
    except Exception as exc:  # ConverterError, ValueError, RuntimeError from MLIR
        raise _conversion_error(spec, exc) from None
    seconds = time.perf_counter() - started
    if cached_file is not None:
        write_atomic(cached_file, data)
    return ConversionResult(
        spec=spec, tflite=data, seconds=seconds, cached=False, select_tf_ops_used=flex_ops(data)
    )
