"""The runners: the one place a model is run, LiteRT's `.tflite` files and the original alike.

A loader builds a model (core.engine.models, core.engine.convert); a runner runs it. Every loop
that pushes images through a model (evaluation, the reference pass, diagnosis and auto-fix
measurements, Ray shards, per-layer tensors, timing) goes through `TFLiteRunner` or
`OriginalRunner`, so kernel choice, threads, batching, presets and quantized I/O are decided
here once (a test checks that no other module in core/ invokes a model).

Evaluation runs on batches when the model's batch dimension is dynamic; latency is always
measured at batch 1 (`timed_invoke` on a runner built with the default batch of 1)."""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import numpy as np

from core.engine.flatbuffer import flex_ops
from core.engine.tensors import dequantize, quantize
from core.errors import InvalidTFLiteModel
from core.types import Preset

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


class Kernels(enum.StrEnum):
    """Which LiteRT kernels run a model (the interpreter's op resolver).

    XNNPACK is the default delegate (falling back to the built-in kernels when it refuses a
    graph); BUILTIN runs the built-in optimized kernels with no default delegate; REFERENCE
    runs the reference kernels (`BUILTIN_REF`), the ones TFLite-Micro matches bit for bit.
    """

    XNNPACK = "xnnpack"
    BUILTIN = "builtin"
    REFERENCE = "reference"

    def resolver_name(self) -> str:
        """The `OpResolverType` member that selects these kernels."""
        return {
            Kernels.XNNPACK: "AUTO",
            Kernels.BUILTIN: "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
            Kernels.REFERENCE: "BUILTIN_REF",
        }[self]


def _resolver(interpreter_cls: Any, kernels: Kernels) -> Any:
    """The op resolver value for `kernels`, from the interpreter's own package (LiteRT's, or
    TensorFlow's for a Flex model)."""
    resolvers: Any
    if interpreter_cls is _litert_interpreter():
        from ai_edge_litert.interpreter import OpResolverType

        resolvers = OpResolverType
    else:
        import tensorflow as tf

        resolvers = tf.lite.experimental.OpResolverType
    return getattr(resolvers, kernels.resolver_name())


def model_input(images: np.ndarray, preset: Preset | None) -> np.ndarray:
    """What every runner feeds its model: the preset applied to decoded uint8 pixels when a
    runner has one, the images as float32 otherwise (preprocessed already)."""
    if preset is None:
        return np.asarray(images, dtype=np.float32)
    from core.inputs.presets import apply_preset

    return np.asarray(apply_preset(images, preset), dtype=np.float32)


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


