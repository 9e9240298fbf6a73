"""The two architectures, as Keras functional models with the same interface, and how
they are compiled.

Inputs:  "image"  float32 [N, 28, 28, 1] in [0, 1];  "number" float32 one-hot [N, 10].
Outputs: "digit"  softmax [N, 10];                  "sum"    softmax [N, 19].
"""

import keras
import numpy as np
from keras import layers

from keras_adder.core.constants import ARCHITECTURES, IMAGE_SIZE, NUM_DIGITS, NUM_SUMS
from keras_adder.core.errors import KerasAdderError

TABLE_LOGIT_SCALE = 10.0


def _inputs():
    return (
        keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), name="image"),
        keras.Input(shape=(NUM_DIGITS,), name="number"),
    )


def build_reference():
    """The original PyTorch design, layer for layer: 6,384,925 trainable parameters.

    Seven 3x3 convolutions end in 10 values per image (1x1 spatially). Their softmax
    is the digit; the raw 10 values, concatenated with the one-hot number, feed a
    small MLP that predicts the sum.
    """
    image, number = _inputs()
    x = image
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(128, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", name="conv4")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Conv2D(512, 3, activation="relu", name="conv5")(x)
    x = layers.Conv2D(1024, 3, activation="relu", name="conv6")(x)
    x = layers.Conv2D(NUM_DIGITS, 3, name="conv7")(x)
    digit_logits = layers.Flatten(name="digit_logits")(x)
    digit = layers.Softmax(name="digit")(digit_logits)

    x = layers.Concatenate(name="logits_and_number")([digit_logits, number])
    x = layers.Dense(128, activation="relu", name="sum_hidden")(x)
    x = layers.Dense(NUM_SUMS, name="sum_logits")(x)
    total = layers.Softmax(name="sum")(x)
    return keras.Model({"image": image, "number": number}, {"digit": digit, "sum": total},
                       name="reference")


def _conv_bn_relu(x, filters, name, padding="same"):
    # No bias: the BatchNorm that follows has its own shift.
    x = layers.Conv2D(filters, 3, padding=padding, use_bias=False, name=name)(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_compact(dropout=0.1):
    """A small, fast network (~28 k parameters) that beats the reference.

    Image trunk: five 3x3 convolutions, narrow at full resolution where they are
    expensive (and without BatchNorm there, see below), global average pooling, then a
    10-way softmax for the digit. Light dropout after each pooling and before the
    digit layer, because without it the network fits its augmented training set better
    than the validation set (the rate was chosen on validation: docs/performance.md).

    Sum head: a learned addition table. For each number n and digit d, a row
    T[n, d, :] of probabilities over the 19 sums (a softmax of 190 trained logits per
    number, all starting at zero, so every row starts uniform); the sum is the digit
    distribution carried through it, P(sum) = sum over d of P(d) T[n, d, sum]. Nothing
    says which sum a pair makes: the table learns it from the labels. Once it has,
    the sum is as confident as the digit and agrees with it on every pair, near-ties
    included, because it is computed from the digit distribution rather than beside it.
    """
    image, number = _inputs()
    # No BatchNorm at 28x28, where activations are largest and it costs most per step
    # (docs/performance.md); the BatchNorm after the first pooling keeps training stable.
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(image)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Dropout(dropout, name="drop1")(x)
    x = _conv_bn_relu(x, 32, "conv3")
    x = _conv_bn_relu(x, 32, "conv4")
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Dropout(dropout, name="drop2")(x)
    x = _conv_bn_relu(x, 32, "conv5", padding="valid")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="drop3")(x)
    digit_logits = layers.Dense(NUM_DIGITS, name="digit_logits")(x)
    digit = layers.Softmax(name="digit")(digit_logits)

    table_logits = layers.Dense(NUM_DIGITS * NUM_SUMS, use_bias=False,
                                kernel_initializer="zeros", name="table_logits")(number)
    # Adam moves a weight by about the learning rate per step whatever its gradient, so a
    # table cell would need thousands of steps to become sure; scaling the logits lets a
    # one-epoch run learn the table too.
    table_logits = layers.Rescaling(TABLE_LOGIT_SCALE, name="table_scale")(table_logits)
    table_logits = layers.Reshape((NUM_DIGITS, NUM_SUMS), name="table_rows")(table_logits)
    table = layers.Softmax(name="addition_table")(table_logits)
    total = layers.Dot(axes=(1, 1), name="sum")([digit, table])
    return keras.Model({"image": image, "number": number}, {"digit": digit, "sum": total},
                       name="compact")


def addition_table(model):
    """A compact model's learned table as [number, digit, sum] probabilities."""
    number = model.input["number"]
    table = keras.Model(number, model.get_layer("addition_table").output)
    return np.asarray(table(np.eye(NUM_DIGITS, dtype="float32")))


BUILDERS = {"compact": build_compact, "reference": build_reference}
assert tuple(BUILDERS) == ARCHITECTURES


def build_model(arch="compact", dropout=None):
    """A fresh, uncompiled model of the named architecture.

    `dropout` replaces the compact model's rate (None keeps its own); the reference
    reproduces the notebook, which has no dropout.
    """
    if arch not in BUILDERS:
        raise KerasAdderError(
            f"unknown architecture {arch!r} (choose from {', '.join(ARCHITECTURES)})"
        )
    if arch == "compact" and dropout is not None:
        return build_compact(dropout)
    return BUILDERS[arch]()


def batchnorm_momentum(total_steps):
    """BatchNorm's momentum for a run of `total_steps` steps.

    Inference uses the moving statistics, an average over the last ~1/(1 - momentum)
    steps. In a short run that window would reach back to the untrained start, so it is
    kept within a tenth of the run (a run of 10 steps or fewer keeps its last batch's);
    runs of 1,000 steps or more keep Keras' 0.99.
    """
    return min(0.99, max(0.0, 1 - 10 / total_steps))


def compile_model(model, recipe, steps_per_epoch, jit_compile="auto"):
    """Sparse categorical cross-entropy and accuracy on each head; AdamW with a linear
    warm-up and a cosine decay to zero over the whole run."""
    total_steps = recipe.epochs * steps_per_epoch
    warmup_steps = recipe.warmup_steps(steps_per_epoch)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = batchnorm_momentum(total_steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=recipe.learning_rate / 10,
        warmup_target=recipe.learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=max(total_steps - warmup_steps, 1),
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=recipe.weight_decay),
        loss={
            "digit": keras.losses.SparseCategoricalCrossentropy(),
            "sum": keras.losses.SparseCategoricalCrossentropy(),
        },
        loss_weights=recipe.loss_weights,
        metrics={"digit": ["accuracy"], "sum": ["accuracy"]},
        jit_compile=jit_compile,
    )
    return model
