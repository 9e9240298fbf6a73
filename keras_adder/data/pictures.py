"""People's digit pictures in, MNIST-style 28x28 images out: one bounded loader, one preparation.

`predict`, the demo and the notebook all go through these functions, so they show the
model the same 28x28 image for the same picture. Only numpy and Pillow are used (no
TensorFlow): a bad file is refused in milliseconds, before TensorFlow is imported.

MNIST's own preparation (LeCun, Cortes and Burges): the digit's bounding box is scaled,
keeping its aspect ratio, to fit a 20x20 box with anti-aliasing, then placed in a 28x28
image so that the centre of mass of its pixels is at the centre. Measured on the 10,000
MNIST test images: every centre of mass lies within half a pixel of row 14, column 14
(0-based pixel indices, so the shift was a whole number of pixels), and the longer side
of every bounding box is exactly 20 pixels. `prepare_digit` does the same to any
picture, after finding the ink: the paper's brightness is estimated from the picture's
border (a smooth surface, so uneven light is taken out), the ink is what stands out from
it (dark ink on light paper or light ink on dark), faint specks are ignored, and strokes
much thinner than MNIST's are thickened.

Images already in MNIST's convention (28x28, light digit on black, centred, 20 pixels
tall or wide) are left as they are unless preparation is asked for: see `prepare_digit`.
"""

import bisect
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.lib import format as npy
from PIL import ExifTags, Image, UnidentifiedImageError

from keras_adder.core.constants import IMAGE_SIZE
from keras_adder.core.errors import KerasAdderError

MNIST_BOX = 20  # the digit's longer side, in pixels
MNIST_CENTRE = 14.0  # row and column of the centre of mass (0-based pixel indices)
# Median stroke width of the MNIST test digits (2 x area / perimeter of the pixels
# >= 128): 2.0 pixels; 5 % of them are thinner than 1.3. A stroke thinner than that
# after scaling (a fine pen on a big picture) nearly vanishes in 20x20, so it is
# thickened to MNIST's median.
MNIST_STROKE = 2.0
THIN_STROKE = 1.3
THICK_STROKE = 2.5  # MNIST: 75 % of digits are thinner than 2.4, 95 % than 3.1

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
MAX_NPY_IMAGES = 60_000  # all of MNIST's training images; ~47 MB as uint8
# How an array holding a picture scaled to 0-1 (a Keras input, say) is refused.
ZERO_TO_ONE = "values must be 0-255 (MNIST pixels); this array looks scaled to 0-1"

# predict flags an answer whose probability is below this as unsure: few right answers
# fall below it, and most mistakes do (docs/evaluation.md has the shares).
UNSURE_BELOW = 0.9

# Ink: what stands out from the paper by more than NOISE_SIGMAS times the paper's own
# texture, and at least MIN_CONTRAST grey levels (of 255) at its strongest.
NOISE_SIGMAS = 3.0
MIN_CONTRAST = 24.0
# A separate mark smaller than this fraction of the largest one is a speck, not ink.
SPECK_FRACTION = 0.05
MIN_MARK_PIXELS = 3


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
                return _upright_gray(image, path)
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


# EXIF orientation tag → the transposition that makes the picture upright.
_UPRIGHT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
            6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}


