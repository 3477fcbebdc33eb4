"""What a `.tflite` flatbuffer holds, read from its bytes without an interpreter."""

from __future__ import annotations

import re
from dataclasses import dataclass


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


@dataclass(frozen=True)
class IntegerOnlyCheck:
    """Whether every op of a model computes in integers, as an NPU, an Edge TPU or a
    microcontroller needs. `float_io` says whether the graph's own inputs or outputs are float:
    the QUANTIZE and DEQUANTIZE at those edges run on the host CPU on every such target, so they
    are reported but do not make a model non-integer."""

    integer_only: bool
    float_io: bool
    blockers: tuple[str, ...]  # "CONV_2D conv2d_1 (FLOAT32)": each op that computes in float

    def to_dict(self) -> dict[str, object]:
        return {
            "integer_only": self.integer_only,
            "float_io": self.float_io,
            "blockers": list(self.blockers),
        }


_FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16")


def integer_only(tflite: bytes) -> IntegerOnlyCheck:
    """Checks every op's input and output tensor types in the flatbuffer (not only outputs: an
    ARG_MAX over a float tensor returns integers but computes in float). Casts are never
    blockers on their own: a cast that feeds a float op leaves that op to be named."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    names = _op_names()
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    graph = model.subgraphs[0]

    def kind(index: int) -> str:
        return str(type_names.get(graph.tensors[index].type, "UNKNOWN"))

    blockers: list[str] = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        op_type = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        if op_type in _CASTS:
            continue
        tensors = [i for i in list(op.inputs) + list(op.outputs) if i >= 0]
        floats = sorted({kind(i) for i in tensors if kind(i) in _FLOAT_TYPES})
        if floats:
            name = _text(graph.tensors[op.outputs[0]].name) if len(op.outputs) else "?"
            blockers.append(f"{op_type} {name} ({', '.join(floats)})")
    edges = [i for i in list(graph.inputs) + list(graph.outputs) if i >= 0]
    float_io = any(kind(i) in _FLOAT_TYPES for i in edges)
    return IntegerOnlyCheck(not blockers, float_io, tuple(blockers))


def operators(tflite: bytes) -> list[tuple[str, tuple[str, ...]]]:
    """(op type, its output tensor names) of every op of the main subgraph, in graph order: one
    entry per op, where `op_outputs` has one per output."""
    from ai_edge_litert.tools import flatbuffer_utils

    names = _op_names()
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    graph = model.subgraphs[0]
    found: list[tuple[str, tuple[str, ...]]] = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        op_type = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        found.append((op_type, tuple(_text(graph.tensors[i].name) for i in op.outputs)))
    return found
