"""People's digit pictures in, MNIST-style 28x28 images out: one bounded loader, one preparation.

`predict`, the demo and the notebook all go through these functions, so they show the
model the same 28x28 image for the same picture. This module does what TensorFlow does
not: bounded file loading (the pixel count checked from the header), EXIF rotation,
decoding (PNG, JPEG, GIF, BMP, TIFF, WebP, PPM through Pillow), picture modes (16-bit,
transparency) and bounded .npy reading, with numpy and Pillow only, so a bad file is
refused in milliseconds, before TensorFlow is imported. The MNIST-style preparation
itself (ink found against the paper, crop, 20x20 box, centre of mass at the centre) is
TensorFlow ops in `keras_adder.data.preparation`, which `prepare_digit` runs eagerly, and
which a SavedModel's `serving_image` signature carries: `read_picture` says which bytes
a client sends it (the file's own, or a PNG of what this module read).

Images already in MNIST's convention (28x28, light digit on black, centred, 20 pixels
tall or wide) are left as they are unless preparation is asked for: see `prepare_digit`.
"""

import io
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.lib import format as npy
from PIL import ExifTags, Image, UnidentifiedImageError

from keras_adder.core import startup
from keras_adder.core.constants import IMAGE_SIZE, MAX_PICTURE_BYTES, MAX_PICTURE_PIXELS
from keras_adder.core.errors import KerasAdderError

# A 48-megapixel phone photo still loads; Pillow's own warning starts at 89 MP and its
# error at 179 MP, far more memory than a digit needs.
MAX_PIXELS = 50_000_000
# A picture file bigger than this is refused before it is opened, and the demo refuses
# bigger uploads while they arrive: a 48-megapixel phone photo is 10-25 MB as a JPEG.
MAX_FILE_BYTES = 50_000_000
# Pictures are reduced (area-averaged) to this longer side before preparation: ample
# for a 20x20 result, and it bounds the time and memory of every later step.
WORK_SIDE = 512
# Formats that Pillow decodes itself (EPS, for one, would run Ghostscript). "JPEG" also
# opens phones' multi-picture (MPO) JPEGs.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
# The formats and Pillow modes that TensorFlow's decoders read as load_image reads them
# (compared picture by picture: equal, or 1-2 grey levels apart for JPEG's rounding). A
# phone's multi-picture JPEG (MPO) is a JPEG whose first picture both read. Not here, and
# read differently: 16-bit PNGs (load_image scales by the range the values reach),
# 1-bit and colour-palette BMPs, and every other format.
TENSORFLOW_READS = {"PNG": ("1", "L", "LA", "P", "RGB", "RGBA"),
                    "JPEG": ("L", "RGB", "CMYK"), "MPO": ("L", "RGB", "CMYK"),
                    "BMP": ("L", "RGB"), "GIF": ("L", "P")}
MAX_NPY_IMAGES = 60_000  # all of MNIST's training images; ~47 MB as uint8
# How an array holding a picture scaled to 0-1 (a Keras input, say) is refused.
ZERO_TO_ONE = "values must be 0-255 (MNIST pixels); this array looks scaled to 0-1"

# predict flags an answer whose probability is below this as unsure: few right answers
# fall below it, and most mistakes do (docs/evaluation.md has the shares).
UNSURE_BELOW = 0.9


class Prepared(NamedTuple):
    """What `prepare_digit` made of a picture, and what it noticed."""

    image: np.ndarray  # uint8 [28, 28]: light digit on black, MNIST's convention
    prepared: bool  # False: already MNIST-like, left as it was
    inverted: bool  # the picture had dark ink on a light background
    empty: bool  # no ink found
    digits: int  # groups of marks side by side that look like separate digits


# --- Loading files ---------------------------------------------------------------------


def _check_file(path):
    if not path.exists():
        raise KerasAdderError(f"{path}: no such file")
    if not path.is_file():
        raise KerasAdderError(f"{path}: not a file")


def _too_many_pixels(path, size):
    width, height = size
    return KerasAdderError(
        f"{path}: image of {width}x{height} = {width * height:,} pixels is too big "
        f"(the limit is {MAX_PIXELS:,}; a digit needs far fewer)")


