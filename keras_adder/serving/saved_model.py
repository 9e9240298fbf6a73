"""The SavedModel that TensorFlow Serving loads: writing it, and loading it back.

The `serving_default` signature takes raw inputs and does the preprocessing itself:

    inputs:  image  uint8 [N, 28, 28]  (MNIST convention: 0 = background)
             number int32 [N]          (0-9)
    outputs: digit int32 [N], sum int32 [N],
             digit_probabilities float32 [N, 10], sum_probabilities float32 [N, 19]

A number outside 0-9, a length mismatch between image and number, a batch above
MAX_SERVING_BATCH or a tensor of the wrong shape fails the call with InvalidArgument
(HTTP 400 in TF Serving) whose message says what is wrong; a wrong dtype is refused by
the signature; an empty batch gives empty outputs.

A second signature, `serving_image` (keras_adder/serving/image_signature.py), takes
encoded pictures, prepares them in the graph and answers through `serving_default`.

Versions are integers under the base path, the layout TF Serving polls. A version is
written into a hidden staging sibling, loaded back and checked against the Keras
model, and only then renamed to its number: a server never sees a half-written model,
and an existing version is never touched.
"""

import fcntl
import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_adder.core.constants import (
    IMAGE_SIZE,
    MAX_SERVING_BATCH,
    NUM_DIGITS,
    NUM_SUMS,
    SIGNATURE,
)
from keras_adder.core.errors import KerasAdderError
from keras_adder.core.files import sync
from keras_adder.data.pipeline import model_inputs
from keras_adder.serving.folding import fold_batchnorm
from keras_adder.serving.image_signature import (
    IMAGE_SIGNATURE,
    make_image_serving_function,
)
from keras_adder.serving.warmup import write_warmup_requests

# TF Serving reads a version folder's name as a decimal int64; ASCII digits only
# ("٣" passes str.isdigit() but is no version).
_VERSION_NAME = re.compile(r"[0-9]+")
_MAX_VERSION = 2**63 - 1
STAGING_PREFIX = ".staging-"
WARMUP_EXAMPLES = 5  # real test images that TF Serving replays when it loads a version
MAX_REASON = 400  # characters of a failure's reason in its one error line


# --- Versions ---------------------------------------------------------------------------


def existing_versions(base_dir):
    """{version number: folder} of the versions TF Serving would see under `base_dir`.

    "007" is version 7, as for TF Serving. A file with a version's name counts too: no
    export can take that name.
    """
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        return {}
    versions = {}
    for path in base_dir.iterdir():
        if _VERSION_NAME.fullmatch(path.name) and int(path.name) <= _MAX_VERSION:
            versions[int(path.name)] = path
    return dict(sorted(versions.items()))


def free_version(export_dir, version=None):
    """`version` if it is not taken under `export_dir` (else an error); by default the
    next free one. Call it before training, so that a taken version fails early."""
    versions = existing_versions(export_dir)
    if version is None:
        return max(versions, default=0) + 1
    if not 1 <= version <= _MAX_VERSION:
        raise KerasAdderError(f"export version {version} is outside 1-{_MAX_VERSION}")
    if version in versions:
        raise KerasAdderError(
            f"export version {versions[version]} already exists; not overwriting it")
    return version


# --- Writing ----------------------------------------------------------------------------