def _upright_gray(image, path):
    """An opened Pillow image → float32 grey levels, reduced and upright."""

    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
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

    prepare=True: MNIST's preparation, always: find the ink, crop to it, scale it into
    the 20x20 box (anti-aliased, aspect ratio kept), and place it in 28x28 with its
    centre of mass at the centre. prepare=False: use the picture as it is; it must be
    28x28 and in MNIST's convention already (light digit on black). prepare=None: True
    unless `looks_like_mnist(gray)`, so MNIST's own images pass through unchanged.
    The diagnostics (`empty`, `digits`) are filled in either way.
    """
    gray = np.asarray(gray, np.float32)
    if gray.ndim != 2 or gray.size == 0 or not np.all(np.isfinite(gray)):
        raise KerasAdderError(f"an image must be a 2-D array of finite grey levels, "
                              f"not shape {gray.shape}")
    if prepare is None:
        prepare = not looks_like_mnist(gray)
    ink, inverted, noise = _ink(gray)
    marks = _marks(ink, noise)
    digits = 0 if marks is None else marks[1]
    if not prepare:
        if gray.shape != (IMAGE_SIZE, IMAGE_SIZE):
            raise KerasAdderError(f"a {gray.shape[0]}x{gray.shape[1]} image cannot be used "
                                  "unprepared: only 28x28 ones in MNIST's convention")
        image = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return Prepared(image, False, False, marks is None, digits)
    if marks is None:
        return Prepared(np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8), True, inverted, True, 0)
    return Prepared(_mnist_image(ink, marks[0]), True, inverted, False, digits)


def looks_like_mnist(gray):
    """True for a picture already in MNIST's convention: 28x28, a light digit on black,
    its bounding box 14-21 pixels long, its centre of mass within a pixel of (14, 14).
    Every MNIST test image passes (their border is dark: outer 2-pixel ring's mean at
    most 8.3 of 255)."""
    gray = np.asarray(gray, np.float64)
    if gray.shape != (IMAGE_SIZE, IMAGE_SIZE) or gray.max() < 128:
        return False
    ring = np.ones(gray.shape, bool)
    ring[2:-2, 2:-2] = False
    if gray[ring].mean() > 16:
        return False
    rows, cols = np.nonzero(gray >= 32)
    longest = max(np.ptp(rows), np.ptp(cols)) + 1
    off_centre = np.hypot(*(_centre_of_mass(gray) - MNIST_CENTRE))
    return bool(14 <= longest <= 21 and off_centre <= 1.0)


def digit_problem(prepared):
    """Why a `Prepared` picture cannot be read as one digit (a sentence), or None."""
    if prepared.empty:
        return "no digit found: nothing stands out from the background (a blank image?)"
    if prepared.digits > 1:
        return (f"{prepared.digits} separate marks side by side look like "
                f"{prepared.digits} digits: give one digit per image")
    return None


def load_digit(path, prepare=None):
    """`load_image` then `prepare_digit`; a blank picture or one with several digits
    is a KerasAdderError naming the file."""
    prepared = prepare_digit(load_image(path), prepare)
    problem = digit_problem(prepared)
    if problem:
        raise KerasAdderError(f"{path}: {problem}")
    return prepared


def is_unsure(probability):
    """True when an answer's probability is below UNSURE_BELOW."""
    return probability < UNSURE_BELOW


def _centre_of_mass(image):
    total = image.sum()
    rows = (image.sum(axis=1) * np.arange(image.shape[0])).sum() / total
    cols = (image.sum(axis=0) * np.arange(image.shape[1])).sum() / total
    return np.array([rows, cols])


# --- Finding the ink -------------------------------------------------------------------


def _ink(gray):
    """How far each pixel stands out from the paper, in grey levels (ink ≥ 0), whether
    the ink is darker than the paper, and the paper's texture (a robust sigma)."""
    ring = np.zeros(gray.shape, bool)
    width = max(1, round(0.04 * min(gray.shape)))
    ring[:width], ring[-width:], ring[:, :width], ring[:, -width:] = True, True, True, True
    paper, noise = _paper(gray, ring)
    if noise > 0.1 * float(np.ptp(np.percentile(gray, [1, 99]))):
        # The ring is mostly ink (a tight crop): the paper is then the bulk of the picture.
        stride = max(1, int(np.sqrt(gray.size / 40_000)))
        sample = np.zeros(gray.shape, bool)
        sample[::stride, ::stride] = True
        paper, noise = _paper(gray, sample)
    diff = gray - paper
    # The ink is the side with more that stands out beyond the texture: a threshold
    # on brightness (127, or Otsu's) fails on grey paper, shadows or light ink.
    dark = np.clip(-diff - NOISE_SIGMAS * noise, 0, None).sum()
    light = np.clip(diff - NOISE_SIGMAS * noise, 0, None).sum()
    inverted = bool(dark > light)
    return np.clip(-diff if inverted else diff, 0, None), inverted, noise


def _paper(gray, where):
    """The paper's brightness under every pixel, and its texture (a robust sigma).

    A smooth surface is fitted to the pixels `where` (the border ring) by least trimmed
    squares: each refit uses the 35 % that fit best, so ink touching the border (tight
    crops, digits filling the frame) does not bend it as long as most of those pixels
    are paper. A quadratic (for big pictures) or a plane follows uneven light, but it
    can also bend through ink on one side and paper on the other: of the constant,
    plane and quadratic, the one whose best-fitting part fits most tightly wins (a
    stiffer one on near ties)."""
    rows, cols = np.nonzero(where)
    values = gray[where].astype(np.float64)
    bendiest = 0 if min(gray.shape) < 16 else 1 if min(gray.shape) < 64 else 2
    fits = [(*_trimmed_fit(_basis(rows, cols, gray.shape, degree), values), degree)
            for degree in range(bendiest + 1)]
    coefficients, noise, degree = min(fits, key=lambda fit: fit[1] * (1 + 0.1 * fit[2]))
    grid = np.mgrid[0:gray.shape[0], 0:gray.shape[1]]
    surface = _basis(grid[0].ravel(), grid[1].ravel(), gray.shape, degree) @ coefficients
    return surface.reshape(gray.shape).astype(np.float32), noise