def load_image(path):
    """An image file → float32 [H, W] grey levels 0-255 (0 = black), the right way up.

    The file's size is checked before it is opened (at most MAX_FILE_BYTES), the pixel
    count from the header before anything is decoded (at most MAX_PIXELS); the picture
    is then reduced to at most WORK_SIDE pixels on its longer side. EXIF orientation is
    applied, transparent pixels count as white paper, 16-bit images are scaled to 0-255
    (not clipped). Every problem is a KerasAdderError that names the file.
    """

    return _load(path)[0]


def _load(path):
    """(load_image's grey levels, whether the file can go to serving_image as itself:
    TensorFlow's decoders read it alike, and it is within the signature's limits)."""
    path = Path(path)
    _check_file(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise KerasAdderError(f"{path}: file of {size:,} bytes is too big (the limit is "
                              f"{MAX_FILE_BYTES:,}; a digit needs far less)")
    Image.init()  # registers every format plugin, so that IMAGE_FORMATS can be named
    try:
        with warnings.catch_warnings():
            # Pillow warns about huge images while opening, before our own check can
            # run: make that warning the same refusal (and keep stderr clean).
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise _too_many_pixels(path, image.size)
                alike = (_tensorflow_reads_alike(image) and size <= MAX_PICTURE_BYTES
                         and image.width * image.height <= MAX_PICTURE_PIXELS)
                return _upright_gray(image, path), alike
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise KerasAdderError(
            f"{path}: too many pixels (the limit is {MAX_PIXELS:,})") from None
    except UnidentifiedImageError:
        raise KerasAdderError(
            f"{path}: not an image (Pillow cannot read it as {', '.join(IMAGE_FORMATS)})"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError) as error:
        # Truncated or corrupt data surfaces as any of these, depending on the decoder.
        raise KerasAdderError(f"{path}: truncated or corrupt image ({error})") from None


def _orientation(image):
    return image.getexif().get(ExifTags.Base.Orientation, 1)


def _tensorflow_reads_alike(image):
    """Whether TensorFlow's decoders (tf.io.decode_png/jpeg/bmp/gif, as the serving_image
    signature runs them) read this opened file as load_image does: a format and Pillow
    mode of TENSORFLOW_READS, no EXIF rotation (the signature turns a JPEG only where
    phones and cameras put the orientation, so such a file goes upright), no transparent
    colour but in a PNG's palette (TensorFlow ignores a GIF's and a grey or RGB PNG's,
    which load_image reads as white paper), and a BMP of 24
    bits or a grey palette (TensorFlow reads 32-bit BMPs' fourth byte as alpha, which
    Pillow ignores, and a colour palette's indices as grey levels)."""
    modes = TENSORFLOW_READS.get(image.format, ())
    if image.mode not in modes or _orientation(image) in _UPRIGHT:
        return False
    if "transparency" in image.info and (image.format, image.mode) != ("PNG", "P"):
        return False
    # A BMP's tile says how its rows are stored: 8-bit grey ("L") or 24-bit ("BGR").
    return image.format != "BMP" or bool(image.tile) and image.tile[0][3][0] in ("L", "BGR")


# EXIF orientation tag → the transposition that makes the picture upright.
_UPRIGHT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
            6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}


def _upright_gray(image, path):
    """An opened Pillow image → float32 grey levels, reduced and upright."""

    orientation = _orientation(image)
    # A JPEG can be decoded at 1/2 to 1/8 scale: a big photo never exists in full.
    image.draft("RGB", (WORK_SIDE, WORK_SIDE))
    gray = _gray_image(image, path)
    gray.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
    if orientation in _UPRIGHT:
        gray = gray.transpose(getattr(Image.Transpose, _UPRIGHT[orientation]))
    return np.asarray(gray, np.float32)


def _gray_image(image, path):
    """Any Pillow mode → an 'L' or 'F' image: transparent = white, 16/32-bit scaled.

    A float image ('F', e.g. a 32-bit TIFF) holding NaN or ±inf is refused naming the
    first such pixel: such a value has no grey level, and it would poison the scaling.
    """

    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        values = np.asarray(image, np.float64)
        _refuse_non_finite(path, values, "pixel")
        # The range the values were written in: 8, 16 bits, or whatever they reach.
        low = min(0.0, float(values.min()))
        high = next((top for top in (1.0, 255.0, 65535.0) if values.max() <= top),
                    float(values.max()))
        return Image.fromarray(((values - low) * (255.0 / (high - low))).astype(np.float32))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("L")
    return image if image.mode == "L" else image.convert("L")


