"""Turn the reference model into `.tflite` bytes for one quantization mode, with a content-hash cache.

The TFLiteConverter backend. LiteRT Quantizer recipes, applied to the float32 model made here,
are core.engine.quantizer; core.engine.backends picks between the two for a variant.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.engine.flatbuffer import flex_ops
from core.engine.models import ReferenceModel
from core.errors import ConversionFailed
from core.inputs.convcache import read_cached, write_cached
from core.types import NEEDS_CALIBRATION, Backend, IOType, Mode, ModelSignature, VariantSpec

# Part of every cache key: bump it when QuantLens changes how it converts, so bytes made by an
# older (possibly wrong) recipe are never served again. 2: Keras weights frozen correctly.
# 4: the key names the signature and the route; bytes whose outputs are NaN are never cached.
CONVERTER_RECIPE_VERSION = 4
# How the converter reaches the model (DESIGN §4, QUANTIZATION_NOTES): straight from the
# SavedModel folder, or from the serving function QuantLens traced with a module owning the
# variables. Recorded on each variant as `conversion_route`.
SAVED_MODEL_DIR = "saved_model_dir"
TRACED_FUNCTION = "traced_function"
# Images each fresh conversion is run on before it is accepted (non-finite outputs = broken).
PROBE_IMAGES = 8


@dataclass(frozen=True)
class ConversionResult:
    """The converted model and how it was made."""

    spec: VariantSpec
    tflite: bytes
    seconds: float
    cached: bool
    select_tf_ops_used: tuple[str, ...] = field(default=())
    route: str = TRACED_FUNCTION

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
    signature: ModelSignature,
    route: str,
    preset: str | None = None,
) -> str:
    """Content hash of everything that determines the converter's output.

    Besides the model's bytes and the variant: the signature served (one SavedModel can hold
    several, with different outputs), its input and output tensor names, the input size and
    dtype, the conversion route, the library versions and QuantLens's recipe version. Modes
    that calibrate also hash the calibration tensors themselves (not their file names) and
    name the preprocessing preset that made them, so the same images under another preset are
    another key; modes that do not calibrate ignore both.
    """
    calibrated = calibration is not None and spec.mode in NEEDS_CALIBRATION
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {
                "model": model_sha256,
                "variant": spec.to_dict(),
                "signature": {
                    "key": signature.signature_key,
                    "input": signature.input_name,
                    "output": signature.output_name,
                    "input_dtype": signature.input_dtype,
                    "input_size": [signature.height, signature.width, signature.channels],
                },
                "route": route,
                "calibration_preset": preset if calibrated else None,
                "versions": library_versions(),
                "recipe": CONVERTER_RECIPE_VERSION,
            },
            sort_keys=True,
        ).encode()
    )
    if calibrated:
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


def conversion_routes(model: ReferenceModel) -> tuple[str, ...]:
    """The routes that can convert this model, preferred first.

    A float32 SavedModel with a fixed image size converts straight from its folder, which is
    about 20 % faster than re-tracing it; the traced serving function is the fallback when
    that route loses the variables (a Keras 3 model saved through a plain tf.Module converts
    to NaN outputs). Keras models, other input dtypes and models whose size was given by the
    user have only the traced function.
    """
    sig = model.signature
    direct = (
        sig.format == "saved_model"
        and sig.input_dtype == "float32"
        and None not in sig.input_shape[1:]
    )
    return (SAVED_MODEL_DIR, TRACED_FUNCTION) if direct else (TRACED_FUNCTION,)


def _converter_for(model: ReferenceModel, route: str) -> Any:
    """The converter for the reference model's serving function, reached by `route`."""
    import tensorflow as tf

    if route == SAVED_MODEL_DIR:
        return tf.lite.TFLiteConverter.from_saved_model(
            str(model.path), signature_keys=[model.signature.signature_key]
        )
    return tf.lite.TFLiteConverter.from_concrete_functions(
        [model.concrete_function], model.trackable
    )


# Makes an int8 model with `spec.float_layers` kept float (core.engine.fixes.keep_float, passed in by
# core.engine.backends, which sits above both modules: a direct import would be a cycle).
KeepFloat = Callable[[ReferenceModel, VariantSpec, np.ndarray, str], bytes]


def _convert_by(
    model: ReferenceModel,
    spec: VariantSpec,
    calibration: np.ndarray | None,
    route: str,
    keep_float: KeepFloat | None,
) -> bytes:
    if spec.float_layers and calibration is not None:
        if keep_float is None:
            raise ValueError(
                f"{spec.name} keeps layers float: convert it through core.engine.backends"
            )
        return keep_float(model, spec, calibration, route)
    converter = _converter_for(model, route)
    _configure(converter, spec, calibration)
    try:
        data: bytes = converter.convert()
    except Exception as exc:  # ConverterError, ValueError, RuntimeError from MLIR
        raise _conversion_error(spec, exc) from None
    return data


