"""MNIST and people's pictures: IDX reading, the tf.data pipelines, and the bounded
picture loader with its MNIST-style preparation."""
