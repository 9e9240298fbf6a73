"""Promotion: a run's SavedModel becomes the next served version only when it is at least
as good on the validation split (or when forced), so TF Serving never picks up a worse
model by itself."""

import shutil
from pathlib import Path

import pytest

from keras_adder.core.errors import KerasAdderError
from keras_adder.data.pipeline import split_validation
from keras_adder.model.architectures import build_model
from keras_adder.serving import promotion
from keras_adder.serving.saved_model import existing_versions, export_saved_model

SEED = 1337


@pytest.fixture(scope="module")
def validation(mnist):
    (train_images, train_labels), _ = mnist
    images, labels = split_validation(train_images, train_labels)[1]
    return images[:1000], labels[:1000]


@pytest.fixture(scope="module")
def weak_candidate(mnist, tmp_path_factory):
    """An untrained model's SavedModel: about 10 % on each head."""
    _, (test_images, _) = mnist
    return export_saved_model(build_model("compact"), tmp_path_factory.mktemp("weak"),
                              check_images=test_images[:8])


def serving(trained_run, tmp_path):
    base = tmp_path / "served"
    shutil.copytree(trained_run["export_path"], base / "1")
    return base


def test_a_weak_model_is_not_served(trained_run, weak_candidate, validation, tmp_path):
    base = serving(trained_run, tmp_path)
    promoted, why = promotion.decide(weak_candidate, base, policy="better",
                                     validation=validation, seed=SEED)
    assert not promoted
    assert why.startswith("not promoted (kept as a candidate): validation digit/sum")
    assert str(base / "1") in why


def test_a_better_model_is_served(trained_run, weak_candidate, validation, tmp_path):
    base = tmp_path / "served"
    shutil.copytree(weak_candidate, base / "1")
    promoted, why = promotion.decide(Path(trained_run["export_path"]), base, policy="better",
                                     validation=validation, seed=SEED)
    assert promoted and why.startswith("promoted: validation digit/sum")
    path = promotion.promote(Path(trained_run["export_path"]), base)
    assert path == base / "2" and list(existing_versions(base)) == [1, 2]
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]  # no staging left


def test_forcing_serves_even_a_weak_model(trained_run, weak_candidate, validation, tmp_path):
    base = serving(trained_run, tmp_path)
    promoted, why = promotion.decide(weak_candidate, base, policy="always",
                                     validation=validation, seed=SEED)
    assert promoted and why == "promoted because --promote always"


def test_an_empty_base_path_serves_the_first_model(weak_candidate, validation, tmp_path):
    promoted, why = promotion.decide(weak_candidate, tmp_path / "empty", policy="better",
                                     validation=validation, seed=SEED)
    assert promoted and "serves no version yet" in why


def test_an_unknown_policy_is_refused(weak_candidate, validation, tmp_path):
    with pytest.raises(KerasAdderError, match="unknown promotion policy 'sometimes'"):
        promotion.decide(weak_candidate, tmp_path, policy="sometimes",
                         validation=validation, seed=SEED)


def test_a_weak_run_stays_a_candidate_end_to_end(trained_run, data_dir, tmp_path, capsys):
    """A one-epoch run on 256 images against the served fixture model: not promoted."""
    from keras_adder.core.recipe import Recipe
    from keras_adder.fitting.keras_path import train

    base = serving(trained_run, tmp_path)
    metrics = train(Recipe(epochs=1, train_examples=256), data_dir=data_dir,
                    run_dir=tmp_path / "run", export_dir=base, verbose=0)
    assert metrics["export_path"] is None
    assert Path(metrics["candidate_path"]).parent == tmp_path / "run" / "saved_model"
    assert list(existing_versions(base)) == [1]
    assert "not promoted (kept as a candidate)" in capsys.readouterr().out
