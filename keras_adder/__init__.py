"""keras-adder: read an MNIST digit, add a number to it.

A Keras 3 functional model with two inputs (`image`, `number`) and two outputs
(`digit`, `sum`), trained with `model.fit` on a `tf.data` pipeline and exported as a
SavedModel that TensorFlow Serving loads.

Modules, one role each: `data` (IDX files, tf.data), `model` (architectures), `train`
(fit, callbacks, strategy), `export` (SavedModel, serving signature), `evaluate`,
`predict`, `plots`, `bench`. Each `python -m keras_adder.X` is a thin CLI over them.
"""

__version__ = "0.1.0"
