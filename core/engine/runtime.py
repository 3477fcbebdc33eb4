"""Run a `.tflite` model with the LiteRT interpreter: quantize inputs, dequantize outputs, batch.

Evaluation runs on batches when the model's batch dimension is dynamic; latency is always
measured at batch 1 (`timed_invoke` on a runner built with the default batch of 1)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from core.engine.flatbuffer import flex_ops
from core.engine.tensors import dequantize, quantize
from core.errors import InvalidTFLiteModel

# Every .tflite flatbuffer carries this file identifier at bytes 4..8.
TFLITE_IDENTIFIER = b"TFL3"
# Images per invoke when evaluating a model whose batch dimension is dynamic, at most.
EVALUATION_BATCH = 16
# Batching pays only while a batch's activations stay in the CPU caches. Measured here (2
# cores, XNNPACK, 2 threads): 32x32x3 inputs ran 1.3-2.9x faster at batch 16 than at batch 1,
# but MobileNetV2 at 224x224x3 ran 2.4-3.9x slower at batch 4-16. So a batch holds at most
# this many input values (float32: 256 KB); larger images run one per invoke.
BATCH_INPUT_VALUES = 64 * 1024


def evaluation_batch(image_values: int) -> int:
    """Images per invoke for evaluation, given one image's input values (H * W * C)."""
    return max(1, min(EVALUATION_BATCH, BATCH_INPUT_VALUES // max(image_values, 1)))


def check_tflite_bytes(data: bytes, *, name: str = "model") -> None:
    """Refuse bytes that cannot be a TFLite flatbuffer before the interpreter sees them.

    Raises:
        InvalidTFLiteModel: empty, text, or without the TFL3 identifier.
    """
    if len(data) == 0:
        raise InvalidTFLiteModel(f"{name} is empty (0 bytes); convert the model again")
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise InvalidTFLiteModel(
            f"{name} is not a TFLite flatbuffer (no TFL3 identifier); give a .tflite file made by "
            "the TFLite converter"
        )


def _quantization(detail: dict[str, Any]) -> tuple[float, int]:
    scale, zero_point = detail["quantization"]
    return float(scale), int(zero_point)


def _litert_interpreter() -> Any:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter


def _refused(name: str, tflite: bytes, exc: Exception) -> InvalidTFLiteModel:
    """The one-line reason the interpreter would not prepare a model."""
    if "Flex delegate" in str(exc):
        return InvalidTFLiteModel(
            f"{name} needs TensorFlow (SELECT_TF_OPS) ops ({', '.join(flex_ops(tflite))}) "
            "that this LiteRT build cannot run (no Flex delegate); run the saved .tflite "
            "with a runtime that links the Flex delegate, or replace those ops"
        )
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    first = next(
        (ln for ln in lines if "fail" in ln.lower() or "error" in ln.lower()),
        lines[0] if lines else type(exc).__name__,
    )
    return InvalidTFLiteModel(
        f"the LiteRT kernels refused {name} when preparing it ({first[:200]}); this mode does "
        "not run on this model, choose another"
    )


class TFLiteRunner:
    """One LiteRT interpreter, prepared for float32 images at batch 1 or on batches.

    Inputs are quantized and outputs dequantized with the tensors' own (scale, zero_point),
    never with a hard-coded formula, so int8, uint8 and float I/O all compare as float.
    `batch` above 1 is a wish: it holds only when the model's batch dimension is dynamic and
    the interpreter prepares at that size; otherwise the runner runs one image per invoke
    (`self.batch` says which).
    """

    def __init__(
        self, tflite: bytes, *, threads: int | None = None, name: str = "model", batch: int = 1
    ) -> None:
        check_tflite_bytes(tflite, name=name)
        self.name = name
        if flex_ops(tflite):
            # ai_edge_litert has no Flex delegate; TensorFlow's interpreter links it in.
            import tensorflow as tf

            interpreter_cls: Any = tf.lite.Interpreter
        else:
            interpreter_cls = _litert_interpreter()
        self.xnnpack = True
        self.batch = 1
        if batch > 1 and self._prepare_batched(interpreter_cls, tflite, threads, name, batch):
            self.batch = batch
        else:
            self._prepare_single(interpreter_cls, tflite, threads, name)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_dtype = np.dtype(self._output["dtype"])
        self.input_quantization = _quantization(self._input)
        self.output_quantization = _quantization(self._output)
        self.input_shape = tuple(int(d) for d in self._input["shape"])
        for which, dtype, (scale, _) in (
            ("input", self.input_dtype, self.input_quantization),
            ("output", self.output_dtype, self.output_quantization),
        ):
            # Checked here, once, so a damaged file fails before inference with its own name.
            if dtype.kind in "iu" and not (math.isfinite(scale) and scale > 0):
                raise InvalidTFLiteModel(
                    f"{name}: the {which} tensor's quantization scale is {scale:g}, not a "
                    "positive number; the file is damaged, convert the model again"
                )

    def _prepare_batched(
        self, interpreter_cls: Any, tflite: bytes, threads: int | None, name: str, batch: int
    ) -> bool:
        """Prepare at `batch` images per invoke; False (nothing kept) when the model refuses.

        The resize is strict: only a batch dimension the model itself leaves open (-1) may
        change, so a graph with a hard-coded batch of 1 (a Reshape to [1, -1]) is never run
        on a batch it would silently mix up.
        """
        interpreter = self._open(interpreter_cls, tflite, threads, name, delegates=True)
        self._interpreter = interpreter
        self._check_single_io(name)
        detail = interpreter.get_input_details()[0]
        shape = [batch, *(int(d) for d in detail["shape"][1:])]
        try:
            interpreter.resize_tensor_input(detail["index"], shape, strict=True)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError):
            return False
        return True

    def _prepare_single(
        self, interpreter_cls: Any, tflite: bytes, threads: int | None, name: str
    ) -> None:
        """Prepare at batch 1, falling back from XNNPACK to the built-in kernels if it refuses."""
        self._interpreter = self._open(interpreter_cls, tflite, threads, name, delegates=True)
        try:
            self._allocate(name)
        except (ValueError, RuntimeError) as exc:
            if "XNNPACK" not in str(exc) or interpreter_cls is not _litert_interpreter():
                raise _refused(name, tflite, exc) from None
            # XNNPACK refuses some quantized graphs (e.g. a tiny activation scale) that the
            # built-in reference kernels run; fall back to them rather than lose the variant.
            self._interpreter = self._open(interpreter_cls, tflite, threads, name, delegates=False)
            self.xnnpack = False
            try:
                self._allocate(name)
            except (ValueError, RuntimeError) as again:
                raise _refused(name, tflite, again) from None

    @staticmethod
    def _open(
        interpreter_cls: Any, tflite: bytes, threads: int | None, name: str, *, delegates: bool
    ) -> Any:
        kwargs: dict[str, Any] = {"model_content": tflite, "num_threads": threads}
        if not delegates:
            from ai_edge_litert.interpreter import OpResolverType

            kwargs["experimental_op_resolver_type"] = (
                OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
        try:
            return interpreter_cls(**kwargs)
        except (ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise InvalidTFLiteModel(
                f"{name} cannot be read by LiteRT ({first}); the file is truncated or damaged"
            ) from None

    def _check_single_io(self, name: str) -> None:
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise InvalidTFLiteModel(
                f"{name} has {len(inputs)} inputs and {len(outputs)} outputs; QuantLens runs "
                "single-input, single-output classifiers"
            )

    def _allocate(self, name: str) -> None:
        self._check_single_io(name)
        detail = self._interpreter.get_input_details()[0]
        shape = list(detail["shape"])
        if shape and shape[0] != 1:
            shape[0] = 1
            self._interpreter.resize_tensor_input(detail["index"], shape)
        self._interpreter.allocate_tensors()

    def _feed(self, images: np.ndarray) -> None:
        x = np.asarray(images, dtype=np.float32).reshape(self.input_shape)
        if self.input_dtype != np.float32:
            scale, zero_point = self.input_quantization
            x = quantize(x, scale, zero_point, self.input_dtype)
        self._interpreter.set_tensor(self._input["index"], x)

    def _read(self) -> np.ndarray:
        """The output as float32 [batch, C] (dequantized with the tensor's own parameters)."""
        out = self._interpreter.get_tensor(self._output["index"])
        rows = len(out) if np.ndim(out) > 1 else 1
        if self.output_dtype != np.float32:
            scale, zero_point = self.output_quantization
            return dequantize(out, scale, zero_point).reshape(rows, -1)
        return np.asarray(out, dtype=np.float32).reshape(rows, -1)

    def _resize_batch(self, count: int) -> None:
        """Re-prepare the interpreter for `count` images per invoke (a batched runner only)."""
        shape = [count, *self.input_shape[1:]]
        self._interpreter.resize_tensor_input(self._input["index"], shape, strict=True)
        self._interpreter.allocate_tensors()
        self.input_shape = tuple(shape)

    def run(self, image: np.ndarray) -> np.ndarray:
        """Float32 outputs [C] for one float32 image [H,W,C] or [1,H,W,C] (a batch-1 runner)."""
        if self.batch != 1:
            return self.run_batch(np.asarray(image).reshape(1, *self.input_shape[1:])).reshape(-1)
        self._feed(image)
        self._interpreter.invoke()
        return self._read().reshape(-1)

    def run_batch(self, images: np.ndarray) -> np.ndarray:
        """Float32 outputs [N, C] for float32 images [N,H,W,C], `self.batch` per invoke.

        A batch-1 runner invokes once per image. A batched runner feeds up to `self.batch`
        images per invoke and re-prepares only when a chunk has another size (the last one).
        """
        if self.batch == 1:
            return np.stack([self.run(image) for image in images])
        rows: list[np.ndarray] = []
        for start in range(0, len(images), self.batch):
            chunk = images[start : start + self.batch]
            if len(chunk) != self.input_shape[0]:
                self._resize_batch(len(chunk))
            self._feed(chunk)
            self._interpreter.invoke()
            rows.append(self._read())
        return np.concatenate(rows)

    def timed_invoke(self, image: np.ndarray) -> Callable[[], None]:
        """An invoke with `image` already set, for latency runs (the same input every time).

        Latency is per image at batch 1, so a batched runner refuses to time.
        """
        if self.batch != 1:
            raise ValueError("latency is measured at batch 1; time with a runner of batch=1")
        self._feed(image)
        invoke: Callable[[], None] = self._interpreter.invoke
        return invoke

    def describe(self) -> dict[str, Any]:
        """Input/output types and quantization, for the report."""
        return {
            "input_dtype": self.input_dtype.name,
            "input_quantization": list(self.input_quantization),
            "output_dtype": self.output_dtype.name,
            "output_quantization": list(self.output_quantization),
            "delegate": "xnnpack" if self.xnnpack else "none (XNNPACK refused the model)",
        }
