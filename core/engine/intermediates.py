"""Every intermediate tensor of a TFLite model, read image by image.

The one LiteRT interpreter the per-layer tools share: the diagnosis's tensor comparison
(core.engine.diagnose) and the layer details' activation histograms
(core.engine.layer_details). It is built once per model, not once per image, because with every
tensor preserved building it costs more than running it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.engine.tensors import dequantize, dequantize_per_channel


class IntermediateTensors:
    """One model in LiteRT with every intermediate tensor kept after each invoke."""

    def __init__(self, tflite: bytes, *, xnnpack: bool = True) -> None:
        """`xnnpack=False` runs the built-in kernels with no default delegate: XNNPACK fuses
        ops and may leave the tensors inside its fused nodes unwritten."""
        from core.engine.runtime import Kernels, TFLiteRunner

        # Callers bound the image count: with every tensor kept, LiteRT warns "debugging only".
        self._runner = TFLiteRunner(
            tflite,
            threads=1,
            name="model",
            kernels=Kernels.XNNPACK if xnnpack else Kernels.BUILTIN,
            keep_tensors=True,
        )
        # Named, non-empty tensors only: unnamed ones are scratch space.
        self.details: dict[str, dict[str, Any]] = {
            d["name"]: d for d in self._runner.tensor_details() if d["name"] and all(d["shape"])
        }

    def run(self, image: np.ndarray) -> None:
        """Invoke on one preprocessed float image [H,W,C]; an integer input is quantized as the
        run's evaluation quantizes it (the same runner)."""
        self._runner.run(image)

    def size(self, name: str) -> int:
        """Elements of a tensor per image."""
        return int(np.prod(self.details[name]["shape"]))

    def values(self, name: str, *, at: np.ndarray | None = None) -> np.ndarray:
        """A tensor's values after the last run, flat float32, dequantized when quantized;
        only the flat positions `at` when given (dequantizing what is read, not the rest)."""
        detail = self.details[name]
        raw = self._runner.tensor(detail["index"])
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
