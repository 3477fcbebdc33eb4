"""Load the reference model safely, read its signature, and predict in batches."""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UnsafeModel, UnsupportedModel
from core.metrics.agreement import output_form, probability_columns
from core.types import ModelSignature

# Graph ops that touch the file system or run code outside the graph. A SavedModel is a
# program (TensorFlow's security policy); one holding these is refused unless trusted.
DANGEROUS_OPS = frozenset(
    {
        "ReadFile",
        "WriteFile",
        "MatchingFiles",
        "PyFunc",
        "PyFuncStateless",
        "EagerPyFunc",
        "Save",
        "SaveV2",
        "SaveSlices",
        "RestoreV2",
        "ImmutableConst",
        "DeleteFile",
        "CreateSummaryFileWriter",
        "WriteSummary",
        "PrintV2",
    }
)
KERAS_FORMAT = "keras"
SAVED_MODEL_FORMAT = "saved_model"


def detect_format(path: Path, *, trusted: bool = False) -> str:
    """Return "keras" or "saved_model" for a model path, or explain what it should be.

    A legacy `.h5` file is "keras" in trusted mode (Keras loads it without safe mode).

    Raises:
        UnsupportedModel: the path is missing or is not a model format QuantLens loads.
        UnsafeModel: a legacy `.h5` file and `trusted` is False.
    """
    if not path.exists():
        raise UnsupportedModel(
            f"model path {path} does not exist; give a SavedModel folder or a .keras file"
        )
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return SAVED_MODEL_FORMAT
        raise UnsupportedModel(
            f"{path} is a folder without saved_model.pb; give a SavedModel folder or a .keras file"
        )
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        if trusted:
            return KERAS_FORMAT
        raise UnsafeModel(
            f"{path.name} is a legacy HDF5 model, which cannot be loaded in safe mode; "
            "re-save it as .keras (model.save('model.keras')) or enable trusted mode"
        )
    if suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise UnsupportedModel(
                f"{path.name} is not a valid .keras file (it is not a zip archive); re-save the model "
                "with model.save('model.keras')"
            )
        return KERAS_FORMAT
    raise UnsupportedModel(
        f"{path.name} is not a model QuantLens loads; give a SavedModel folder, a .keras file, "
        "or a .zip holding a SavedModel"
    )


def model_files(path: Path) -> list[Path]:
    """The files that make up a model, in a stable order."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def model_size_bytes(path: Path) -> int:
    """Reference size (DESIGN §6): the .keras file's bytes or the SavedModel folder's total."""
    return sum(p.stat().st_size for p in model_files(path))


def model_sha256(path: Path) -> str:
    """Content hash of a model file or folder (relative names and bytes), for caches and history."""
    digest = hashlib.sha256()
    for file in model_files(path):
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def serving_ops(path: Path) -> set[str]:
    """Op types reachable from a SavedModel's signatures, read from the proto without loading it.

    Walks back from each signature's output tensors through the graph and into every function
    those nodes call. The saver functions (checkpoint save/restore) are not reachable from a
    signature, so their legitimate file I/O does not count against the model.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
    except Exception as exc:  # a damaged proto surfaces as a DecodeError subclass
        raise UnsupportedModel(
            f"{path / 'saved_model.pb'} cannot be parsed ({type(exc).__name__}); re-export the SavedModel"
        ) from None
    ops: set[str] = set()
    for meta in proto.meta_graphs:
        functions = {f.signature.name: f for f in meta.graph_def.library.function}
        nodes = {n.name: n for n in meta.graph_def.node}
        pending_nodes = [
            tensor.name.split(":")[0]
            for sig in meta.signature_def.values()
            for tensor in sig.outputs.values()
        ]
        pending_functions: list[str] = []
        seen_nodes: set[str] = set()
        seen_functions: set[str] = set()

        def visit(
            node: Any, functions: dict[str, Any] = functions, queue: list[str] = pending_functions
        ) -> None:
            ops.add(node.op)
            called = [node.op] + [a.func.name for a in node.attr.values() if a.HasField("func")]
            queue.extend(c for c in called if c in functions)

        while pending_nodes or pending_functions:
            if pending_nodes:
                name = pending_nodes.pop()
                if name in seen_nodes or name not in nodes:
                    continue
                seen_nodes.add(name)
                visit(nodes[name])
                pending_nodes.extend(i.lstrip("^").split(":")[0] for i in nodes[name].input)
            else:
                fname = pending_functions.pop()
                if fname in seen_functions:
                    continue
                seen_functions.add(fname)
                for node in functions[fname].node_def:
                    visit(node)
    return ops


