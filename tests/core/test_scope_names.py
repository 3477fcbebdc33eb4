"""Keep-float by name on a model whose scopes are bare names (a plain tf.Module, as tf.keras 2
exports are): `conv2d` and `conv2d_1` are two layers, and `keep=conv2d` keeps exactly the first.
What was kept is read here from the `.tflite` op types, independently of the engine, and
report.json's `float_ops` says the same."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.core.test_cli import run_cli
from tests.core.test_selective import _ops, _write_images

pytestmark = pytest.mark.slow


def build_bare_scope_module(path: Path) -> Path:
    """A SavedModel of a tf.Module: two convolutions and a classifier under the name scopes
    net/conv2d, net/conv2d_1 and net/dense (no Keras `_<n>` suffixes)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)

    class Net(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="net")
            self.k0 = tf.Variable(rng.normal(0, 0.5, (3, 3, 3, 8)).astype("float32"), name="k0")
            self.k1 = tf.Variable(rng.normal(0, 0.5, (1, 1, 8, 8)).astype("float32"), name="k1")
            self.w = tf.Variable(rng.normal(0, 0.5, (8, 4)).astype("float32"), name="w")

        @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
        def __call__(self, x: tf.Tensor) -> tf.Tensor:
            with tf.name_scope("net"):
                with tf.name_scope("conv2d"):
                    x = tf.nn.relu(tf.nn.conv2d(x, self.k0, 1, "SAME"))
                with tf.name_scope("conv2d_1"):
                    x = tf.nn.relu(tf.nn.conv2d(x, self.k1, 1, "SAME"))
                with tf.name_scope("dense"):
                    x = tf.nn.softmax(tf.matmul(tf.reduce_mean(x, [1, 2]), self.w))
            return x

    net = Net()
    tf.saved_model.save(net, str(path), signatures=net.__call__)
    return path


def _scope(tensor: str) -> str:
    """The scope under net/ a tensor name names (fused names: the last part's)."""
    return tensor.split(";")[-1].split("/")[1]


def test_keep_float_by_a_bare_name_keeps_exactly_that_op(tmp_path: Path) -> None:
    model = build_bare_scope_module(tmp_path / "model")
    data = _write_images(tmp_path / "data")
    out = tmp_path / "out"
    done = run_cli(
        "run",
        str(model),
        "--data",
        str(data),
        "--modes",
        "int8,int8:keep=conv2d",
        "--backend",
        "both",  # the converter's denylist and the quantizer's recipe regex alike
        "--preprocess",
        "unit",
        "--latency-runs",
        "3",
        "--out",
        str(out),
        home=tmp_path,
    )
    assert done.returncode in (0, 1), done.stderr[-2000:]
    by_name = {v["name"]: v for v in json.loads((out / "report.json").read_text())["variants"]}
    for plain_name, kept_name in (("int8", "int8:keep=conv2d"), ("int8_q", "int8_q:keep=conv2d")):
        # Independently, from the flatbuffer: which conv computes in float.
        convs = {
            _scope(tensor): output
            for op, output, _, tensor in _ops(
                (out / f"{by_name[kept_name]['file_id']}.tflite").read_bytes()
            )
            if op == "CONV_2D"
        }
        assert convs == {"conv2d": "FLOAT32", "conv2d_1": "INT8"}, kept_name
        plain = {
            _scope(tensor): output
            for op, output, _, tensor in _ops((out / f"{plain_name}.tflite").read_bytes())
            if op == "CONV_2D"
        }
        assert plain == {"conv2d": "INT8", "conv2d_1": "INT8"}, plain_name
        # report.json records the ops kept in float, for every variant.
        kept = by_name[kept_name]["float_ops"]
        assert [(o["op"], _scope(o["tensor"])) for o in kept] == [("CONV_2D", "conv2d")]
        assert by_name[plain_name]["float_ops"] == []
        assert any("raw op scopes" in w for w in by_name[kept_name]["warnings"])
    # The per-layer table names both convolutions by their own names (int8 flips none of these
    # images, so its table is made when export asks for it).
    exported = run_cli("export", str(out), home=tmp_path)
    assert exported.returncode == 0, exported.stderr[-2000:]
    with (out / "int8.layers.csv").open(encoding="utf-8") as f:
        layers = {row["layer"] for row in csv.DictReader(f)}
    assert {"conv2d", "conv2d_1"} <= layers
