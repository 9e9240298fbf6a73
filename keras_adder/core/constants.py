"""The facts every part of the project shares, in a module that imports no TensorFlow.

The command-line front ends check their input against these before TensorFlow starts,
so a bad flag or file fails at once with one line.
"""

NUM_DIGITS = 10  # digit classes; the number input is also 0-9
NUM_SUMS = 19  # sums 0-18
IMAGE_SIZE = 28  # MNIST images are 28x28 grayscale, 0 = background
ARCHITECTURES = ("compact", "reference")
STRATEGIES = ("auto", "mirrored", "multiworker")  # see fitting.distribution.choose_strategy

DATA_ENV_VAR = "KERAS_ADDER_DATA"
TRAIN_SIZE = 60_000
TEST_SIZE = 10_000
VALIDATION_SIZE = 5_000  # the last training images, held out for model selection

SIGNATURE = "serving_default"
DEFAULT_EXPORT_DIR = "saved_models/keras_adder"
RUNS_DIR = "runs"
# The largest batch one serving call accepts: 1,024 images are ~3 MB in and ~0.1 GB of
# activations, while an unbounded request could exhaust the server's memory.
MAX_SERVING_BATCH = 1024
# The serving_image signature's limits on one picture (E and P in docs/serving.md); a
# client whose file is over them sends a PNG of the reduced picture instead.
MAX_PICTURE_BYTES = 4 * 1024 * 1024  # a 12-MP phone JPEG is 2-5 MB
MAX_PICTURE_PIXELS = 12_000_000  # a 12-MP phone photo (4000x3000)

EVALUATION_SPLITS = ("test", "validation")
EVALUATION_DIR = "runs/evaluation"
EVALUATION_BATCH = 4096  # pairs per call of a .keras model (a SavedModel takes at most MAX_SERVING_BATCH)
PROMOTION_POLICIES = ("better", "always")  # see serving.promotion.decide

# Files beside the SavedModel, and the optional packages (requirements-export.txt) each
# needs: checked before training, so a missing one fails in a second, not after an hour.
RUNTIME_FORMATS = {"litert": ("ai_edge_litert",), "onnx": ("onnx", "onnxruntime", "tf2onnx")}
RUNTIME_SUFFIXES = {"litert": ".tflite", "onnx": ".onnx"}  # each format's file name ending
