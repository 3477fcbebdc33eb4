"""The one error family QuantLens raises on purpose; anything else is a bug."""


class QuantLensError(Exception):
    """Base of every expected failure. The message is one line: what is wrong, how to fix it."""


class UnsupportedModel(QuantLensError):
    """The model cannot be loaded or has a signature QuantLens cannot drive."""


class UnsafeModel(UnsupportedModel):
    """The model needs code execution (Lambda, custom objects, file ops) and trusted mode is off."""


class ConversionFailed(QuantLensError):
    """The TFLite converter refused the model for this mode."""


class DatasetError(QuantLensError):
    """The data set cannot be read, or holds no usable sample."""


class ImageDecodeError(QuantLensError):
    """One image cannot be decoded; the sample is skipped with this reason."""


class UnsafeArchive(QuantLensError):
    """A zip archive was refused before anything was extracted."""


class InvalidTFLiteModel(QuantLensError):
    """A .tflite file is empty, not a flatbuffer, truncated, or has unusable tensors."""


class StoreError(QuantLensError):
    """The run store cannot be opened or written."""
