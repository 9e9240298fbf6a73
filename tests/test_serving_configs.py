"""The TF Serving config examples in saved_models/, parsed the way the server parses
them: text protobuf into TF Serving's own config messages."""

from pathlib import Path

import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from keras_adder.core.constants import MAX_SERVING_BATCH

REPO = Path(__file__).resolve().parents[1]
SAVED_MODELS = REPO / "saved_models"

# tensorflow-serving-api ships no session_bundle_config_pb2, so BatchingParameters is
# declared here with the names, numbers and types of TF Serving's
# tensorflow_serving/servables/tensorflow/session_bundle_config.proto. A misspelt or
# mistyped field in the example then fails to parse, as it would in the server.
BATCHING_FIELDS = [
    ("max_batch_size", 1, "Int64Value"),
    ("batch_timeout_micros", 2, "Int64Value"),
    ("max_enqueued_batches", 3, "Int64Value"),
    ("num_batch_threads", 4, "Int64Value"),
    ("thread_pool_name", 5, "StringValue"),
    ("allowed_batch_sizes", 6, "repeated int64"),
    ("pad_variable_length_inputs", 7, "bool"),
    ("enable_large_batch_splitting", 8, "BoolValue"),
    ("max_execution_batch_size", 9, "Int64Value"),
]


def batching_parameters_class():
    """A message class for tensorflow.serving.BatchingParameters."""
    Field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="keras_adder_tests/session_bundle_config.proto", package="tensorflow.serving",
        syntax="proto3", dependency=[wrappers_pb2.DESCRIPTOR.name],
    )
    message = file.message_type.add(name="BatchingParameters")
    for name, number, kind in BATCHING_FIELDS:
        field = message.field.add(name=name, number=number, label=Field.LABEL_OPTIONAL)
        if kind == "repeated int64":
            field.label, field.type = Field.LABEL_REPEATED, Field.TYPE_INT64
        elif kind == "bool":
            field.type = Field.TYPE_BOOL
        else:
            field.type, field.type_name = Field.TYPE_MESSAGE, f".google.protobuf.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(file.SerializeToString())
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def parse_model_server_config(name):
    return text_format.Parse((SAVED_MODELS / name).read_text(),
                             model_server_config_pb2.ModelServerConfig())


def default_base_path():
    """Where TF Serving finds the default export dir, saved_models/ being mounted at /models."""
    from keras_adder.core.constants import DEFAULT_EXPORT_DIR as EXPORT_DIR

    assert Path(EXPORT_DIR).parent == Path("saved_models")
    return f"/models/{Path(EXPORT_DIR).name}"


def test_batching_parameters_fit_the_signature():
    params = text_format.Parse((SAVED_MODELS / "batching_parameters.txt").read_text(),
                               batching_parameters_class()())
    assert params.HasField("max_batch_size")
    assert 1 <= params.max_batch_size.value <= MAX_SERVING_BATCH
    assert params.num_batch_threads.value >= 1
    assert params.max_enqueued_batches.value >= 1
    assert params.batch_timeout_micros.value >= 0
    # TF Serving's own rules for these two, checked here rather than at server start.
    sizes = list(params.allowed_batch_sizes)
    assert not sizes or (sizes == sorted(set(sizes)) and sizes[-1] == params.max_batch_size.value)
    if params.enable_large_batch_splitting.value:
        assert params.max_execution_batch_size.value <= MAX_SERVING_BATCH


def test_batching_parameters_parser_refuses_unknown_fields():
    # The parser above is only worth something if it is strict.
    bad = "max_batch_size { value: 8 }\nmax_batch_sise { value: 8 }\n"
    with pytest.raises(text_format.ParseError, match="max_batch_sise"):
        text_format.Parse(bad, batching_parameters_class()())
    with pytest.raises(text_format.ParseError, match="max_batch_size"):
        text_format.Parse("max_batch_size: 8\n", batching_parameters_class()())


def test_models_config_serves_the_latest_default_export():
    (config,) = parse_model_server_config("models.config").model_config_list.config
    assert config.name == "keras_adder"
    assert config.base_path == default_base_path()
    assert config.model_platform == "tensorflow"
    # The highest version is served, so a promoted export goes live by itself.
    assert config.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert config.model_version_policy.latest.num_versions == 1
    assert not config.version_labels


def test_labels_config_points_stable_and_canary_at_served_versions():
    (config,) = parse_model_server_config("models.labels.config").model_config_list.config
    assert config.name == "keras_adder"
    assert config.base_path == default_base_path()
    assert config.model_platform == "tensorflow"
    assert config.model_version_policy.WhichOneof("policy_choice") == "specific"
    served = set(config.model_version_policy.specific.versions)
    labels = dict(config.version_labels)
    assert set(labels) == {"stable", "canary"}
    assert set(labels.values()) <= served
    assert labels["stable"] < labels["canary"]
