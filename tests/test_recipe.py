"""The recipe: every setting defined once, named recipes, flags that override them,
and a schedule that ends well whatever the run's length."""

import dataclasses

import pytest

from keras_adder.core.errors import KerasAdderError
from keras_adder.core.recipe import MAX_SEED, RECIPES, Recipe, make_recipe, settings
from keras_adder.fitting.run_directory import RunDirectory
from keras_adder.train import build_parser


def recipe_from_flags(*argv):
    args = build_parser().parse_args(list(argv))
    return make_recipe(args.recipe, **{name: getattr(args, name) for name, *_ in settings()})


def test_every_recipe_field_is_a_flag_with_help():
    parser = build_parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    for name, _, help_text, _ in settings():
        assert "--" + name.replace("_", "-") in flags
        assert help_text
    assert {f.name for f in dataclasses.fields(Recipe)} == {name for name, *_ in settings()}


def test_no_flag_gives_the_default_recipe():
    assert recipe_from_flags() == RECIPES["default"] == Recipe()


def test_flags_override_single_values_of_the_named_recipe():
    recipe = recipe_from_flags("--epochs", "3", "--no-augment", "--learning-rate", "0.01")
    assert (recipe.epochs, recipe.augment, recipe.learning_rate) == (3, False, 0.01)
    assert dataclasses.replace(recipe, epochs=36, augment=True, learning_rate=3e-3) == Recipe()


# The values README.md and docs/performance.md give for each recipe.
DOCUMENTED = {
    "default": {"epochs": 36, "learning_rate": 3e-3, "weight_decay": 0.05, "augment": True,
                "dropout": None, "batch_size": 128},
    "fast": {"epochs": 4, "learning_rate": 6e-3, "weight_decay": 1e-4, "augment": False,
             "dropout": 0.0, "batch_size": 128},
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_named_recipes_resolve_to_their_documented_values(name):
    recipe = recipe_from_flags("--recipe", name)
    assert recipe == RECIPES[name]
    assert {key: getattr(recipe, key) for key in DOCUMENTED[name]} == DOCUMENTED[name]


@pytest.mark.parametrize("epochs, steps, warmup", [
    (36, 430, 430),  # long runs: warm-up capped at one epoch
    (4, 430, 86),  # 5 % of the steps
    (1, 430, 22),
    (1, 4, 0),
])
def test_warmup_scales_with_the_run_and_never_exceeds_an_epoch(epochs, steps, warmup):
    assert Recipe(epochs=epochs).warmup_steps(steps) == warmup


@pytest.mark.parametrize("overrides, message", [
    ({"seed": -1}, "seed -1 is outside 0-4294967295"),
    ({"seed": MAX_SEED + 1}, "seed 4294967296 is outside 0-4294967295"),
    ({"epochs": 0}, "epochs 0 must be at least 1"),
    ({"learning_rate": float("nan")}, "learning rate nan must be a positive number"),
    ({"warmup_fraction": 1.0}, "warm-up fraction 1.0 must be at least 0 and below 1"),
    ({"dropout": 1.0}, "dropout 1.0 must be at least 0 and below 1"),
    ({"arch": "reference", "dropout": 0.2}, "dropout 0.2 needs the compact model"),
    ({"digit_loss_weight": 0.0, "sum_loss_weight": 0.0}, "not both 0"),
    ({"train_examples": 55_001}, "train examples 55001 is outside 1-55,000"),
    ({"arch": "resnet"}, "unknown architecture 'resnet'"),
])
def test_bad_values_are_refused_with_a_message(overrides, message):
    with pytest.raises(KerasAdderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_recipe(**overrides)


def test_unknown_recipe_is_refused():
    with pytest.raises(KerasAdderError, match="unknown recipe 'huge'"):
        make_recipe("huge")


def test_a_run_refuses_to_resume_with_another_recipe(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.start({"recipe": "default", **make_recipe("default").as_dict()})
    with pytest.raises(KerasAdderError) as error:
        run.check({"recipe": "fast", **make_recipe("fast").as_dict()})
    assert str(error.value) == (
        f"{tmp_path / 'run'} is a run started with other settings (recipe 'default' -> "
        "'fast'; epochs 36 -> 4; learning_rate 0.003 -> 0.006; weight_decay 0.05 -> 0.0001; "
        "augment True -> False; dropout None -> 0.0); "
        "resume it with the same ones or use a new --run-dir")
