"""Numbers and names shared by training, export and serving; no TensorFlow import, so
configs and tests can read them cheaply."""

# The largest batch one call of the serving signature accepts. TF Serving's
# `max_batch_size` (saved_models/batching_parameters.txt) must not exceed it, or a
# merged batch would be refused by the model it was formed for.
MAX_SERVING_BATCH = 1024

# The exported signature that TF Serving's Predict API and the warm-up requests call.
SERVING_SIGNATURE = "serving_default"
