"""Tests do not leak process-wide state into each other: what training sets for the
whole process (op determinism, seeds) is put back after each test (conftest.py).

The two tests run in this order: the first changes the state as a training run does,
the second must find it as the session started.
"""

from keras.src.backend.common import global_state
from tensorflow.python.eager import context
from tensorflow.python.framework import config

from keras_adder.core.recipe import Recipe
from keras_adder.fitting.keras_path import _seed_everything


def test_a_test_that_seeds_and_switches_op_determinism(initial_global_state):
    _seed_everything(Recipe(seed=7, deterministic=not initial_global_state.determinism))
    assert config.is_op_determinism_enabled() != initial_global_state.determinism
    assert global_state.get_global_attribute("global_random_seed") == 7
    assert context.global_seed() == 7


def test_finds_the_state_the_session_started_with(initial_global_state):
    assert config.is_op_determinism_enabled() == initial_global_state.determinism
    assert context.global_seed() == initial_global_state.tf_seed
    assert (global_state.get_global_attribute("global_random_seed")
            == initial_global_state.keras["global_random_seed"])
