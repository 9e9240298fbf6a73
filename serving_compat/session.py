"""A SavedModel loaded as TF Serving loads it, and its signatures called as TF Serving
calls them: the `serve` MetaGraph imported into a Session, each signature fed and fetched
by its tensor names. The one place that knows how (check.py and image_check.py use it);
it imports nothing from keras_adder, so every TensorFlow release of the matrix runs it.
"""

import tensorflow as tf

# The session loader is deprecated in favour of tf.saved_model.load, but it is the one
# TF Serving uses: its deprecation warning is noise here.
tf.get_logger().setLevel("ERROR")


class Served:
    """The `serve` MetaGraph of the SavedModel at `path`, in its own Session."""

    def __init__(self, path):
        self.session = tf.compat.v1.Session(graph=tf.Graph())
        meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], str(path))
        self.signature_defs = meta_graph.signature_def
        self.signatures = sorted(self.signature_defs)

    def signature(self, name, inputs=None, outputs=None):
        """A function of keyword numpy arrays (the signature's input keys) that returns
        {output key: numpy array}. `inputs` and `outputs` ({key: tf.DType}), if given, are
        the contract: other keys or dtypes raise ValueError."""
        if name not in self.signature_defs:
            raise ValueError(f"no {name!r} signature (the SavedModel has "
                             f"{', '.join(self.signatures)})")
        signature = self.signature_defs[name]
        feeds = _tensor_names(signature.inputs, inputs, f"{name} input")
        fetches = _tensor_names(signature.outputs, outputs, f"{name} output")

        def call(**arrays):
            feed = {feeds[key]: value for key, value in arrays.items()}
            return self.session.run(fetches, feed_dict=feed)

        return call


def _tensor_names(infos, wanted, kind):
    """{key: tensor name}, after checking the keys and dtypes against `wanted` (if any)."""
    if wanted is None:
        return {key: info.name for key, info in infos.items()}
    if set(infos) != set(wanted):
        raise ValueError(f"signature {kind}s are {sorted(infos)}, expected {sorted(wanted)}")
    for key, dtype in wanted.items():
        if infos[key].dtype != dtype.as_datatype_enum:
            got = tf.dtypes.as_dtype(infos[key].dtype).name
            raise ValueError(f"signature {kind} {key} is {got}, expected {dtype.name}")
    return {key: infos[key].name for key in wanted}
