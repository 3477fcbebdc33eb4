"""What a `.tflite` flatbuffer holds, read from its bytes without an interpreter."""

from __future__ import annotations

import re


def flex_ops(tflite: bytes) -> tuple[str, ...]:
    """Names of the TensorFlow (Flex) ops a converted model falls back to."""
    found = sorted({m.decode() for m in re.findall(rb"Flex([A-Z][A-Za-z0-9]+)", tflite)})
    return tuple(found)