def load_npy(path):
    """A .npy array [28, 28] or [N, 28, 28] of 0-255 values → uint8 [N, 28, 28].

    The header is read first and checked (shape, N ≤ MAX_NPY_IMAGES, a plain numeric
    dtype, the file's length) before any array is allocated, so a hostile header costs
    nothing; the data are then read and converted in chunks.

    The values are MNIST's pixels, whatever the dtype: whole numbers 0-255 (0 = black).
    Integer arrays must lie in 0-255. Float arrays are accepted only when every value is
    a finite whole number in 0-255, and then read exactly as the same uint8 array would
    be; NaN, ±inf, fractions and values outside 0-255 are refused. An array of any dtype
    whose values are all 0 or 1 is refused too. Both catch an image scaled to 0-1 (a
    Keras input, a float image library's output), which would otherwise be read as
    nearly black and answered with false confidence: the message says to multiply by
    255. Nothing is rounded, clipped or rescaled silently.
    """

    path = Path(path)
    _check_file(path)
    with open(path, "rb") as file:
        try:
            version = npy.read_magic(file)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy format version {version}")
            read_header = (npy.read_array_header_1_0 if version == (1, 0)
                           else npy.read_array_header_2_0)
            shape, fortran_order, dtype = read_header(file)
        except (ValueError, EOFError, OSError) as error:
            raise KerasAdderError(f"{path}: not a readable .npy array ({error})") from None
        count = _npy_image_count(path, shape, dtype)
        return _read_npy_images(path, file, count, dtype, fortran_order)


