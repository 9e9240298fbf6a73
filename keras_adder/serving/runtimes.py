"""LiteRT (.tflite) and ONNX (.onnx) exports and their readers.

Both files take the SavedModel signature's raw inputs and give its four outputs:

    inputs:  image  uint8 [N, 28, 28]  (MNIST convention: 0 = background)
             number int32 [N]          (0-9)
    outputs: digit int32 [N], sum int32 [N],
             digit_probabilities float32 [N, 10], sum_probabilities float32 [N, 19]

The preprocessing (image / 255, one-hot number) is inside the file, the same code as
the SavedModel's (`keras_adder.data.pipeline.model_inputs`).

Neither format has the signature's in-graph checks (no Assert op): a number of 10
one-hot encodes to zeros and gets an answer without any error (both runtimes), a
batch mismatch fails inside the runtime with a message about
tensors (a Concat node, an XNNPACK reshape), and LiteRT fails on an empty batch.
So the checks live in the reader: `load_runtime_model(path).predict(images, numbers)`
refuses a number outside 0-9, a wrong shape or dtype and a batch mismatch with a
KerasAdderError, answers an empty batch with empty outputs, and feeds the runtime at
most MAX_BATCH pairs at a time. Any other client must check the same before calling.

The runtimes' own packages (requirements-export.txt) are imported where they are used, so
that the module, and every command that imports it, works without them.

Each file is written under a hidden temporary name in its folder, loaded back, checked
against the Keras model on real images, and only then renamed: on any failure, Ctrl-C
or SIGTERM nothing is left, and an existing file is replaced only by a checked one. The
temporary file is locked while it is written; the next export into that folder removes
those of writers that were killed outright (SIGKILL, power cut).

int8 (`quantize="int8"`) is calibrated on training images only (CALIBRATION_IMAGES of
them, numbers cycling 0-9). The convolutions and pooling, over 99.9 % of the FLOPs, run
in int8; the two small heads stay float, so argmax compares float probabilities:
- LiteRT: post-training integer quantization (int8 weights per channel, int8
  activations) from a representative dataset, with LITERT_FLOAT_OPS kept float
  through the quantization debugger's deny list.
- ONNX: ONNX Runtime static quantization in QDQ format of ONNX_INT8_OPS: uint8
  activations, int8 per-channel weights with reduce_range (7-bit), as ONNX Runtime
  advises for x86 CPUs without VNNI.
"""

import fcntl
import os
import re
import secrets
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_adder.core import signals, startup
from keras_adder.core.constants import IMAGE_SIZE, NUM_DIGITS, NUM_SUMS
from keras_adder.core.errors import KerasAdderError
from keras_adder.data.pipeline import model_inputs
from keras_adder.serving.saved_model import named_outputs, reason

FORMATS = {".tflite": "litert", ".onnx": "onnx"}
QUANTIZATIONS = (None, "int8")
OUTPUTS = ("digit", "sum", "digit_probabilities", "sum_probabilities")
MAX_BATCH = 1024  # pairs per runtime call: bounds the runtime's activation memory
# The hidden name a file is written under before its check (`_write_checked`).
# pid 0 is no writer's: such a name is not ours.
_STAGING_NAME = re.compile(r"\..+\.(?P<pid>[1-9][0-9]{0,6})\.[0-9a-f]{8}\.tmp\.(?:tflite|onnx)")
LITERT_THREADS = 2
ONNX_OPSET = 17
# Quantized, the heads' softmax has 1/256 steps, and argmax breaks their ties by
# index; an int8 ONE_HOT gives its on/off values and its output different scales, which
# wrecks the sum head (docs/runtimes.md), so the heads stay float.
LITERT_FLOAT_OPS = ["ONE_HOT", "FULLY_CONNECTED", "LOG_SOFTMAX", "SOFTMAX", "MUL",
                    "CONCATENATION", "RESHAPE", "ARG_MAX"]
ONNX_INT8_OPS = ["Conv", "MaxPool"]
CALIBRATION_IMAGES = 1024
CALIBRATION_BATCH = 32
# The post-export check. fp32 files compute the same function in another order of
# float operations; int8 ones round weights and activations to 256 levels, which moves
# probabilities by a few hundredths and flips near-ties (docs/runtimes.md has the
# measured spread). A broken quantization is off by ~1.
FP32_TOLERANCE = 1e-4  # max |probability - Keras probability|
INT8_TOLERANCE = 0.25
INT8_MIN_AGREEMENT = 0.95  # share of check pairs whose classes match Keras's


# --- Exporting -------------------------------------------------------------------------


