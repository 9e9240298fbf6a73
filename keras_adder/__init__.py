"""keras-adder: read an MNIST digit, add a number to it.

A Keras 3 functional model with two inputs (`image`, `number`) and two outputs
(`digit`, `sum`), trained with `model.fit` on a `tf.data` pipeline and exported as a
SavedModel that TensorFlow Serving loads. docs/design.md maps the modules.
"""

__version__ = "0.1.0"