def _npy_image_count(path, shape, dtype):
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise KerasAdderError(f"{path}: array dtype {dtype} is not a plain number "
                              "(object and structured arrays are refused)")
    if dtype.kind not in "uif":
        raise KerasAdderError(f"{path}: array dtype {dtype} is not numeric")
    if len(shape) not in (2, 3) or tuple(shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise KerasAdderError(f"{path}: array shape {tuple(shape)} is not [28, 28] or "
                              "[N, 28, 28]")
    count = shape[0] if len(shape) == 3 else 1
    if count > MAX_NPY_IMAGES:
        raise KerasAdderError(f"{path}: {count:,} images is more than the "
                              f"{MAX_NPY_IMAGES:,} a .npy file may hold here")
    return count


def _read_npy_images(path, file, count, dtype, fortran_order):
    pixels = IMAGE_SIZE * IMAGE_SIZE
    expected = count * pixels * dtype.itemsize
    present = path.stat().st_size - file.tell()
    if present != expected:
        problem = "truncated" if present < expected else "longer than its header says"
        raise KerasAdderError(f"{path}: {problem} ({present:,} data bytes, the header "
                              f"promises {expected:,})")
    # Fortran order interleaves the images: only a whole read can untangle it.
    chunk = count if fortran_order else 4096
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for start in range(0, count, chunk):
        rows = min(chunk, count - start)
        values = np.frombuffer(file.read(rows * pixels * dtype.itemsize), dtype)
        values = values.reshape((rows, IMAGE_SIZE, IMAGE_SIZE),
                                order="F" if fortran_order else "C")
        _check_npy_values(path, values, start)
        images[start:start + rows] = values
    if images.size and images.max() == 1:
        raise KerasAdderError(f"{path}: {ZERO_TO_ONE} (every value is 0 or 1): multiply "
                              "by 255")
    return images


def _check_npy_values(path, values, first):
    """Refuse values that are not MNIST pixels, whole numbers 0-255 (see `load_npy`);
    `values` are images `first`, `first` + 1, ... of the file."""
    if values.size == 0:
        return
    if values.dtype.kind == "f":
        _refuse_non_finite(path, values, "value", "values must be 0-255 (MNIST pixels)",
                           first)
    if values.min() < 0 or values.max() > 255:
        raise KerasAdderError(f"{path}: values must be 0-255 (MNIST pixels)")
    if values.dtype.kind == "f" and not np.array_equal(values, np.floor(values)):
        fraction = values[values != np.floor(values)].flat[0]
        if values.max() <= 1:
            raise KerasAdderError(f"{path}: {ZERO_TO_ONE} (a float array of fractions "
                                  f"such as {fraction:g}): multiply by 255")
        raise KerasAdderError(f"{path}: values must be whole numbers 0-255 (MNIST pixels), "
                              f"not fractions such as {fraction:g}: round them first")


def _refuse_non_finite(path, values, what, rule="a picture must hold finite grey levels",
                       first=0):
    """KerasAdderError naming the first NaN or ±inf in `values` [H, W] or [N, H, W]
    (images `first`, `first` + 1, ...) and where it is."""
    finite = np.isfinite(values)
    if finite.all():
        return
    where = tuple(int(i) for i in np.argwhere(~finite)[0])
    place = (f"row {where[-2]}, column {where[-1]}"
             + (f" of image {first + where[0]}" if len(where) == 3 else ""))
    raise KerasAdderError(f"{path}: {what} {values[where]} at {place} is not a finite "
                          f"number; {rule}")


# --- Preparing a digit -----------------------------------------------------------------


def prepare_digit(gray, prepare=None):
    """A grey picture of one digit (any size, either polarity) → `Prepared` (28x28).

    The preparation itself is `preparation.prepare`, TensorFlow ops run eagerly (the one
    implementation, which a SavedModel can carry). prepare=True: MNIST's preparation,
    always: find the ink, crop to it, scale it into the 20x20 box (anti-aliased, aspect
    ratio kept), and place it in 28x28 with its centre of mass at the centre.
    prepare=False: use the picture as it is; it must be 28x28 and in MNIST's convention
    already (light digit on black). prepare=None: True unless it already looks like an
    MNIST image, so MNIST's own images pass through unchanged. The diagnostics (`empty`,
    `digits`) are filled in either way.
    """
    gray = np.asarray(gray, np.float32)
    if gray.ndim != 2 or gray.size == 0 or not np.all(np.isfinite(gray)):
        raise KerasAdderError(f"an image must be a 2-D array of finite grey levels, "
                              f"not shape {gray.shape}")
    if prepare is False and gray.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise KerasAdderError(f"a {gray.shape[0]}x{gray.shape[1]} image cannot be used "
                              "unprepared: only 28x28 ones in MNIST's convention")
    # Deferred: TensorFlow is imported (quietly) only once a picture has loaded, so a bad
    # file is refused before paying for it.
    startup.import_tensorflow()
    from keras_adder.data import preparation

    mode = {None: preparation.AUTO, True: preparation.ALWAYS, False: preparation.NEVER}
    facts = preparation.prepare(gray, mode[prepare])
    return Prepared(facts["image"].numpy(), bool(facts["prepared"]),
                    bool(facts["inverted"]), bool(facts["empty"]), int(facts["digits"]))


def digit_problem(prepared):
    """Why a `Prepared` picture cannot be read as one digit (a sentence), or None."""
    return problem_of(prepared.empty, prepared.digits)


def problem_of(empty, digits):
    """digit_problem from the two facts alone: no ink found, and the groups of marks that
    look like separate digits (the serving_image signature's ink_found and digits_seen)."""
    if empty:
        return "no digit found: nothing stands out from the background (a blank image?)"
    if digits > 1:
        return (f"{digits} separate marks side by side look like {digits} digits: give "
                "one digit per image")
    return None


def load_digit(path, prepare=None):
    """`load_image` then `prepare_digit`; a blank picture or one with several digits
    is a KerasAdderError naming the file."""
    prepared = prepare_digit(load_image(path), prepare)
    problem = digit_problem(prepared)
    if problem:
        raise KerasAdderError(f"{path}: {problem}")
    return prepared


class Picture(NamedTuple):
    """A picture file as a client of the serving_image signature sends it."""

    gray: np.ndarray  # load_image's float32 grey levels, upright
    encoded: bytes  # the bytes to send
    own: bool  # True: the file's own bytes; False: a PNG of `gray`


def read_picture(path):
    """`load_image`'s checks and reading, and the bytes to send to a signature that
    decodes pictures in the graph: the file's own when TensorFlow's decoders read it as
    the file means (`TENSORFLOW_READS`) and it is within the signature's limits, else a
    PNG of the upright, reduced grey picture that load_image read (EXIF-rotated photos,
    TIFF, WebP, PPM, 16-bit PNGs, photos over 12 MP or 4 MiB, ...)."""
    gray, alike = _load(path)
    if alike:
        return Picture(gray, Path(path).read_bytes(), True)
    encoded = io.BytesIO()
    Image.fromarray(np.clip(np.rint(gray), 0, 255).astype(np.uint8)).save(encoded, "PNG")
    return Picture(gray, encoded.getvalue(), False)


def is_unsure(probability):
    """True when an answer's probability is below UNSURE_BELOW."""
    return probability < UNSURE_BELOW