def _basis(rows, cols, shape, degree):
    """Polynomial terms up to `degree` (0-2) of pixel coordinates scaled to [-1, 1]."""
    y = rows / max(shape[0] - 1, 1) * 2 - 1
    x = cols / max(shape[1] - 1, 1) * 2 - 1
    terms = [np.ones_like(x, dtype=np.float64), x, y, x * x, x * y, y * y]
    return np.stack(terms[:(1, 3, 6)[degree]], axis=-1)


def _trimmed_fit(design, values):
    """Least trimmed squares: (coefficients, robust sigma of the best-fitting part)."""
    keep = np.ones(len(values), bool)
    for _ in range(4):
        # Normal equations: at most 6 unknowns, and far faster than lstsq here.
        kept = design[keep]
        coefficients = np.linalg.solve(kept.T @ kept + 1e-9 * np.eye(design.shape[1]),
                                       kept.T @ values[keep])
        misfit = np.abs(values - design @ coefficients)
        keep = misfit <= np.percentile(misfit, 35)
    # 0.3186 sigma is the first quartile of |normal noise|.
    return coefficients, max(float(np.percentile(misfit, 25)) / 0.3186, 1.0)


def _otsu(values):
    """Otsu's threshold: the level that best splits the values into two classes."""
    counts, edges = np.histogram(values, bins=256, range=(0.0, float(values.max())))
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)
    above = below[-1] - below
    mass = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_below = mass / below
        mean_above = (mass[-1] - mass) / above
        between = below * above * (mean_below - mean_above) ** 2
    return float(edges[1:][np.nanargmax(np.where(above > 0, between, np.nan))])


def _marks(ink, noise):
    """The ink's marks: (mask of the marks kept, how many digits they look like), or
    None when there is no ink. Pixels below Otsu's threshold and specks are left out."""
    if float(ink.max()) < max(MIN_CONTRAST, 2 * NOISE_SIGMAS * noise):
        return None
    labels, stats = _label(ink > max(_otsu(ink), NOISE_SIGMAS * noise))
    if len(stats) == 0:
        return None
    areas = stats[:, 0]
    kept = np.nonzero(areas >= max(MIN_MARK_PIXELS, SPECK_FRACTION * areas.max()))[0]
    if len(kept) == 0:
        return None
    return np.isin(labels, kept + 1), _digit_groups(stats[kept])


