"""The model work: loading, converting, quantizing, running and timing, as pipeline stages.

Only this package imports TensorFlow or LiteRT, and only inside functions; only the worker
imports it."""