def nonfinite_outputs(tflite: bytes, images: np.ndarray, *, expected: np.ndarray) -> int | None:
    """How many images the converted model answers with NaN/Inf where the original does not.

    Args:
        tflite: the converted model.
        images: float32 [N,H,W,C] preprocessed images.
        expected: [N] bool, True where the original's output is finite.

    Returns:
        The count, or None when LiteRT cannot run the model at all: the evaluation then
        reports that reason for the variant, as it would without this check.
    """
    from core.engine.runtime import TFLiteRunner
    from core.errors import InvalidTFLiteModel

    try:
        # One thread: this runs beside the evaluation of the previous variant.
        runner = TFLiteRunner(tflite, threads=1, name="the converted model")
        outputs = np.stack([runner.run(image) for image in images])
    except (InvalidTFLiteModel, ValueError, RuntimeError):
        return None
    finite = np.isfinite(outputs.reshape(len(images), -1)).all(axis=1)
    return int((~finite & expected).sum())


def _nonfinite_error(spec: VariantSpec, bad: int, total: int, routes: tuple[str, ...]) -> str:
    return (
        f"{spec.name}: the converted model outputs NaN/Inf on {bad} of {total} probe images "
        f"where the original's outputs are finite (tried {' and '.join(routes)}); the converter "
        "probably lost the model's variables: re-export it with model.export(dir) or save it as "
        ".keras"
    )


def tflite_from_converter(
    model: ReferenceModel,
    spec: VariantSpec,
    *,
    model_sha256: str,
    calibration: np.ndarray | None = None,
    preset: str | None = None,
    probe: np.ndarray | None = None,
    cache_dir: Path | None = None,
    keep_float: KeepFloat | None = None,
) -> ConversionResult:
    """Convert the reference model for one converter variant, or return the cached bytes.

    The routes of `conversion_routes` are tried in order: a route the converter refuses, or
    whose model outputs NaN/Inf on a probe image where the original's output is finite, is
    dropped for the next one; such bytes are never cached. When every route is refused, the
    first route's reason is raised.

    Args:
        model: the loaded reference model.
        spec: mode and options.
        model_sha256: content hash of the model files, for the cache key.
        calibration: float32 [N,H,W,C] preprocessed images; required for int8 and int16x8.
        preset: the preprocessing preset that made `calibration` (part of the cache key).
        probe: float32 [N,H,W,C] preprocessed images to check each conversion on (the first
            PROBE_IMAGES are used); None skips the check.
        cache_dir: where converted models are kept by content hash; None disables the cache.
        keep_float: how a variant with `float_layers` is made (core.engine.backends passes
            core.engine.fixes.keep_float.tflite_keeping_float).

    Raises:
        ConversionFailed: the converter refused the model, calibration data is unusable, or
            every route gives NaN/Inf outputs.
        ValueError: `spec` is a quantizer variant (core.engine.backends routes those).
    """
    if spec.backend is not Backend.CONVERTER:
        raise ValueError(f"{spec.name} is not a converter variant")
    calibration = _check_calibration(spec, calibration)
    probe = None if probe is None or len(probe) == 0 else probe[:PROBE_IMAGES]
    expected = None if probe is None else np.isfinite(model.predict(probe)).all(axis=1)
    routes = conversion_routes(model)
    seconds = 0.0
    bad = 0
    refused: ConversionFailed | None = None
    for route in routes:
        key = cache_key(
            model_sha256=model_sha256,
            spec=spec,
            calibration=calibration,
            signature=model.signature,
            route=route,
            preset=preset,
        )
        cached_file = cache_dir / f"{key}.tflite" if cache_dir is not None else None
        hit = None if cached_file is None else read_cached(cached_file)
        cached = hit is not None
        if hit is not None:
            data = hit
        else:
            started = time.perf_counter()
            try:
                data = _convert_by(model, spec, calibration, route, keep_float)
            except ConversionFailed as exc:
                # Lost variables can also fail calibration (READ_VARIABLE); the next route may work.
                refused = refused or exc
                continue
            finally:
                seconds += time.perf_counter() - started
        if probe is not None and expected is not None:
            bad = nonfinite_outputs(data, probe, expected=expected) or 0
            if bad:
                continue  # never cached: the next route may convert it correctly
        if cached_file is not None and not cached:
            write_cached(cached_file, data)
        return ConversionResult(
            spec=spec,
            tflite=data,
            seconds=seconds,
            cached=cached,
            select_tf_ops_used=flex_ops(data),
            route=route,
        )
    if refused is not None and not bad:
        raise refused  # the first route's reason: every route failed to convert
    raise ConversionFailed(
        _nonfinite_error(spec, bad, PROBE_IMAGES if probe is None else len(probe), routes)
    )
