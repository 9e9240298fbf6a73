"""The training losses of the first steps on 1 device or N logical CPU devices.

    python tests/mirrored_steps.py REPLICAS STEPS

prints JSON {variant: [loss of step 1, step 2, ...]} for the project's compact model,
fed by the project's pipeline, compiled as training does, with the global batch of
the default recipe. A separate process per replica count, because TensorFlow fixes
its logical devices when it starts. The variants isolate what differs between 1 and
N replicas:

    isolated    BatchNorm in inference mode and no dropout: the model's math does not
                depend on how the batch is split; only the order of the sums differs
    batchnorm   no dropout; BatchNorm trains (synchronized across replicas, as in
                training.py)
    full        the model as trained (dropout: each replica draws its own masks)
"""

import json
import sys

import keras
import tensorflow as tf

from keras_adder.core.recipe import Recipe
from keras_adder.data import pipeline as data
from keras_adder.fitting import distribution
from keras_adder.model.architectures import build_model, compile_model


class StepLosses(keras.callbacks.Callback):
    """Each step's own loss. Keras logs the mean over the epoch's steps so far, so
    step k's loss is k * mean_k - (k - 1) * mean_(k-1) (all batches are full)."""

    def __init__(self):
        super().__init__()
        self.means, self.losses = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.means.append(float(logs["loss"]))
        previous = self.means[-2] * (len(self.means) - 1) if len(self.means) > 1 else 0.0
        self.losses.append(self.means[-1] * len(self.means) - previous)


def adapt(model, variant):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and variant == "isolated":
            layer.trainable = False  # Keras 3: a frozen BatchNorm uses its moving statistics
        elif isinstance(layer, keras.layers.Dropout) and variant != "full":
            layer.rate = 0.0
    return model


def step_losses(strategy, recipe, batches, variant):
    keras.utils.set_random_seed(recipe.seed)
    with strategy.scope():
        model = distribution.synchronize_batch_norm(build_model(recipe.arch), strategy)
        model = compile_model(adapt(model, variant), recipe,
                              recipe.train_examples // recipe.batch_size)
    losses = StepLosses()
    model.fit(batches, epochs=1, steps_per_epoch=recipe.train_examples // recipe.batch_size,
              callbacks=[losses], verbose=0, shuffle=False)
    return losses.losses


def main(replicas, steps):
    strategy = distribution.choose_strategy(
        "mirrored" if replicas > 1 else "auto", replicas if replicas > 1 else None)
    tf.config.experimental.enable_op_determinism()
    recipe = Recipe(epochs=1, train_examples=steps * Recipe().batch_size)
    (images, labels), _ = data.load_mnist()
    batches = data.train_dataset(images[:recipe.train_examples], labels[:recipe.train_examples],
                                 batch_size=recipe.batch_size, seed=recipe.seed, epochs=1)
    print(json.dumps({variant: step_losses(strategy, recipe, batches, variant)
                      for variant in ("isolated", "batchnorm", "full")}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
