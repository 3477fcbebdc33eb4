"""Every intermediate tensor of a TFLite model, read image by image.

The one LiteRT interpreter the per-layer tools share: the diagnosis's tensor comparison
(core.engine.diagnose) and the layer details' activation histograms
(core.engine.layer_details). It is built once per model, not once per image, because with every
tensor preserved building it costs more than running it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.engine.tensors import dequantize, dequantize_per_channel, quantize


class IntermediateTensors:
    """One model in LiteRT with every intermediate tensor kept after each invoke."""

    def __init__(self, tflite: bytes, *, xnnpack: bool = True) -> None:
        """`xnnpack=False` runs the built-in kernels with no default delegate: XNNPACK fuses
        ops and may leave the tensors inside its fused nodes unwritten."""
        import warnings

        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = (
            OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        with warnings.catch_warnings():  # "for debugging only": callers bound the image count
            warnings.simplefilter("ignore", UserWarning)
            self._interpreter = Interpreter(
                model_content=tflite,
                num_threads=1,
                experimental_preserve_all_tensors=True,
                experimental_op_resolver_type=resolver,
            )
        self._interpreter.allocate_tensors()
        # Named, non-empty tensors only: unnamed ones are scratch space.
        self.details: dict[str, dict[str, Any]] = {
            d["name"]: d
            for d in self._interpreter.get_tensor_details()
            if d["name"] and all(d["shape"])
        }
        self._input = self._interpreter.get_input_details()[0]

    def run(self, image: np.ndarray) -> None:
        """Invoke on one preprocessed float image [H,W,C]; an integer input is quantized as the
        run's evaluation quantizes it (core.engine.tensors.quantize)."""
        x = image[None].astype(np.float32)
        if np.dtype(self._input["dtype"]).kind in "iu":
            scale, zero_point = self._input["quantization"]
            x = quantize(x, scale, zero_point, self._input["dtype"])
        self._interpreter.set_tensor(self._input["index"], x)
        self._interpreter.invoke()

    def size(self, name: str) -> int:
        """Elements of a tensor per image."""
        return int(np.prod(self.details[name]["shape"]))

    def values(self, name: str, *, at: np.ndarray | None = None) -> np.ndarray:
        """A tensor's values after the last run, flat float32, dequantized when quantized;
        only the flat positions `at` when given (dequantizing what is read, not the rest)."""
        detail = self.details[name]
        raw = self._interpreter.get_tensor(detail["index"])
        if at is not None:
            if len(detail["quantization_parameters"]["scales"]) > 1:
                raise ValueError(f"{name} is quantized per channel; read it whole")
            raw = np.ravel(raw)[at]
        if raw.dtype.kind not in "iu":
            return np.ravel(raw).astype(np.float32, copy=False)
        params = detail["quantization_parameters"]
        scales, zero_points = params["scales"], params["zero_points"]
        if len(scales) == 1:  # activations: one scale and zero point per tensor
            return np.ravel(dequantize(raw, float(scales[0]), int(zero_points[0])))
        if len(scales) > 1:  # a kernel, per channel
            axis = int(params["quantized_dimension"])
            return np.ravel(dequantize_per_channel(raw, scales, zero_points, axis))
        return np.ravel(raw).astype(np.float32)  # an integer tensor that is not quantized
