"""QuantLens engine: convert TensorFlow image classifiers to TFLite and compare them with the original.

Importing this package stays light (no TensorFlow, no LiteRT, no Streamlit); the modules that
need a framework import it inside their functions.
"""

from core.errors import (
    ConversionFailed,
    DatasetError,
    ImageDecodeError,
    InvalidTFLiteModel,
    QuantLensError,
    StoreError,
    UnsafeArchive,
    UnsafeModel,
    UnsupportedModel,
)
from core.types import IOType, JobSpec, Mode, Preset, RunStatus, VariantSpec

__all__ = [
    "ConversionFailed",
    "DatasetError",
    "IOType",
    "ImageDecodeError",
    "InvalidTFLiteModel",
    "JobSpec",
    "Mode",
    "Preset",
    "QuantLensError",
    "RunStatus",
    "StoreError",
    "UnsafeArchive",
    "UnsafeModel",
    "UnsupportedModel",
    "VariantSpec",
]
