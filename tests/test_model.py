"""Both architectures: sizes, names, shapes, and that the sum head is a trained layer."""

import numpy as np
import pytest

from keras_adder.errors import KerasAdderError
from keras_adder.constants import ARCHITECTURES
from keras_adder.model import build_model
from keras_adder.train import main as train_main


def trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_reference_has_exactly_the_original_parameter_count():
    assert trainable_params(build_model("reference")) == 6_384_925


def test_compact_has_exactly_the_documented_parameter_count():
    model = build_model("compact")
    assert (model.count_params(), trainable_params(model)) == (28_343, 28_151)
    assert round(build_model("reference").count_params() / model.count_params()) == 225


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_named_inputs_and_outputs(arch):
    model = build_model(arch)
    assert sorted(t.name for t in model.inputs) == ["image", "number"]
    assert model.output_names == ["digit", "sum"]
    batch = {"image": np.random.rand(3, 28, 28, 1).astype("float32"),
             "number": np.eye(10, dtype="float32")[[0, 4, 9]]}
    outputs = model(batch)
    assert outputs["digit"].shape == (3, 10) and outputs["sum"].shape == (3, 19)
    for head in ("digit", "sum"):
        np.testing.assert_allclose(np.asarray(outputs[head]).sum(axis=1), 1.0, rtol=1e-5)


def test_compact_sum_head_depends_on_number_and_image():
    model = build_model("compact")
    images = np.random.default_rng(0).random((2, 28, 28, 1), dtype="float32")
    numbers = np.eye(10, dtype="float32")
    base = np.asarray(model({"image": images[:1], "number": numbers[:1]})["sum"])
    other_number = np.asarray(model({"image": images[:1], "number": numbers[5:6]})["sum"])
    other_image = np.asarray(model({"image": images[1:], "number": numbers[:1]})["sum"])
    assert not np.allclose(base, other_number) and not np.allclose(base, other_image)
    assert model.get_layer("sum_logits").trainable_weights


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(KerasAdderError, match="unknown architecture 'big'"):
        build_model("big")


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_dry_run_prints_summary(capsys, arch):
    train_main(["--dry-run", "--arch", arch])
    out = capsys.readouterr().out
    assert f"Total params: {build_model(arch).count_params():,}" in out
    assert "image" in out and "sum" in out