def raw_serving_function(model):
    """The SavedModel signature's computation without its checks (no Assert op in
    LiteRT/ONNX): raw uint8 image + int32 number in, the four outputs out."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE], tf.uint8, name="image"),
            tf.TensorSpec([None], tf.int32, name="number"),
        ]
    )
    def serve(image, number):
        probabilities = model(model_inputs(image, number), training=False)
        return named_outputs(tf.cast(probabilities["digit"], tf.float32),
                             tf.cast(probabilities["sum"], tf.float32))

    return serve


def calibration_pairs(images, count=CALIBRATION_IMAGES, batch=CALIBRATION_BATCH):
    """Batches of (uint8 images, int32 numbers) for int8 calibration: the first
    `count` of `images` (pass TRAINING images), numbers cycling through 0-9 so that
    every number's one-hot reaches the sum head."""
    images = np.asarray(images[:count], np.uint8)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or not len(images):
        raise KerasAdderError("int8 calibration needs training images, uint8 [N, 28, 28]")
    numbers = np.arange(len(images), dtype=np.int32) % NUM_DIGITS
    return [(images[i:i + batch], numbers[i:i + batch]) for i in range(0, len(images), batch)]


def _litert_bytes(model, quantize, calibration_images):
    with startup.quiet_native_stderr(), warnings.catch_warnings():
        # The quantization debugger builds tf.lite.Interpreters, which warn that they
        # are deprecated: not the user's doing, and nothing the user can act on.
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        return _convert_to_litert(model, quantize, calibration_images)


def _convert_to_litert(model, quantize, calibration_images):
    # Through a SavedModel, as Keras' own LiteRT export does: converting the
    # tf.function directly keeps the Keras 3 variables as resource reads, which
    # LiteRT answers with NaN (or fails on without its default delegate).
    with tempfile.TemporaryDirectory() as saved_model:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", raw_serving_function(model))
        archive.write_out(saved_model, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        if quantize is None:
            return converter.convert()
        pairs = calibration_pairs(calibration_images)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            {"image": image, "number": number} for image, number in pairs
        )
        # The quantization debugger is TF's way to keep chosen ops float.
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=converter.representative_dataset,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=LITERT_FLOAT_OPS, fully_quantize=False),
        )
        return debugger.get_nondebug_quantized_model()


def _write_onnx(model, path, quantize, calibration_images):
    import tf2onnx

    serve = raw_serving_function(model)
    if quantize is None:
        tf2onnx.convert.from_function(serve, serve.input_signature, opset=ONNX_OPSET,
                                      output_path=str(path))
        return
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.pairs = iter(calibration_pairs(calibration_images))

        def get_next(self):
            pair = next(self.pairs, None)
            return None if pair is None else {"image": pair[0], "number": pair[1]}

    with tempfile.TemporaryDirectory() as scratch:
        fp32, prepared = Path(scratch, "fp32.onnx"), Path(scratch, "prepared.onnx")
        tf2onnx.convert.from_function(serve, serve.input_signature, opset=ONNX_OPSET,
                                      output_path=str(fp32))
        q.quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        q.quantize_static(
            str(prepared), str(path), Reader(), quant_format=q.QuantFormat.QDQ,
            op_types_to_quantize=ONNX_INT8_OPS, per_channel=True, reduce_range=True,
            activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
        )


def _check_artifact(path, model, images, quantize):
    """Load the written file back; compare its answers with the Keras model's."""
    images = np.asarray(images, np.uint8)
    numbers = np.arange(len(images), dtype=np.int32) % NUM_DIGITS
    answered = load_runtime_model(path).predict(images, numbers)
    expected = model(model_inputs(images, numbers), training=False)
    tolerance = FP32_TOLERANCE if quantize is None else INT8_TOLERANCE
    for head in ("digit", "sum"):
        got = answered[f"{head}_probabilities"]
        want = np.asarray(expected[head])
        error = float(np.max(np.abs(got - want)))
        if not error <= tolerance:  # NaN too
            raise RuntimeError(f"{head} probabilities differ from the Keras model's by "
                               f"{error:.3g} (tolerance {tolerance})")
        if not np.array_equal(answered[head], got.argmax(axis=-1)):
            raise RuntimeError(f"{head} classes disagree with their probabilities")
        agreement = float(np.mean(answered[head] == want.argmax(axis=-1)))
        if agreement < (1.0 if quantize is None else INT8_MIN_AGREEMENT):
            raise RuntimeError(f"{head} classes agree with the Keras model's on only "
                               f"{agreement:.1%} of the check pairs")


