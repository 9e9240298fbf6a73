"""LiteRT (.tflite) and ONNX (.onnx) exports, their readers, and serving speed by runtime.

Both files take the SavedModel signature's raw inputs and give its four outputs:

    inputs:  image  uint8 [N, 28, 28]  (MNIST convention: 0 = background)
             number int32 [N]          (0-9)
    outputs: digit int32 [N], sum int32 [N],
             digit_probabilities float32 [N, 10], sum_probabilities float32 [N, 19]

The preprocessing (image / 255, one-hot number) is inside the file, the same code as
the SavedModel's (`keras_adder.data.model_inputs`).

Neither format has the signature's in-graph checks (no Assert op): a number of 10
one-hot encodes to zeros and gets an answer without any error (both runtimes), a
batch mismatch fails inside the runtime with a message about
tensors (a Concat node, an XNNPACK reshape), and LiteRT fails on an empty batch.
So the checks live in the reader: `load_runtime_model(path).predict(images, numbers)`
refuses a number outside 0-9, a wrong shape or dtype and a batch mismatch with a
KerasAdderError, answers an empty batch with empty outputs, and feeds the runtime at
most MAX_BATCH pairs at a time. Any other client must check the same before calling.

Each file is written under a hidden temporary name in its folder, loaded back, checked
against the Keras model on real images, and only then renamed: on any failure or
Ctrl-C nothing is left, and an existing file is replaced only by a checked one.

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

import os
import secrets
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_adder import startup
from keras_adder.errors import KerasAdderError
from keras_adder.constants import NUM_DIGITS, NUM_SUMS
from keras_adder.data import model_inputs
from keras_adder.saved_model import load_saved_model, named_outputs, run_signature

FORMATS = {".tflite": "litert", ".onnx": "onnx"}
QUANTIZATIONS = (None, "int8")
OUTPUTS = ("digit", "sum", "digit_probabilities", "sum_probabilities")
MAX_BATCH = 1024  # pairs per runtime call: bounds the runtime's activation memory
LITERT_THREADS = 2
ONNX_OPSET = 17
# Quantized, the heads' softmax has 1/256 steps, and argmax breaks their ties by
# index; with an int8 ONE_HOT (its on/off values and its output got different
# scales) LiteRT's sum head agreed with Keras on 13 % of pairs.
LITERT_FLOAT_OPS = ["ONE_HOT", "FULLY_CONNECTED", "LOG_SOFTMAX", "SOFTMAX", "MUL",
                    "CONCATENATION", "RESHAPE", "ARG_MAX"]
ONNX_INT8_OPS = ["Conv", "MaxPool"]
CALIBRATION_IMAGES = 1024
CALIBRATION_BATCH = 32
# The post-export check. fp32 files compute the same function in another order of
# float operations; int8 ones round weights and activations to 256 levels, which
# moved probabilities by up to 0.04 (LiteRT) and 0.12 (ONNX) in 2,000 test pairs, and
# flips near-ties. A broken quantization is off by ~1.
FP32_TOLERANCE = 1e-4  # max |probability - Keras probability|
INT8_TOLERANCE = 0.25
INT8_MIN_AGREEMENT = 0.95  # share of check pairs whose classes match Keras's


# --- Exporting -------------------------------------------------------------------------


def raw_serving_function(model):
    """The SavedModel signature's computation without its checks (no Assert op in
    LiteRT/ONNX): raw uint8 image + int32 number in, the four outputs out."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 28, 28], tf.uint8, name="image"),
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
    if images.ndim != 3 or images.shape[1:] != (28, 28) or not len(images):
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
    import keras

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
    rename it to `path`; on any failure (Ctrl-C too) remove it and raise."""
    path = Path(path)
    if path.suffix != suffix:
        raise KerasAdderError(f"{path}: the file name must end in {suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise KerasAdderError(f"cannot create folder {path.parent} ({error.strerror})") from None
    # Not mkstemp: its files are private (0600), and a server may run as another user.
    staging = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        write(staging)
        check(staging)
        staging.replace(path)
    except BaseException as error:
        staging.unlink(missing_ok=True)
        if not isinstance(error, Exception):  # Ctrl-C
            raise
        raise KerasAdderError(f"export to {path} failed, nothing was written: {error}") from error
    return path


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
    if images.ndim != 3 or images.shape[1:] != (28, 28):
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
    {digit, sum, digit_probabilities, sum_probabilities} as numpy arrays.
    """

    def __init__(self, path, kind, run):
        self.path, self.kind, self._run = Path(path), kind, run

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
        runner = interpreter.get_signature_runner()
        runner(image=np.zeros((1, 28, 28), np.uint8), number=np.zeros(1, np.int32))

    def run(images, numbers):
        # The runner resizes the inputs only when the batch size changes.
        return dict(runner(image=images, number=numbers))

    return run


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

    return run


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
        run = (_litert_runner if kind == "litert" else _onnx_runner)(path)
    except Exception as error:
        raise KerasAdderError(f"{path}: not a readable {kind} model ({error})") from None
    return RuntimeModel(path, kind, run)


