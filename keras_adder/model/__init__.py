"""The Keras model: the two architectures, how they are compiled, and the .keras loader."""