def make_serving_function(model):
    """The raw-input signature: validate, preprocess, run the model, name the outputs."""

    # No Python control flow to convert (tf.cond is explicit); AutoGraph would only
    # warn, at every export, that it cannot read the nested functions' closures.
    @tf.function(input_signature=[
        tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE], tf.uint8, name="image"),
        tf.TensorSpec([None], tf.int32, name="number"),
    ], autograph=False)
    def serve(image, number):
        # A server feeds tensors of any shape into a signature: enforce them in-graph.
        image = tf.ensure_shape(image, [None, IMAGE_SIZE, IMAGE_SIZE])
        number = tf.ensure_shape(number, [None])
        batch = tf.shape(number)[0]
        checks = [
            tf.debugging.assert_equal(tf.shape(image)[0], batch,
                                      message="image and number must have the same batch size"),
            tf.debugging.assert_less_equal(
                batch, MAX_SERVING_BATCH,
                message=f"a request may hold at most {MAX_SERVING_BATCH} images"),
            tf.debugging.assert_greater_equal(number, 0,
                                              message="number must be an integer from 0 to 9"),
            tf.debugging.assert_less(number, NUM_DIGITS,
                                     message="number must be an integer from 0 to 9"),
        ]

        def predict():
            probabilities = model(model_inputs(image, number), training=False)
            return (tf.cast(probabilities["digit"], tf.float32),
                    tf.cast(probabilities["sum"], tf.float32))

        def nothing():
            return tf.zeros([0, NUM_DIGITS]), tf.zeros([0, NUM_SUMS])

        with tf.control_dependencies(checks):
            # TF's fused convolution + BatchNorm fails on an empty batch with a shape
            # error, so an empty request skips the model.
            digit_probabilities, sum_probabilities = tf.cond(batch > 0, predict, nothing)
        return named_outputs(digit_probabilities, sum_probabilities)

    return serve


def named_outputs(digit_probabilities, sum_probabilities):
    """The four outputs every exported artifact gives, from the two heads' softmax."""
    return {
        "digit": tf.argmax(digit_probabilities, axis=-1, output_type=tf.int32),
        "sum": tf.argmax(sum_probabilities, axis=-1, output_type=tf.int32),
        "digit_probabilities": digit_probabilities,
        "sum_probabilities": sum_probabilities,
    }


def check_export(path, model, images, numbers):
    """Load the written SavedModel; refuse it unless it answers like the Keras model."""
    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures[SIGNATURE]
    served = serve(image=tf.constant(images, tf.uint8), number=tf.constant(numbers, tf.int32))
    expected = model(model_inputs(images, numbers), training=False)
    for head in ("digit", "sum"):
        got = served[f"{head}_probabilities"].numpy()
        if not np.allclose(got, np.asarray(expected[head]), atol=1e-5):
            raise KerasAdderError(f"exported {head} probabilities differ from the Keras model's")
        if not np.array_equal(served[head].numpy(), got.argmax(axis=-1)):
            raise KerasAdderError(f"exported {head} classes disagree with their probabilities")
    check_image_signature(loaded.signatures[IMAGE_SIGNATURE], images, numbers, served)
    empty = serve(image=tf.zeros([0, IMAGE_SIZE, IMAGE_SIZE], tf.uint8),
                  number=tf.zeros([0], tf.int32))
    if any(value.shape[0] != 0 for value in empty.values()):
        raise KerasAdderError("exported signature does not answer an empty batch with nothing")
    # The refusals (number 10, ...) are covered by tests, not here: a refused call makes
    # TensorFlow log an alarming "rendezvous is aborting" line in every training run.


def check_image_signature(serve_image, images, numbers, served):
    """The picture signature, given the images as PNG files, must see them exactly (they
    are already MNIST-like) and answer as `serving_default` did (`served`)."""
    pictures = [tf.io.encode_png(image[:, :, np.newaxis]).numpy() for image in images]
    answered = serve_image(picture=tf.constant(pictures), number=tf.constant(numbers, tf.int32))
    if not np.array_equal(answered["image"].numpy(), np.asarray(images, np.uint8)):
        raise KerasAdderError(f"exported {IMAGE_SIGNATURE} does not see MNIST's PNGs as they are")
    # A blank picture is answered "no ink" (-1) by design; every other one as serving_default.
    ink = np.asarray(images, np.uint8).reshape(len(images), -1).any(axis=1)
    if not np.array_equal(answered["ink_found"].numpy(), ink):
        raise KerasAdderError(f"exported {IMAGE_SIGNATURE} finds ink unlike the pictures hold")
    for head in ("digit", "sum"):
        answers = answered[head].numpy()
        if (not np.array_equal(answers[ink], served[head].numpy()[ink])
                or (answers[~ink] != -1).any()):
            raise KerasAdderError(f"exported {IMAGE_SIGNATURE} answers {head} unlike "
                                  f"{SIGNATURE}")


