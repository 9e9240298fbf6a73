"""Start TensorFlow without its start-up log lines.

On import, TensorFlow's C++ side writes lines such as "Could not find cuda drivers" and
"failed call to cuInit: UNKNOWN ERROR (303)" straight to file descriptor 2, before any
setting of its own applies. To a new user they look like failures, so the commands and
the notebook import TensorFlow through `import_tensorflow()`. A user who sets
TF_CPP_MIN_LOG_LEVEL (e.g. to 0) gets every line, as TensorFlow would print them.
"""

import logging
import os
import sys

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"


def import_tensorflow():
    """Import TensorFlow (and Keras) quietly unless the user set TF_CPP_MIN_LOG_LEVEL."""
    if LOG_LEVEL_VARIABLE in os.environ or "tensorflow" in sys.modules:
        import keras  # noqa: F401  (imports TensorFlow)
        return
    os.environ[LOG_LEVEL_VARIABLE] = "3"  # errors only: hides the cuInit line
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the lines before absl's log set-up ignore the level
    try:
        import keras  # noqa: F401
        import tensorflow as tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    # Not before the import: in Jupyter, TensorFlow's first get_logger() sets its
    # logger to INFO, which prints "INFO:tensorflow:Assets written to ..." on export.
    tf.get_logger().setLevel(logging.WARNING)