def _label(mask):
    """8-connected components: (labels int32, 0 = background; stats [n, 5] of area,
    top, bottom, left, right), by runs of each row joined with union-find."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1)
    run_rows, run_starts = np.nonzero(steps == 1)
    run_ends = np.nonzero(steps == -1)[1]  # exclusive; same order as the starts
    parent = list(range(len(run_rows)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of_row = np.searchsorted(run_rows, np.arange(mask.shape[0] + 1)).tolist()
    starts, ends = run_starts.tolist(), run_ends.tolist()
    for i, row in enumerate(run_rows.tolist()):
        if row == 0:
            continue
        above = first_of_row[row - 1], first_of_row[row]
        # The runs above that touch this one, diagonally included: they end at or after
        # this start - 1 and start at or before this end (exclusive ends).
        low = bisect.bisect_left(ends, starts[i], *above)
        high = bisect.bisect_right(starts, ends[i], *above)
        for j in range(low, high):
            parent[root(j)] = root(i)
    roots = np.array([root(i) for i in range(len(run_rows))], np.int64)
    ids = np.unique(roots, return_inverse=True)[1] + 1 if len(roots) else roots
    labels = np.zeros(mask.shape, np.int32)
    stats = np.zeros((len(set(ids.tolist())), 5), np.int64)
    stats[:, 1:] = [mask.shape[0], -1, mask.shape[1], -1]
    for row, start, end, label in zip(run_rows, run_starts, run_ends, ids):
        labels[row, start:end] = label
        stat = stats[label - 1]
        stat[:] = (stat[0] + end - start, min(stat[1], row), max(stat[2], row),
                   min(stat[3], start), max(stat[4], end - 1))
    return labels, stats


def _digit_groups(stats):
    """How many digits the marks look like. Marks whose columns overlap (or nearly) are
    one group: a 5's flag, a 4 written in two strokes, a broken pen line. A group counts
    as a digit when it is at least half as tall as the tallest and has a tenth of the
    ink of the biggest."""
    groups = []  # [area, top, bottom, left, right]
    for area, top, bottom, left, right in stats[np.argsort(stats[:, 3])]:
        if groups:
            group = groups[-1]
            slack = 0.1 * max(group[2] - group[1] + 1, bottom - top + 1)
            if left <= group[4] + slack:
                groups[-1] = [group[0] + area, min(group[1], top), max(group[2], bottom),
                              group[3], max(group[4], right)]
                continue
        groups.append([area, top, bottom, left, right])
    heights = [group[2] - group[1] + 1 for group in groups]
    biggest = max(group[0] for group in groups)
    return sum(1 for group, height in zip(groups, heights)
               if height >= 0.5 * max(heights) and group[0] >= 0.1 * biggest)


# --- Cropping, scaling, centring -------------------------------------------------------


def _mnist_image(ink, mask):
    """The kept marks' ink → uint8 [28, 28]: cropped, thickened if thin, scaled into the
    20x20 box and placed with its centre of mass at (14, 14)."""
    # Keep the soft edge around each kept mark, drop everything else (specks, texture).
    near = _grey_dilate(mask.astype(np.float32), 1) > 0
    level = float(np.percentile(ink[mask], 80))  # the stroke's core becomes full white
    ink = np.where(near, np.clip(ink / level, 0.0, 1.0), 0.0).astype(np.float32)
    # The box holds the soft edge too: on a coarse scan it is a whole cell of the digit.
    rows, cols = np.nonzero(ink)
    crop = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    crop = _restroke(crop, mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1])
    return _centred(_fit_box(crop))


def _restroke(crop, mask):
    """Bring the stroke width, once scaled into the box, within MNIST's range: strokes
    thinner than THIN_STROKE (a fine pen on a big picture, which would nearly vanish)
    are widened to MNIST's median by grey dilation; strokes thicker than THICK_STROKE
    (a marker, a blob) are narrowed to THICK_STROKE by grey erosion."""
    longest = max(crop.shape)
    width = _stroke_width(mask)
    scaled = width * MNIST_BOX / longest
    if THIN_STROKE <= scaled <= THICK_STROKE:
        return crop
    # Dilating (eroding) by r grows (shrinks) the stroke and the crop by 2r: solve
    # (w ± 2r) / (L ± 2r) = target / box for r.
    ratio = (MNIST_STROKE if scaled < THIN_STROKE else THICK_STROKE) / MNIST_BOX
    radius = int(round(abs(ratio * longest - width) / (2 * (1 - ratio))))
    if radius == 0:
        return crop
    if scaled < THIN_STROKE:
        return _grey_dilate(np.pad(crop, radius), radius)
    thinned = -_grey_dilate(-crop, radius)
    rows, cols = np.nonzero(thinned > 0)
    if len(rows) == 0:
        return crop
    return thinned[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _stroke_width(mask):
    """Mean stroke width in pixels, 2 x area / perimeter (the measure behind
    MNIST_STROKE)."""
    padded = np.pad(mask, 1)
    perimeter = (np.count_nonzero(padded[1:] != padded[:-1])
                 + np.count_nonzero(padded[:, 1:] != padded[:, :-1]))
    return 2.0 * np.count_nonzero(mask) / max(perimeter, 1)


def _grey_dilate(image, radius):
    """Maximum over a (2 radius + 1)-pixel square, as two passes of shifted maxima."""
    out = image
    for axis in (0, 1):
        source, out = out, out.copy()
        for shift in range(1, radius + 1):
            ahead = [slice(None)] * 2
            behind = [slice(None)] * 2
            ahead[axis], behind[axis] = slice(shift, None), slice(None, -shift)
            np.maximum(out[tuple(ahead)], source[tuple(behind)], out=out[tuple(ahead)])
            np.maximum(out[tuple(behind)], source[tuple(ahead)], out=out[tuple(behind)])
    return out


def _fit_box(crop):
    """Scale (aspect ratio kept) so that the longer side is MNIST_BOX pixels, with
    Lanczos: anti-aliased when reducing, and when enlarging a coarse scan (8x8 cells)
    it keeps the strokes' shapes where bilinear blurs them into blobs; its ringing is
    clipped."""

    height, width = crop.shape
    scale = MNIST_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    box = np.asarray(Image.fromarray(crop.astype(np.float32)).resize(
        size, Image.Resampling.LANCZOS))
    return np.clip(box, 0.0, 1.0)


def _centred(box):
    """Paste the box into 28x28, moved by whole pixels (as MNIST was) so that its centre
    of mass is nearest to (14, 14); a digit whose mass is far off its box's middle is
    stopped at the edge rather than cut."""
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    height, width = box.shape
    com = _centre_of_mass(box)
    top = int(np.clip(np.floor(MNIST_CENTRE - com[0] + 0.5), 0, IMAGE_SIZE - height))
    left = int(np.clip(np.floor(MNIST_CENTRE - com[1] + 0.5), 0, IMAGE_SIZE - width))
    image[top:top + height, left:left + width] = box
    return np.rint(image * 255).astype(np.uint8)