def unsafe_ops(path: Path) -> list[str]:
    """Dangerous op types (file system, processes, Python callbacks) a SavedModel's signatures run."""
    return sorted(serving_ops(path) & DANGEROUS_OPS)


@dataclass
class ReferenceModel:
    """A loaded reference model: its signature, a batched serving function, and its source.

    Holds TensorFlow objects, so it never leaves the worker process.
    """

    path: Path
    signature: ModelSignature
    serve: Callable[[Any], Any]  # tf.Tensor [B,H,W,C] -> tf.Tensor [B,C]
    concrete_function: Any  # the traced serving function, for conversion and latency
    trackable: Any  # the object owning the function's variables

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Raw outputs (probabilities or logits) for a preprocessed float32 batch, through the
        serving function (run by core.engine.runtime.OriginalRunner, the one place it is called)."""
        from core.engine.runtime import OriginalRunner

        return OriginalRunner(self).infer(batch)


def _keras_error_message(path: Path, exc: Exception) -> str:
    text = str(exc)
    layer = re.search(r"`(\w+)` layer", text)
    if "Lambda" in text or ("lambda" in text.lower() and "safe_mode" in text):
        return (
            f"{path.name} has a Lambda layer, which runs arbitrary Python code when loaded; "
            "refused in safe mode. Replace it with built-in layers, or enable trusted mode if you "
            "trust the file's author"
        )
    unknown = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
    if unknown:
        # Keras imports classes only from its own packages, so trusted mode cannot help here;
        # a SavedModel export carries the graph and needs no Python class.
        return (
            f"{path.name} needs the custom object '{unknown.group(1)}', which is not registered "
            "and QuantLens does not import model code; export the model as a SavedModel "
            "(model.export(dir)) or rebuild it with built-in layers"
        )
    if layer:
        return f"{path.name} cannot be loaded: layer `{layer.group(1)}` is refused in safe mode; enable trusted mode only if you trust the file"
    first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"{path.name} cannot be loaded as a Keras model ({first_line[:200]}); re-save it with model.save('model.keras')"


def _load_keras(path: Path, *, trusted: bool) -> Any:
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not trusted)
    except (ValueError, TypeError, KeyError, OSError, AttributeError, zipfile.BadZipFile) as exc:
        is_safety = "safe_mode" in str(exc) or "Could not locate" in str(exc)
        cls = UnsafeModel if is_safety and not trusted else UnsupportedModel
        raise cls(_keras_error_message(path, exc)) from None


def _pick_signature(signatures: dict[str, Any], path: Path, key: str | None) -> str:
    keys = sorted(signatures)
    if key is not None:
        if key not in signatures:
            raise UnsupportedModel(
                f"{path.name} has no signature {key!r}; choose one of {', '.join(keys)}"
            )
        return key
    if not keys:
        raise UnsupportedModel(
            f"{path.name} has no serving signature; re-export it with model.export(dir) or "
            "tf.saved_model.save(model, dir, signatures=...)"
        )
    if "serving_default" in signatures:
        return "serving_default"
    if len(keys) == 1:
        return keys[0]
    raise UnsupportedModel(
        f"{path.name} has {len(keys)} signatures and none is serving_default; choose one of "
        f"{', '.join(keys)} (--signature NAME)"
    )


def _check_image_input(
    shape: tuple[int | None, ...], name: str, path: Path, input_size: tuple[int, int] | None
) -> tuple[int, int, int]:
    if len(shape) != 4:
        raise UnsupportedModel(
            f"input '{name}' of {path.name} has shape {list(shape)}, not an image batch [N, H, W, C]; "
            "QuantLens compares image classifiers"
        )
    height, width, channels = shape[1], shape[2], shape[3]
    if channels not in (1, 3):
        raise UnsupportedModel(
            f"input '{name}' of {path.name} has {channels} channels; QuantLens feeds 1 (grayscale) "
            "or 3 (RGB) channels in NHWC layout"
        )
    if height is None or width is None:
        if input_size is None:
            raise UnsupportedModel(
                f"{path.name} accepts any image size ({list(shape)}); give the size to evaluate at "
                "with --input-size HxW (e.g. 224x224)"
            )
        height, width = input_size
    return int(height), int(width), int(channels)


def _single(items: dict[str, Any], what: str, path: Path) -> tuple[str, Any]:
    if len(items) != 1:
        names = ", ".join(sorted(items))
        raise UnsupportedModel(
            f"{path.name} has {len(items)} {what}s ({names}); QuantLens compares single-input, "
            f"single-output classifiers: export a signature with one {what}"
        )
    return next(iter(items.items()))


def _output_is_probabilities(
    serve: Callable[[Any], Any], height: int, width: int, channels: int, name: str
) -> bool:
    """Whether the model emits probabilities, from a few random images; a multi-label head
    (independent sigmoids) is refused here, before any work.

    Raises:
        UnsupportedModel: the output is several scores in [0, 1] that do not sum to 1.
    """
    import tensorflow as tf

    rng = np.random.default_rng(0)
    probe = rng.uniform(-1, 1, size=(4, height, width, channels)).astype(np.float32)
    form = output_form(np.asarray(serve(tf.constant(probe)), dtype=np.float64))
    if form.multi_label:
        raise UnsupportedModel(
            f"{name} outputs {form.columns} independent scores in [0, 1] that do not sum to 1 "
            "(a multi-label head); QuantLens judges single-label classifiers: end the model in "
            "a softmax, or give a two-class model one sigmoid output"
        )
    return form.probabilities


def load_reference(
    path: Path,
    *,
    trusted: bool = False,
    signature_key: str | None = None,
    input_size: tuple[int, int] | None = None,
) -> ReferenceModel:
    """Load a SavedModel folder or a `.keras` file as the reference model.

    Args:
        path: the model file or folder.
        trusted: allow Lambda layers, custom objects and file-system ops (the user vouches).
        signature_key: the SavedModel signature to serve; default serving_default or the only one.
        input_size: (height, width) for models whose spatial dimensions are None.

    Returns:
        The loaded model with its signature and a traced batched serving function.

    Raises:
        UnsupportedModel: not a model, or a signature QuantLens cannot drive.
        UnsafeModel: the model needs code execution and `trusted` is False.
    """
    import tensorflow as tf

    fmt = detect_format(path, trusted=trusted)
    if fmt == SAVED_MODEL_FORMAT:
        bad_ops = unsafe_ops(path)
        if bad_ops and not trusted:
            raise UnsafeModel(
                f"{path.name} runs file-system or process ops ({', '.join(bad_ops)}) in its serving "
                "graph; refused in safe mode. Enable trusted mode only if you trust the model's author"
            )
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # TF raises many types for broken SavedModels
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UnsupportedModel(
                f"{path.name} cannot be loaded as a SavedModel ({first}); re-export it"
            ) from None
        key = _pick_signature(dict(loaded.signatures), path, signature_key)
        function = loaded.signatures[key]
        input_name, spec = _single(function.structured_input_signature[1], "input", path)
        output_name, out_spec = _single(function.structured_outputs, "output", path)
        trackable = loaded
    else:
        model = _load_keras(path, trusted=trusted)
        inputs = list(model.inputs) if hasattr(model, "inputs") and model.inputs else []
        if len(inputs) != 1:
            raise UnsupportedModel(
                f"{path.name} has {len(inputs)} inputs; QuantLens compares single-input image classifiers"
            )
        outputs = list(model.outputs)
        if len(outputs) != 1:
            # Layer names (what the user chose), not Keras's generated tensor names.
            layer_names = getattr(model, "output_names", None) or [
                getattr(o, "name", "?") for o in outputs
            ]
            names = ", ".join(str(n) for n in layer_names)
            raise UnsupportedModel(
                f"{path.name} has {len(outputs)} outputs ({names}); QuantLens compares single-output "
                "classifiers: build a model with one output"
            )
        key = "serving_default"
        input_name = inputs[0].name
        output_name = outputs[0].name
        spec = tf.TensorSpec(tuple(inputs[0].shape), tf.as_dtype(inputs[0].dtype), name="input")
        out_spec = tf.TensorSpec(tuple(outputs[0].shape), tf.as_dtype(outputs[0].dtype))
        # Keras 3 variables are not trackables the converter can freeze: handed the model, it
        # keeps uninitialised resource variables (NaN outputs, READ_VARIABLE failing during
        # calibration). A module tracking their tf.Variable values lets it freeze the weights.
        trackable = tf.Module()
        trackable.tf_variables = [getattr(v, "value", v) for v in model.variables]
        trackable.keras_model = model

    shape = tuple(None if d is None else int(d) for d in spec.shape)
    height, width, channels = _check_image_input(shape, input_name, path, input_size)
    out_shape = tuple(out_spec.shape)
    if len(out_shape) != 2 or out_shape[-1] is None:
        raise UnsupportedModel(
            f"output '{output_name}' of {path.name} has shape {list(out_shape)}; QuantLens expects "
            "class scores [N, classes]"
        )
    if not spec.dtype.is_floating:
        raise UnsupportedModel(
            f"input '{input_name}' of {path.name} is {spec.dtype.name}; QuantLens feeds float32 "
            "images (export the model with a float input)"
        )
    output_columns = int(out_shape[-1])
    fixed = tf.TensorSpec((None, height, width, channels), tf.float32, name="input")

    if fmt == SAVED_MODEL_FORMAT:
        signature_fn = function

        @tf.function(input_signature=[fixed])  # type: ignore[untyped-decorator]
        def serve(x: Any) -> Any:
            return signature_fn(**{input_name: tf.cast(x, spec.dtype)})[output_name]

    else:

        @tf.function(input_signature=[fixed])  # type: ignore[untyped-decorator]
        def serve(x: Any) -> Any:
            return model(tf.cast(x, spec.dtype), training=False)

    concrete = serve.get_concrete_function()
    probabilities = _output_is_probabilities(serve, height, width, channels, path.name)
    signature = ModelSignature(
        format=fmt,
        input_shape=shape,
        input_dtype=spec.dtype.name,
        height=height,
        width=width,
        channels=channels,
        num_classes=probability_columns(output_columns),
        outputs_probabilities=probabilities,
        signature_key=key,
        input_name=input_name,
        output_name=output_name,
        output_columns=output_columns if output_columns == 1 else 0,
    )
    return ReferenceModel(
        path=path, signature=signature, serve=serve, concrete_function=concrete, trackable=trackable
    )


def keras_model_of(model: ReferenceModel) -> Any | None:
    """The Keras model behind a reference loaded from a `.keras` file; None for a SavedModel
    (its graph has no Keras layers to edit)."""
    return getattr(model.trackable, "keras_model", None)


def reference_from_keras(keras_model: Any, like: ReferenceModel) -> ReferenceModel:
    """A reference model serving `keras_model` (an edited clone of `like`'s Keras model, such as
    an equalized one) with `like`'s signature and input dtype, ready for the converter.

    The variables are tracked as load_reference tracks them, so the converter freezes them.
    """
    import tensorflow as tf

    signature = like.signature
    fixed = tf.TensorSpec(
        (None, signature.height, signature.width, signature.channels), tf.float32, name="input"
    )
    dtype = tf.as_dtype(signature.input_dtype)

    @tf.function(input_signature=[fixed])  # type: ignore[untyped-decorator]
    def serve(x: Any) -> Any:
        return keras_model(tf.cast(x, dtype), training=False)

    trackable = tf.Module()
    trackable.tf_variables = [getattr(v, "value", v) for v in keras_model.variables]
    trackable.keras_model = keras_model
    return ReferenceModel(
        path=like.path,
        signature=signature,
        serve=serve,
        concrete_function=serve.get_concrete_function(),
        trackable=trackable,
    )