def claim_staging(export_dir, version):
    """(folder, lock descriptor): a new staging folder, locked until the descriptor is
    closed or this process dies; staging folders whose writer died (their lock is
    free) are removed first."""
    for leftover in export_dir.glob(f"{STAGING_PREFIX}*"):
        if leftover.is_dir() and not leftover.is_symlink():
            descriptor = os.open(leftover, os.O_RDONLY)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(leftover, ignore_errors=True)
            except BlockingIOError:
                pass  # another export is writing it
            finally:
                os.close(descriptor)
    # Non-numeric, so TF Serving ignores it while it is being written.
    staging = export_dir / f"{STAGING_PREFIX}{version}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    descriptor = os.open(staging, os.O_RDONLY)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return staging, descriptor


def fingerprint(folder):
    """sha256 over every file under `folder` (relative names and bytes, in sorted order):
    a version copied from a candidate has the candidate's fingerprint."""
    digest = hashlib.sha256()
    folder = Path(folder)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0"
                          .encode())
            with path.open("rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def is_own_version(base_dir, claim):
    """The version folder `claim` ({"version", "fingerprint"}, recorded before its rename)
    names under `base_dir`, if it is there with those very files; else None. So a run
    killed between a rename and its record knows the version as its own on rerun."""
    if not claim:
        return None
    path = Path(base_dir) / str(claim["version"])
    if path.is_dir() and fingerprint(path) == claim["fingerprint"]:
        return path
    return None


def rename_into_place(staging, final, before_rename=None):
    """Flush every file and folder of `staging` to the disk, call
    `before_rename(version, fingerprint)` (a run records them there), then rename
    `staging` to `final` and flush that rename. After a power cut the version is
    then either absent or whole, and a run that recorded its claim recognises it.
    rename() refuses a non-empty target, so a version that appeared meanwhile is not
    replaced."""
    for folder, _, names in os.walk(staging):
        for name in names:
            sync(Path(folder, name))
        sync(folder)
    if before_rename is not None:
        before_rename(int(final.name), fingerprint(staging))
    staging.rename(final)
    sync(final.parent)


def copy_folder(source, target):
    """Copy the files under `source` into the existing folder `target`, stopping at the
    first error (shutil.copytree goes on and gathers every file's error in a list)."""
    source = Path(source)
    for folder, _, names in os.walk(source):
        into = target / Path(folder).relative_to(source)
        into.mkdir(exist_ok=True)
        for name in names:
            shutil.copyfile(Path(folder, name), into / name)


def reason(error):
    """What went wrong, in one line: the error's message (an OS error's with its errno
    and files) with its lines joined, cut at MAX_REASON characters. TensorFlow's
    messages run over several lines; shutil.copytree's list every file it failed on."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 3] + "..."


def export_saved_model(model, export_dir, version=None, *, check_images, before_rename=None):
    """Write `model` to `<export_dir>/<version>/` atomically; return that path.

    `version` defaults to the next free integer; an existing one is refused.
    `check_images` (uint8 [N, 28, 28], each paired with a number) are run through the
    written SavedModel before it is given its number; the first few also become its
    TF Serving warm-up requests. `before_rename`: see `rename_into_place`.
    """
    export_dir = Path(export_dir)
    version = free_version(export_dir, version)
    final = export_dir / str(version)
    try:
        export_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise KerasAdderError(f"cannot create export directory {export_dir} "
                              f"({error.strerror})") from None
    try:
        staging, lock = claim_staging(export_dir, version)
    except OSError as error:  # a full disk, a read-only folder
        raise KerasAdderError(f"export to {final} failed, nothing was written: "
                              f"{reason(error)}") from None
    try:
        # Served with each BatchNorm folded into its convolution: faster on CPU, and
        # check_export below compares its answers with the unfolded `model`'s.
        served = fold_batchnorm(model)
        archive = keras.export.ExportArchive()
        archive.track(served)
        serve = make_serving_function(served)
        archive.add_endpoint(SIGNATURE, serve)
        # Encoded pictures, prepared in the graph, answered through `serve`.
        archive.add_endpoint(IMAGE_SIGNATURE, make_image_serving_function(serve))
        archive.write_out(str(staging), verbose=False)
        check_images = np.asarray(check_images, np.uint8)
        check_numbers = np.arange(len(check_images), dtype=np.int32) % NUM_DIGITS
        write_warmup_requests(staging, check_images[:WARMUP_EXAMPLES],
                              check_numbers[:WARMUP_EXAMPLES], pictures=True)
        check_export(staging, model, check_images, check_numbers)
        rename_into_place(staging, final, before_rename)
    except BaseException as error:
        # Also on Ctrl-C and SIGTERM: no half-written directory is left behind.
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(error, Exception):
            raise
        raise KerasAdderError(f"export to {final} failed, nothing was written: "
                              f"{reason(error)}") from error
    finally:
        os.close(lock)
    return final


# --- Loading ----------------------------------------------------------------------------


def resolve_saved_model(path):
    """A SavedModel directory, or a base path of versions → its highest version."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = existing_versions(path)
    if not versions:
        raise KerasAdderError(
            f"{path}: no SavedModel there (neither saved_model.pb nor integer version "
            "folders)"
        )
    latest = versions[max(versions)]
    if not (latest / "saved_model.pb").is_file():
        raise KerasAdderError(f"{latest}: highest version has no saved_model.pb")
    return latest


def load_saved_model(path):
    """(version path, serving signature) for a SavedModel dir or base path; use
    serving.formats.load_model, which also checks the signature's interface.

    Loading a SavedModel runs its graph: load only models from a trusted source.
    """
    return load_saved_model_signatures(path)[:2]


def load_saved_model_signatures(path):
    """(version path, serving_default, serving_image or None for a SavedModel exported
    before it existed): load_saved_model with the picture signature."""
    path = resolve_saved_model(path)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as error:  # TF raises many types for a broken directory
        raise KerasAdderError(f"{path}: not a loadable SavedModel ({error})") from None
    if SIGNATURE not in loaded.signatures:
        raise KerasAdderError(f"{path}: not a keras_adder model: no {SIGNATURE!r} signature")
    # Its inputs and outputs are checked by serving.formats.check_interface.
    return path, loaded.signatures[SIGNATURE], loaded.signatures.get(IMAGE_SIGNATURE)


def run_signature(serve, images, numbers, batch_size=MAX_SERVING_BATCH):
    """Call a serving signature in batches the signature accepts; numpy outputs."""
    batch_size = min(batch_size, MAX_SERVING_BATCH)
    parts = []
    for start in range(0, max(len(images), 1), batch_size):
        try:
            outputs = serve(image=tf.constant(images[start:start + batch_size], tf.uint8),
                            number=tf.constant(numbers[start:start + batch_size], tf.int32))
        except tf.errors.InvalidArgumentError as error:
            raise KerasAdderError(f"the model refused the request: {error.message}") from None
        parts.append({name: value.numpy() for name, value in outputs.items()})
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


class PictureRefused(KerasAdderError):
    """The picture signature refused picture `index` of a call; `reason` is its words."""

    def __init__(self, index, reason):
        super().__init__(f"picture {index}: {reason}")
        self.index, self.reason = index, reason


def refusal_reason(error):
    """The one-line reason of a refusal by an assertion in the graph: the text that
    tf.debugging.Assert carries, without TensorFlow's framing and node names."""
    found = re.search(r"^assertion failed: \[(.*)\]\s*$", error.message, re.MULTILINE)
    return found[1].replace('\\"', '"') if found else reason(error)


def run_image_signature(serve_image, pictures, numbers):
    """Call a `serving_image` signature with encoded pictures (bytes) and numbers, one
    picture per request: each refusal is then that picture's own (PictureRefused), and a
    command's many files never meet a request's limits. numpy outputs."""
    parts = []
    for index, (picture, number) in enumerate(zip(pictures, numbers)):
        try:
            outputs = serve_image(picture=tf.constant([picture], tf.string),
                                  number=tf.constant([number], tf.int32))
        except tf.errors.InvalidArgumentError as error:
            # One picture per request: the graph's "picture 0" is this picture.
            said = re.sub(r"^picture 0\b", "the picture", refusal_reason(error))
            raise PictureRefused(index, said) from None
        parts.append({name: value.numpy() for name, value in outputs.items()})
    if not parts:
        return {}
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