def _write_checked(path, suffix, write, check):
    """write(staging) then check(staging) on a unique hidden sibling of `path`, then
    rename it to `path`; on any failure (Ctrl-C, SIGTERM too) remove it and raise.
    Leftovers of writers killed outright (SIGKILL, power cut) are swept first."""
    path = Path(path)
    if path.suffix != suffix:
        raise KerasAdderError(f"{path}: the file name must end in {suffix}")
    failed = f"export to {path} failed, nothing was written"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise KerasAdderError(f"cannot create folder {path.parent} ({error.strerror})") from None
    try:
        sweep_dead_writers_files(path.parent)
    except OSError as error:
        raise KerasAdderError(f"{failed}: {reason(error)}") from None
    # Not mkstemp: its files are private (0600), and a server may run as another user.
    staging = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")
    lock = []
    # SIGTERM is noted and stops the export between its steps: raised inside the
    # converters' native callbacks, it was swallowed (exit 0) or became a TypeError.
    with signals.deferred():
        try:  # created inside the try, so that any stop removes it
            lock.append(_create_locked(staging))
            write(staging)
            _stop_if_terminated()
            check(staging)
            _stop_if_terminated()
            staging.replace(path)
        except BaseException as error:
            staging.unlink(missing_ok=True)
            if not isinstance(error, Exception):  # Ctrl-C, SIGTERM
                raise
            raise KerasAdderError(f"{failed}: {reason(error)}") from error
        finally:
            for descriptor in lock:
                os.close(descriptor)
    return path


def _stop_if_terminated():
    if signals.pending():
        raise signals.Terminated()


def _create_locked(staging):
    """A descriptor of the new, empty file `staging`, locked until it is closed or this
    process dies. The writers (TFLite bytes, tf2onnx, ONNX Runtime's quantizer) reopen
    the name and truncate it, so the lock holds while they write."""
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return descriptor


def _process_is_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def sweep_dead_writers_files(folder):
    """Remove the temporary .tflite/.onnx files in `folder` that a killed export left.

    Only a file with this module's staging name (`.<name>.<pid>.<8 hex>.tmp.<suffix>`)
    whose process is not alive here and whose lock is free: a live writer holds its
    lock, also one in another container where the pid means another process.
    """
    for leftover in Path(folder).iterdir():
        match = _STAGING_NAME.fullmatch(leftover.name)
        if (not match or leftover.is_symlink() or not leftover.is_file()
                or _process_is_alive(int(match["pid"]))):
            continue
        try:
            descriptor = os.open(leftover, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone meanwhile, or not ours to open
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            leftover.unlink(missing_ok=True)
        except BlockingIOError:
            pass  # its writer lives
        finally:
            os.close(descriptor)


def _check_quantize(quantize, calibration_images):
    if quantize not in QUANTIZATIONS:
        raise KerasAdderError(f"unknown quantization {quantize!r} (choose from int8)")
    if quantize == "int8" and calibration_images is None:
        raise KerasAdderError("int8 quantization needs calibration (training) images")


def export_litert(model, path, *, check_images, quantize=None, calibration_images=None):
    """Write `model` as a LiteRT flatbuffer at `path` (.tflite), checked, atomically.

    `check_images` (uint8 [N, 28, 28], e.g. 64 test images, paired with numbers
    0, 1, ... 9, 0, ...) are run through the written file and compared with the Keras
    model. `quantize="int8"` needs `calibration_images` (training images only).
    """
    _check_quantize(quantize, calibration_images)
    return _write_checked(
        path, ".tflite",
        lambda staging: staging.write_bytes(_litert_bytes(model, quantize, calibration_images)),
        lambda staging: _check_artifact(staging, model, check_images, quantize),
    )


def export_onnx(model, path, *, check_images, quantize=None, calibration_images=None):
    """Write `model` as an ONNX model at `path` (.onnx), checked, atomically; the
    arguments are those of `export_litert`."""
    _check_quantize(quantize, calibration_images)
    return _write_checked(
        path, ".onnx", lambda staging: _write_onnx(model, staging, quantize, calibration_images),
        lambda staging: _check_artifact(staging, model, check_images, quantize),
    )


def export_file(model, kind, path, *, check_images, quantize=None, calibration_images=None):
    """`export_litert` or `export_onnx` by `kind`; `path` gets the format's suffix
    (saved_models/keras_adder -> saved_models/keras_adder.tflite)."""
    suffix = {value: key for key, value in FORMATS.items()}[kind]
    path = Path(path)
    path = path if path.suffix == suffix else path.with_name(path.name + suffix)
    export = export_litert if kind == "litert" else export_onnx
    if calibration_images is not None:
        calibration_images = calibration_images[:CALIBRATION_IMAGES]
    return export(model, path, check_images=check_images, quantize=quantize,
                  calibration_images=calibration_images)


# --- Reading ---------------------------------------------------------------------------


def check_pairs(images, numbers):
    """The reader's validation, which the files cannot do: (uint8 images, int32
    numbers) or a KerasAdderError naming the problem."""
    images, numbers = np.asarray(images), np.asarray(numbers)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise KerasAdderError(f"images must have shape [N, 28, 28], got {list(images.shape)}")
    if numbers.ndim != 1:
        raise KerasAdderError(f"numbers must have shape [N], got {list(numbers.shape)}")
    if len(images) != len(numbers):
        raise KerasAdderError(f"image and number must have the same batch size "
                              f"({len(images)} images, {len(numbers)} numbers)")
    if images.size and images.dtype != np.uint8:
        raise KerasAdderError(f"images must be uint8 (0-255), got {images.dtype}")
    if numbers.size and not np.issubdtype(numbers.dtype, np.integer):
        raise KerasAdderError(f"numbers must be integers, got {numbers.dtype}")
    bad = numbers[(numbers < 0) | (numbers >= NUM_DIGITS)]
    if bad.size:
        raise KerasAdderError(f"number {int(bad[0])} is outside 0-9 "
                              "(number must be an integer from 0 to 9)")
    return images.astype(np.uint8), numbers.astype(np.int32)


class RuntimeModel:
    """A loaded .tflite or .onnx file with the SavedModel signature's call contract.

    `predict(images, numbers)` (uint8 [N, 28, 28], int numbers 0-9 [N]) returns
    {digit, sum, digit_probabilities, sum_probabilities} as numpy arrays. `inputs` and
    `outputs` are what the file declares, {name: (dtype name, shape)} with None for a
    size left open, for serving.formats' interface check.
    """

    def __init__(self, path, kind, run, inputs, outputs):
        self.path, self.kind, self._run = Path(path), kind, run
        self.inputs, self.outputs = inputs, outputs

    def predict(self, images, numbers):
        images, numbers = check_pairs(images, numbers)
        if not len(numbers):
            return {"digit": np.zeros(0, np.int32), "sum": np.zeros(0, np.int32),
                    "digit_probabilities": np.zeros((0, NUM_DIGITS), np.float32),
                    "sum_probabilities": np.zeros((0, NUM_SUMS), np.float32)}
        parts = [self._run(images[i:i + MAX_BATCH], numbers[i:i + MAX_BATCH])
                 for i in range(0, len(numbers), MAX_BATCH)]
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([part[name] for part in parts]) for name in OUTPUTS}

    __call__ = predict