# --- Speed -----------------------------------------------------------------------------


def _leaf_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):  # a nested model
            yield from _leaf_layers(layer)
        else:
            yield layer


def model_flops_per_image(model):
    """FLOPs of one (image, number) pair: 2 x the multiply-adds of every Conv2D and
    Dense layer. Pooling, BatchNorm, activations and softmax are elementwise and left
    out (under 2 % of the compact model's work)."""
    import keras

    flops = 0
    for layer in _leaf_layers(model):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            # Each output value costs one multiply-add per kernel entry feeding it;
            # the kernel's last axis is the output channels.
            outputs = int(np.prod(layer.output.shape[1:]))
            flops += 2 * outputs * int(np.prod(layer.kernel.shape[:-1]))
    return flops


def matmul_gflops(size=1024, calls=16):
    """One timing of TensorFlow's fp32 matmul: GFLOP/s of `calls` products of two
    [size, size] matrices (2 size^3 FLOPs each)."""
    a = tf.random.stateless_normal([size, size], seed=[1, 2])
    b = tf.random.stateless_normal([size, size], seed=[3, 4])
    start = time.perf_counter()
    for _ in range(calls):
        tf.linalg.matmul(a, b).numpy()
    return 2 * size ** 3 * calls / (time.perf_counter() - start) / 1e9


def durations(call, count):
    """Wall seconds of `count` calls of `call`, one by one."""
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def measure_serving(predictors, images, *, rounds=5, latency_calls=200, big_batch=1024,
                    big_calls=5, warmup=20):
    """Batch-1 latency and batch-`big_batch` throughput of each predictor, plus the
    fp32 matmul peak, measured in the same rounds.

    `predictors` maps a name to `predict(images uint8 [N, 28, 28], numbers int32 [N])`
    (numpy in; e.g. a SavedModel signature behind a small adapter, or a RuntimeModel).
    Each round times every predictor and the matmul one after the other, so a busy
    machine slows them alike; the figures are medians over the rounds (p50/p99 over
    all batch-1 calls). Returns {name: {batch1_p50_ms, batch1_p99_ms,
    batch_images_per_s}, "matmul_gflops": float, "big_batch": big_batch}.
    """
    one = (np.asarray(images[:1], np.uint8), np.array([3], np.int32))
    big = (np.asarray(images[:big_batch], np.uint8),
           np.arange(big_batch, dtype=np.int32) % NUM_DIGITS)
    for predict in predictors.values():
        for _ in range(warmup):
            predict(*one)
        predict(*big)
    latencies = {name: [] for name in predictors}
    rates = {name: [] for name in predictors}
    peaks = []
    for _ in range(rounds):
        peaks.append(matmul_gflops())
        for name, predict in predictors.items():
            latencies[name] += [1000 * s for s in durations(lambda: predict(*one), latency_calls)]
            rates[name].append(big_batch * big_calls
                               / sum(durations(lambda: predict(*big), big_calls)))
    results = {
        name: {"batch1_p50_ms": float(np.percentile(latencies[name], 50)),
               "batch1_p99_ms": float(np.percentile(latencies[name], 99)),
               "batch_images_per_s": float(np.median(rates[name]))}
        for name in predictors
    }
    results["matmul_gflops"] = float(np.median(peaks))
    results["big_batch"] = big_batch
    return results