class Runner:
    """What every runner offers: `infer` on one batch of images, `outputs` streamed over
    batches, the preset applied on the way in (`model_input`). A runner elsewhere (a device
    over adb, a vendor cloud) would subclass this and implement `infer`."""

    preset: Preset | None = None

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """The float32 model input for `images` (`model_input`)."""
        return model_input(images, self.preset)

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Raw float32 outputs [N, C] for a batch of images."""
        raise NotImplementedError

    def outputs(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """`infer` on each batch in turn, as they come (a streamed data set stays on disk)."""
        for images in batches:
            yield self.infer(images)


class TFLiteRunner(Runner):
    """One LiteRT interpreter, prepared for float32 images at batch 1 or on batches.

    Inputs are quantized and outputs dequantized with the tensors' own (scale, zero_point),
    never with a hard-coded formula, so int8, uint8 and float I/O all compare as float.
    `batch` above 1 is a wish: it holds only when the model's batch dimension is dynamic and
    the interpreter prepares at that size; otherwise the runner runs one image per invoke
    (`self.batch` says which). `kernels` chooses XNNPACK, the built-in or the reference
    kernels; `preset`, when given, makes `infer` and `outputs` take decoded uint8 pixels and
    preprocess them here; `keep_tensors` keeps every intermediate tensor after an invoke (for
    per-layer reads: `tensor_details`, `tensor`).
    """

    def __init__(
        self,
        tflite: bytes,
        *,
        threads: int | None = None,
        name: str = "model",
        batch: int = 1,
        kernels: Kernels = Kernels.XNNPACK,
        preset: Preset | str | None = None,
        keep_tensors: bool = False,
    ) -> None:
        check_tflite_bytes(tflite, name=name)
        self.name = name
        self.kernels = Kernels(kernels)
        self.preset = None if preset is None else Preset(preset)
        self._keep_tensors = keep_tensors
        if flex_ops(tflite):
            # ai_edge_litert has no Flex delegate; TensorFlow's interpreter links it in.
            import tensorflow as tf

            interpreter_cls: Any = tf.lite.Interpreter
        else:
            interpreter_cls = _litert_interpreter()
        self.xnnpack = self.kernels is Kernels.XNNPACK
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
        interpreter = self._open(interpreter_cls, tflite, threads, name, kernels=self.kernels)
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
        self._interpreter = self._open(interpreter_cls, tflite, threads, name, kernels=self.kernels)
        try:
            self._allocate(name)
        except (ValueError, RuntimeError) as exc:
            if (
                "XNNPACK" not in str(exc)
                or self.kernels is not Kernels.XNNPACK
                or interpreter_cls is not _litert_interpreter()
            ):
                raise _refused(name, tflite, exc) from None
            # XNNPACK refuses some quantized graphs (e.g. a tiny activation scale) that the
            # built-in kernels run; fall back to them rather than lose the variant.
            self._interpreter = self._open(
                interpreter_cls, tflite, threads, name, kernels=Kernels.BUILTIN
            )
            self.xnnpack = False
            try:
                self._allocate(name)
            except (ValueError, RuntimeError) as again:
                raise _refused(name, tflite, again) from None

    def _open(
        self,
        interpreter_cls: Any,
        tflite: bytes,
        threads: int | None,
        name: str,
        *,
        kernels: Kernels,
    ) -> Any:
        kwargs: dict[str, Any] = {"model_content": tflite, "num_threads": threads}
        if kernels is not Kernels.XNNPACK:
            kwargs["experimental_op_resolver_type"] = _resolver(interpreter_cls, kernels)
        if self._keep_tensors:
            kwargs["experimental_preserve_all_tensors"] = True
        try:
            with warnings.catch_warnings():  # "for debugging only": callers bound the images
                warnings.simplefilter("ignore", UserWarning)
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

    def input_tensor(self, floats: np.ndarray) -> np.ndarray:
        """The tensor the interpreter is fed for preprocessed float32 images: quantized with
        the input's own (scale, zero point) when the input is integer. Quantize once and feed
        the same tensor to every runtime, or rounding ties look like kernel differences."""
        x = np.asarray(floats, dtype=np.float32)
        if self.input_dtype != np.float32:
            scale, zero_point = self.input_quantization
            return quantize(x, scale, zero_point, self.input_dtype)
        return x

    def _feed(self, floats: np.ndarray) -> None:
        tensor = self.input_tensor(floats).reshape(self.input_shape)
        self._interpreter.set_tensor(self._input["index"], tensor)

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

    def _invoke(self, floats: np.ndarray) -> np.ndarray:
        """One invoke on preprocessed images (as many as the interpreter is prepared for)."""
        self._feed(floats)
        self._interpreter.invoke()
        return self._read()

    def run(self, image: np.ndarray) -> np.ndarray:
        """Float32 outputs [C] for one image [H,W,C] or [1,H,W,C]."""
        return self.infer(np.asarray(image).reshape(1, *self.input_shape[1:])).reshape(-1)

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Float32 outputs [N, C] for images [N,H,W,C], `self.batch` per invoke.

        The images are decoded uint8 pixels when the runner has a preset, preprocessed float32
        otherwise. A batch-1 runner invokes once per image. A batched runner feeds up to
        `self.batch` images per invoke and re-prepares only when a chunk has another size
        (the last one).
        """
        floats = self.prepare(images)
        if self.batch == 1:
            return np.concatenate([self._invoke(image[None]) for image in floats])
        rows: list[np.ndarray] = []
        for start in range(0, len(floats), self.batch):
            chunk = floats[start : start + self.batch]
            if len(chunk) != self.input_shape[0]:
                self._resize_batch(len(chunk))
            rows.append(self._invoke(chunk))
        return np.concatenate(rows)

    def timed_invoke(self, image: np.ndarray) -> Callable[[], None]:
        """An invoke with `image` already set, for latency runs (the same input every time).

        Latency is per image at batch 1, so a batched runner refuses to time.
        """
        if self.batch != 1:
            raise ValueError("latency is measured at batch 1; time with a runner of batch=1")
        self._feed(self.prepare(np.asarray(image)[None]))
        invoke: Callable[[], None] = self._interpreter.invoke
        return invoke

    def tensor_details(self) -> list[dict[str, Any]]:
        """The interpreter's tensor details (every tensor, for per-layer reads)."""
        details: list[dict[str, Any]] = self._interpreter.get_tensor_details()
        return details

    def tensor(self, index: int) -> np.ndarray:
        """A tensor's raw values after the last invoke (kept when `keep_tensors` is set)."""
        return np.asarray(self._interpreter.get_tensor(index))

    def describe(self) -> dict[str, Any]:
        """Input/output types and quantization, for the report."""
        return {
            "input_dtype": self.input_dtype.name,
            "input_quantization": list(self.input_quantization),
            "output_dtype": self.output_dtype.name,
            "output_quantization": list(self.output_quantization),
            "delegate": self._delegate(),
        }

    def _delegate(self) -> str:
        if self.kernels is Kernels.XNNPACK:
            return "xnnpack" if self.xnnpack else "none (XNNPACK refused the model)"
        return f"none ({self.kernels.value} kernels)"


