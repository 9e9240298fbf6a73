"""The ground floor: constants, the error type, atomic files, SIGTERM, a quiet TensorFlow
start-up and the training recipe. Imports no other wing and no TensorFlow."""
