"""The Keras path, data -> model -> fit -> test -> export, with its callbacks,
tf.distribute strategy, the multi-worker fix and the run directory."""