def saved_model_predictor(path):
    """predict(images, numbers) → dict of numpy arrays through a SavedModel's
    serving_default signature: the same contract as RuntimeModel.predict, so the
    SavedModel is timed the way the other runtimes are."""
    _, serve = load_saved_model(path)
    return lambda images, numbers: run_signature(serve, images, numbers)


def export_runtime_files(model, directory, *, check_images, calibration_images):
    """The LiteRT and ONNX files, fp32 and int8, of one model under `directory`:
    {"LiteRT fp32": path, "LiteRT int8": ..., "ONNX Runtime fp32": ..., ...}."""
    paths = {}
    for kind, export, suffix in (("LiteRT", export_litert, ".tflite"),
                                 ("ONNX Runtime", export_onnx, ".onnx")):
        for quantize in QUANTIZATIONS:
            precision = quantize or "fp32"
            paths[f"{kind} {precision}"] = export(
                model, Path(directory) / f"keras_adder-{precision}{suffix}",
                check_images=check_images, quantize=quantize,
                calibration_images=calibration_images)
    return paths


def serving_speed_table(model, paths, images, **timing):
    """Serving speed of each exported artifact of `model` ({name: path}: SavedModel
    folders and the files of export_runtime_files) against the fp32 cap measured in
    the same run.

    The cap is the images/s the machine's fp32 matmul peak allows at the model's
    FLOPs per image; each runtime's batch throughput is given as a fraction of it,
    and as a multiple of the first (SavedModel) entry's, and so is its batch-1 rate
    (1 / p50 latency). `timing` goes to measure_serving.
    """
    predictors = {name: (saved_model_predictor(path) if Path(path).is_dir()
                         else load_runtime_model(path).predict)
                  for name, path in paths.items()}
    measured = measure_serving(predictors, images, **timing)
    peak, big_batch = measured.pop("matmul_gflops"), measured.pop("big_batch")
    flops = model_flops_per_image(model)
    cap = peak * 1e9 / flops
    first = next(iter(measured.values()))["batch_images_per_s"]
    for figures in measured.values():
        rate = figures["batch_images_per_s"]
        figures.update(gflops=rate * flops / 1e9, fraction_of_cap=rate / cap,
                       times_first=rate / first,
                       batch1_fraction_of_cap=1000 / figures["batch1_p50_ms"] / cap)
    return {"flops_per_image": flops, "matmul_gflops": peak, "fp32_cap_images_per_s": cap,
            "big_batch": big_batch, "runtimes": measured}


def format_speed_table(table):
    """The serving table as Markdown lines."""
    lines = [f"model: {table['flops_per_image'] / 1e6:.2f} MFLOP/image; fp32 matmul peak "
             f"{table['matmul_gflops']:.0f} GFLOP/s; fp32 cap (peak / FLOPs per image) "
             f"{table['fp32_cap_images_per_s']:,.0f} images/s",
             "| runtime | batch-1 p50 | batch-1 p99 | batch-1 of fp32 cap "
             f"| batch-{table['big_batch']} images/s | GFLOP/s | of fp32 cap "
             "| x first |", "|---|---|---|---|---|---|---|---|"]
    for name, figures in table["runtimes"].items():
        lines.append(f"| {name} | {figures['batch1_p50_ms']:.2f} ms | "
                     f"{figures['batch1_p99_ms']:.2f} ms | "
                     f"{figures['batch1_fraction_of_cap']:.1%} | "
                     f"{figures['batch_images_per_s']:,.0f} | "
                     f"{figures['gflops']:.0f} | {figures['fraction_of_cap']:.0%} | "
                     f"{figures['times_first']:.2f}x |")
    return lines