class Servable(Protocol):
    """What `OriginalRunner` needs of a loaded original (core.engine.models.ReferenceModel)."""

    @property
    def serve(self) -> Callable[..., Any]:
        """The traced serving function (a tf.function), batched."""

    @property
    def concrete_function(self) -> Any:
        """Its concrete function, the cheapest call to time."""


class OriginalRunner(Runner):
    """The original (TensorFlow/Keras) model run through its serving function, never
    `model.predict` (DESIGN §6), with the same preset handling as `TFLiteRunner`."""

    def __init__(self, model: Servable, *, preset: Preset | str | None = None) -> None:
        self.model = model
        self.preset = None if preset is None else Preset(preset)

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Raw outputs (probabilities or logits) float32 [N, C] for a batch of images."""
        import tensorflow as tf

        out = self.model.serve(tf.constant(self.prepare(images), dtype=tf.float32))
        return np.asarray(out, dtype=np.float32)

    def timed_call(self, image: np.ndarray) -> Callable[[], object]:
        """The concrete serving function's call on one image, its input built once, for
        latency runs (no tf.function dispatch in the timed call)."""
        import tensorflow as tf

        x = tf.constant(self.prepare(np.asarray(image)[None]), dtype=tf.float32)
        serve = self.model.concrete_function
        return lambda: serve(x)


TFLM_MODULE = "tflite_micro.python.tflite_micro.runtime"
TFLM_INSTALL = (
    "TFLite-Micro's Python runtime is not installed; install it with "
    "`pip install --pre tflite-micro` to evaluate on TFLite-Micro"
)


def tflm_available() -> str | None:
    """None when TFLite-Micro's Python runtime imports; otherwise the one line saying how to
    install it."""
    import importlib

    try:
        importlib.import_module(TFLM_MODULE)
    except ImportError:
        return TFLM_INSTALL
    return None


class TFLMRunner(Runner):
    """A `.tflite` run by TFLite-Micro's interpreter, one image per invoke.

    The input tensor is quantized, and the output dequantized, by a LiteRT runner of the same
    file (reference kernels, the ones TFLite-Micro matches): the identical integer tensor goes
    to both runtimes, so a rounding tie never looks like a kernel difference.
    """

    def __init__(
        self,
        tflite: bytes,
        *,
        name: str = "model",
        preset: Preset | str | None = None,
        arena_size: int | None = None,
    ) -> None:
        import contextlib
        import importlib
        import io

        self.name = name
        self._io = TFLiteRunner(tflite, threads=1, name=name, kernels=Kernels.REFERENCE)
        self.preset = None if preset is None else Preset(preset)
        tflm = importlib.import_module(TFLM_MODULE)
        try:
            # Its constructor prints to stdout; the worker's stdout is not for that.
            with contextlib.redirect_stdout(io.StringIO()):
                self._interpreter = tflm.Interpreter.from_bytes(tflite, arena_size=arena_size)
        except (ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise InvalidTFLiteModel(f"TFLite-Micro cannot run {name} ({first})") from None

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Float32 outputs [N, C], one invoke per image."""
        rows = []
        for image in self.prepare(images):
            tensor = self._io.input_tensor(image[None]).reshape(self._io.input_shape)
            try:
                self._interpreter.set_input(tensor, 0)
                self._interpreter.invoke()
            except (ValueError, RuntimeError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise InvalidTFLiteModel(f"TFLite-Micro failed on {self.name} ({first})") from None
            out = np.asarray(self._interpreter.get_output(0))
            if self._io.output_dtype != np.float32:
                scale, zero_point = self._io.output_quantization
                out = dequantize(out, scale, zero_point)
            rows.append(np.asarray(out, dtype=np.float32).reshape(1, -1))
        return np.concatenate(rows)
