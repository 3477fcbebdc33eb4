"""What a `.tflite` flatbuffer holds, read from its bytes without an interpreter."""

from __future__ import annotations

import re


def flex_ops(tflite: bytes) -> tuple[str, ...]:
    """Names of the TensorFlow (Flex) ops a converted model falls back to."""
    found = sorted({m.decode() for m in re.findall(rb"Flex([A-Z][A-Za-z0-9]+)", tflite)})
    return tuple(found)


def tensor_shapes(tflite: bytes) -> list[tuple[int, ...]]:
    """The shape of every tensor of the main subgraph, by tensor index (as the flatbuffer stores
    it: a batch of one where the model takes any batch)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    return [tuple(int(d) for d in tensor.shape or ()) for tensor in model.subgraphs[0].tensors]


def _op_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def op_outputs(tflite: bytes) -> list[tuple[str, str]]:
    """(op type, output tensor name) of every op output of the main subgraph, in graph order."""
    from ai_edge_litert.tools import flatbuffer_utils

    names = _op_names()
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    graph = model.subgraphs[0]
    found: list[tuple[str, str]] = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        op_type = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        found.extend((op_type, _text(graph.tensors[i].name)) for i in op.outputs)
    return found


# Ops that only move values between float and integer: not an op "kept in float".
_CASTS = frozenset({"QUANTIZE", "DEQUANTIZE", "CAST"})


def float_ops(tflite: bytes) -> list[dict[str, str]]:
    """The ops that compute in float (their outputs are FLOAT32 tensors), read from the
    flatbuffer's tensor types; the casts between float and integer are left out. In an int8
    model these are the ops kept in float; in a float model, every op."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    names = _op_names()
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    graph = model.subgraphs[0]
    found: list[dict[str, str]] = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        op_type = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        outputs = [graph.tensors[i] for i in op.outputs]
        if op_type in _CASTS or not outputs:
            continue
        if all(t.type == schema.TensorType.FLOAT32 for t in outputs):
            found.append({"op": op_type, "tensor": _text(outputs[0].name)})
    return found


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value or "")
