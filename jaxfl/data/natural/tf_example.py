"""``tf.train.Example`` without TensorFlow: the message definitions written out here and parsed
by the protobuf package (which tensorflow-datasets already installs).

TFF's SQLite files hold one serialized ``tf.train.Example`` per row. Its definition
(tensorflow/core/example/{example,feature}.proto) is small::

    message BytesList { repeated bytes value = 1; }
    message FloatList { repeated float value = 1 [packed = true]; }
    message Int64List { repeated int64 value = 1 [packed = true]; }
    message Feature { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                                   Int64List int64_list = 3; } }
    message Features { map<string, Feature> feature = 1; }
    message Example { Features features = 1; }

It is declared in a private descriptor pool (package ``jaxfl.tfexample``), so it never clashes
with TensorFlow's own registration when both are imported.
"""

from __future__ import annotations

import functools

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="jaxfl/tf_example.proto", package="jaxfl.tfexample", syntax="proto3"
    )

    def message(name, *fields, oneof=None, options=None):
        m = f.message_type.add(name=name)
        if oneof:
            m.oneof_decl.add(name=oneof)
        if options:
            m.options.map_entry = True
        for number, (field_name, kind, label, type_name) in enumerate(fields, start=1):
            field = m.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = f".jaxfl.tfexample.{type_name}"
            if oneof:
                field.oneof_index = 0
        return m

    rep, opt = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
    message("BytesList", ("value", _F.TYPE_BYTES, rep, None))
    message("FloatList", ("value", _F.TYPE_FLOAT, rep, None))
    message("Int64List", ("value", _F.TYPE_INT64, rep, None))
    message(
        "Feature",
        ("bytes_list", _F.TYPE_MESSAGE, opt, "BytesList"),
        ("float_list", _F.TYPE_MESSAGE, opt, "FloatList"),
        ("int64_list", _F.TYPE_MESSAGE, opt, "Int64List"),
        oneof="kind",
    )
    features = message("Features", ("feature", _F.TYPE_MESSAGE, rep, "Features.FeatureEntry"))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=opt)
    entry.field.add(
        name="value", number=2, type=_F.TYPE_MESSAGE, label=opt,
        type_name=".jaxfl.tfexample.Feature",
    )  # fmt: skip
    message("Example", ("features", _F.TYPE_MESSAGE, opt, "Features"))
    return f


@functools.cache
def example_class():
    """The ``Example`` message class (built once)."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("jaxfl.tfexample.Example"))


def decode(serialized: bytes) -> dict[str, np.ndarray | list[bytes]]:
    """One serialized ``tf.train.Example`` -> {feature: values}: an int64 or float32 array, or
    a list of byte strings."""
    example = example_class()()
    example.ParseFromString(serialized)
    out: dict[str, np.ndarray | list[bytes]] = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "int64_list":
            out[key] = np.asarray(feature.int64_list.value, dtype=np.int64)
        elif kind == "float_list":
            out[key] = np.asarray(feature.float_list.value, dtype=np.float32)
        elif kind == "bytes_list":
            out[key] = list(feature.bytes_list.value)
        else:
            out[key] = np.zeros(0, np.float32)
    return out


def encode(features: dict[str, np.ndarray | list[bytes] | bytes]) -> bytes:
    """{feature: values} -> a serialized ``tf.train.Example`` (integers as int64_list, floats
    as float_list, bytes as bytes_list), for writing TFF-format files."""
    example = example_class()()
    for key, values in features.items():
        feature = example.features.feature[key]
        if isinstance(values, bytes):
            feature.bytes_list.value.append(values)
        elif isinstance(values, list) and (not values or isinstance(values[0], bytes)):
            feature.bytes_list.value.extend(values)
        else:
            array = np.asarray(values).ravel()
            if np.issubdtype(array.dtype, np.integer):
                feature.int64_list.value.extend(array.tolist())
            else:
                feature.float_list.value.extend(array.astype(np.float32).tolist())
    return example.SerializeToString()