def _litert_runner(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the runtime ships inside TensorFlow too
        Interpreter = tf.lite.Interpreter
    with startup.quiet_native_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
        interpreter = Interpreter(model_path=str(path), num_threads=LITERT_THREADS)
        if not interpreter.get_signature_list():  # converted without one: nameless
            raise KerasAdderError(f"{path}: not a keras_adder model: it has no signature "
                                  "(no named inputs and outputs)")
        runner = interpreter.get_signature_runner()
        try:  # the first call creates the XNNPACK delegate, which says so on stderr
            runner(image=np.zeros((1, IMAGE_SIZE, IMAGE_SIZE), np.uint8),
                   number=np.zeros(1, np.int32))
        except Exception:
            pass  # other inputs: serving.formats' interface check names what differs
    inputs, outputs = (
        {name: (np.dtype(detail["dtype"]).name,
                tuple(None if size < 0 else int(size) for size in detail["shape_signature"]))
         for name, detail in details.items()}
        for details in (runner.get_input_details(), runner.get_output_details()))

    def run(images, numbers):
        # The runner resizes the inputs only when the batch size changes.
        return dict(runner(image=images, number=numbers))

    return run, inputs, outputs


def _onnx_runner(path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = LITERT_THREADS
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])

    def run(images, numbers):
        answers = session.run(list(OUTPUTS), {"image": images, "number": numbers})
        return dict(zip(OUTPUTS, answers))

    inputs, outputs = ({value.name: (_onnx_dtype(value.type), None if value.shape is None
                                     else tuple(size if isinstance(size, int) else None
                                                for size in value.shape))
                        for value in values}
                       for values in (session.get_inputs(), session.get_outputs()))
    return run, inputs, outputs


def _onnx_dtype(type_name):
    """numpy's name for an ONNX tensor type: 'tensor(float)' -> 'float32'."""
    name = type_name.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64", "float16": "float16"}.get(name, name)


def load_runtime_model(path):
    """A RuntimeModel for a `.tflite` (LiteRT, 2 threads) or `.onnx` (ONNX Runtime,
    2 threads) file written by export_litert / export_onnx."""
    path = Path(path)
    kind = FORMATS.get(path.suffix)
    if kind is None:
        raise KerasAdderError(f"{path}: not a .tflite or .onnx file")
    if not path.is_file():
        raise KerasAdderError(f"model file {path} does not exist")
    try:
        run, inputs, outputs = (_litert_runner if kind == "litert" else _onnx_runner)(path)
    except KerasAdderError:
        raise
    except Exception as error:
        raise KerasAdderError(f"{path}: not a readable {kind} model ({error})") from None
    return RuntimeModel(path, kind, run, inputs, outputs)
