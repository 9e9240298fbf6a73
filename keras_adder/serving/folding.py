"""BatchNorm folding: the copy of a trained model that the SavedModel serves."""

import keras
import numpy as np
from keras import layers


def _foldable_batchnorms(model):
    """{Conv2D name: the BatchNormalization fed by it alone and feeding on it alone}."""
    producers = {
        layer.name: [tensor._keras_history.operation.name  # the layer that made it
                     for tensor in keras.tree.flatten(layer.input)]
        for layer in model.layers
    }
    # The model's outputs count as consumers too.
    outputs = [tensor._keras_history.operation.name
               for tensor in keras.tree.flatten(model.outputs)]
    consumers = {}
    for layer_name, names in [*producers.items(), ("outputs", outputs)]:
        for name in names:
            if name != layer_name:  # an InputLayer's input is its own output
                consumers[name] = consumers.get(name, 0) + 1
    pairs = {}
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization) and layer.axis in (-1, 3):
            (source,) = producers[layer.name]
            if (isinstance(model.get_layer(source), layers.Conv2D)
                    and consumers[source] == 1):
                pairs[source] = layer
    return pairs


def fold_batchnorm(model):
    """A copy of a functional `model` in which each BatchNormalization right after a
    Conv2D is folded into that convolution's kernel and bias (and replaced by an
    identity): the same answers up to float rounding, one pass over the activations
    fewer. Keras 3 computes BatchNormalization with elementwise ops
    (tf.nn.batch_normalization), which TensorFlow does not fuse into the convolution as
    it fuses a bias and a ReLU; the LiteRT and ONNX converters fold it themselves.
    The SavedModel export serves this copy (docs/runtimes.md has the measurements)."""
    folds = _foldable_batchnorms(model)
    folded_away = {bn.name for bn in folds.values()}

    def clone(layer):
        if layer.name in folded_away:
            # A Lambda accepts the `mask` argument the graph passes a BatchNormalization.
            return layers.Lambda(lambda x: x, name=layer.name)
        config = layer.get_config()
        if layer.name in folds:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    folded = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name in folded_away or not layer.weights:  # inputs get new names
            continue
        target = folded.get_layer(layer.name)
        if layer.name not in folds:
            target.set_weights(layer.get_weights())
            continue
        bn = folds[layer.name]
        scale = (bn.gamma.numpy() if bn.scale else 1.0) / np.sqrt(
            bn.moving_variance.numpy() + bn.epsilon)
        bias = layer.bias.numpy() if layer.use_bias else 0.0
        shift = bn.beta.numpy() if bn.center else 0.0
        target.set_weights([layer.kernel.numpy() * scale,
                            (bias - bn.moving_mean.numpy()) * scale + shift])
    return folded
