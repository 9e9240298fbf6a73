"""Start TensorFlow without its start-up log lines.

On import, TensorFlow's C++ side writes lines such as "Could not find cuda drivers" and
"failed call to cuInit: UNKNOWN ERROR (303)" straight to file descriptor 2, before any
setting of its own applies. To a new user they look like failures, so the commands and
the notebook import TensorFlow through `import_tensorflow()`. A user who sets
TF_CPP_MIN_LOG_LEVEL (e.g. to 0) gets every line, as TensorFlow would print them.
"""

import contextlib
import logging
import os
import sys

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
_state = {"level_set_here": False}


def wants_native_logs():
    """Whether the user set TF_CPP_MIN_LOG_LEVEL (then every C++ line is theirs to see)."""
    return LOG_LEVEL_VARIABLE in os.environ and not _state["level_set_here"]


@contextlib.contextmanager
def quiet_native_stderr():
    """Send file descriptor 2 to /dev/null for the block, unless the user wants the logs.

    TensorFlow's and LiteRT's C++ side write there directly (start-up, the LiteRT
    converter's "fully_quantize: 0 ..." and "Created TensorFlow Lite XNNPACK delegate"),
    past Python's logging. Errors still arrive: as Python exceptions, after the block.
    """
    if wants_native_logs():
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow():
    """Import TensorFlow (and Keras) quietly unless the user set TF_CPP_MIN_LOG_LEVEL."""
    if wants_native_logs() or "tensorflow" in sys.modules:
        import keras  # noqa: F401  (imports TensorFlow)
        return
    os.environ[LOG_LEVEL_VARIABLE] = "3"  # errors only: hides the cuInit line
    _state["level_set_here"] = True
    with quiet_native_stderr():  # the lines before absl's log set-up ignore the level
        import keras  # noqa: F401
        import tensorflow as tf
    # Not before the import: in Jupyter, TensorFlow's first get_logger() sets its
    # logger to INFO, which prints "INFO:tensorflow:Assets written to ..." on export.
    tf.get_logger().setLevel(logging.WARNING)
