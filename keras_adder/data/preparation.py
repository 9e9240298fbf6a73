"""MNIST's preparation of a person's digit picture, in TensorFlow ops: the one implementation.

`prepare(gray, mode)` takes decoded grey pixels (float32 [H, W], 0-255, either polarity)
and returns the MNIST-style uint8 [28, 28] image with what it noticed (ink found, ink darker
than the paper, how many digits the marks look like). `predict`, the demo and the notebook
call it eagerly (through `pictures.prepare_digit`); it is a `tf.function` with a fixed
input signature, so a SavedModel can carry it.

MNIST's own preparation (LeCun, Cortes and Burges): the digit's bounding box is scaled,
keeping its aspect ratio, to fit a 20x20 box with anti-aliasing, then placed in a 28x28
image so that the centre of mass of its pixels is at the centre. Measured on the 10,000
MNIST test images: every centre of mass lies within half a pixel of row 14, column 14
(0-based pixel indices, so the shift was a whole number of pixels), and the longer side
of every bounding box is exactly 20 pixels. `prepare` does the same to any picture, after
finding the ink: the paper's brightness is estimated from the picture's border (a smooth
surface, so uneven light is taken out), the ink is what stands out from it (dark ink on
light paper or light ink on dark), faint specks are ignored, and strokes much thinner or
thicker than MNIST's are brought into its range. A picture already in MNIST's convention
is used as it is, at 28x28 or enlarged by a whole factor (taken back to 28x28 by
sampling the centre of each block).

Only core TensorFlow ops that exist in TensorFlow 2.12, the oldest the serving docs promise
(TensorFlow Addons does not load in TF Serving), and no import from the rest of the
package: `serving_compat/preparation_check.py` loads this file alone in the TF 2.12 venv.
Connected marks are labelled by a bounded `tf.while_loop` (label propagation with pointer
jumping), since there is no core op for it.
"""

import tensorflow as tf

IMAGE_SIZE = 28  # keras_adder.core.constants.IMAGE_SIZE (not imported: see above)
MNIST_BOX = 20  # the digit's longer side, in pixels
MNIST_CENTRE = 14.0  # row and column of the centre of mass (0-based pixel indices)
# Stroke width (2 x area / perimeter of the pixels >= 128) of MNIST's 60,000 training
# digits: median 1.96 pixels, 0.5 % thinner than 1.0, 1 % thicker than 3.6. A stroke
# outside that range after scaling (a fine pen or a marker on a big picture) is brought
# back into it: a thin one to the median, a thick one to the edge of the range. Strokes
# inside it are left as they are, so an enlarged MNIST digit comes back as it was.
MNIST_STROKE = 2.0
THIN_STROKE = 1.0
THICK_STROKE = 3.6
# The digit's size is measured where its ink reaches this fraction of the stroke's core:
# a blurred edge (an enlarged or photographed digit) fades out over a pixel or more of
# the result beyond where the stroke ends, and would make the digit look smaller.
EDGE = 0.3
# When reducing, the sampling grid is placed at the sharpest of PHASES x PHASES offsets
# (within one pixel of the result): an enlarged 28x28 picture is then sampled on its
# own pixel grid, not across it.
PHASES = 4

# Ink: what stands out from the paper by more than NOISE_SIGMAS times the paper's own
# texture, and at least MIN_CONTRAST grey levels (of 255) at its strongest.
NOISE_SIGMAS = 3.0
MIN_CONTRAST = 24.0
# A separate mark smaller than this fraction of the largest one is a speck, not ink.
SPECK_FRACTION = 0.05
MIN_MARK_PIXELS = 3
# Labels are pixel numbers held in float32 (max pooling spreads them), exact below 2**24:
# pictures are reduced to 512 pixels a side before this (pictures.WORK_SIDE).
MAX_PIXELS = 2 ** 24

# A picture in MNIST's convention enlarged by a whole factor k (each side 28 k pixels) is
# taken back to 28x28 by sampling the centre of each k x k block, when that agrees with
# the blocks' averages within this many grey levels on average: an enlargement (of 1,000
# MNIST validation digits enlarged by Pillow's nearest, bilinear, bicubic or Lanczos
# resize, k = 2, 3, 4 and 10: at most 6.2), not detail finer than a block, which
# sampling would lose.
ENLARGED_MAD = 8.0

# `mode`: prepare unless the picture already looks like MNIST, always, or never (a 28x28
# picture in MNIST's convention used as it is).
AUTO, ALWAYS, NEVER = 0, 1, 2

GRAY = tf.TensorSpec([None, None], tf.float32, name="gray")
MODE = tf.TensorSpec([], tf.int32, name="mode")


@tf.function(input_signature=[GRAY, MODE], autograph=False)
def prepare(gray, mode):
    """Grey pixels [H, W] (0-255) and a mode → {"image": uint8 [28, 28] light digit on
    black, "prepared": bool (False: used as it was), "inverted": bool (dark ink on light
    paper), "empty": bool (no ink found), "digits": int32 (groups of marks side by side
    that look like separate digits)}. The diagnostics are filled in whatever the mode."""
    tf.debugging.assert_less_equal(tf.size(gray), MAX_PIXELS,
                                   message="picture too big to label (reduce it first)")
    ink, inverted, noise = _ink(gray)
    found, mask, stats = _marks(ink, noise)
    digits = tf.cond(found, lambda: _digit_groups(stats), lambda: tf.constant(0, tf.int32))
    square = tf.reduce_all(tf.equal(tf.shape(gray), IMAGE_SIZE))
    small, faithful = _sampled_back(gray)
    mnist_like = tf.logical_and(faithful, looks_like_mnist(small))
    as_is = tf.logical_or(tf.logical_and(tf.equal(mode, NEVER), square),
                          tf.logical_and(tf.equal(mode, AUTO), mnist_like))
    zeros = tf.zeros([IMAGE_SIZE, IMAGE_SIZE], tf.uint8)
    image = tf.cond(
        as_is,
        lambda: tf.cast(tf.clip_by_value(tf.round(small), 0.0, 255.0), tf.uint8),
        lambda: tf.cond(found, lambda: _mnist_image(ink, mask, noise), lambda: zeros))
    image = tf.ensure_shape(image, [IMAGE_SIZE, IMAGE_SIZE])
    return {"image": image, "prepared": tf.logical_not(as_is),
            "inverted": tf.logical_and(inverted, tf.logical_not(as_is)),
            "empty": tf.logical_not(found), "digits": digits}


@tf.function(input_signature=[GRAY], autograph=False)
def looks_like_mnist(gray):
    """True for a picture already in MNIST's convention: 28x28, a light digit on black,
    its bounding box 14-21 pixels long, its centre of mass within a pixel of (14, 14).
    Every MNIST test image passes (their border is dark: outer 2-pixel ring's mean at
    most 8.3 of 255)."""
    square = tf.reduce_all(tf.equal(tf.shape(gray), IMAGE_SIZE))
    return tf.cond(square, lambda: _mnist_like_square(gray), lambda: tf.constant(False))


def _sampled_back(gray):
    """(grey [28, 28], whether it is the picture in MNIST's size): a square picture of
    28 k pixels a side sampled at the centre of each k x k block, without anti-aliasing
    (a 28x28 picture itself): the middle pixel for an odd k; for an even k the cubic
    through the middle four pixels (k >= 4: halves the middle two's error on bicubic
    enlargements) or the middle two's mean (k = 2: the cubic's four would reach into
    the neighbouring blocks). For k >= 2 it is the picture if it agrees with the blocks'
    averages (ENLARGED_MAD) and its digit's box is MNIST's 20 pixels (19-21 at grey
    level 32, where 99.97 % of MNIST's training digits have 20): a small digit in a big
    frame is prepared, not taken as it is. Anything else: (zeros, False)."""
    height, width = tf.shape(gray)[0], tf.shape(gray)[1]
    whole = tf.logical_and(tf.equal(height, width), tf.equal(height % IMAGE_SIZE, 0))

    def sampled():
        picture = gray[:, :, tf.newaxis]
        size = [IMAGE_SIZE, IMAGE_SIZE]
        centres = tf.cond(height >= 3 * IMAGE_SIZE,
                          lambda: tf.image.resize(picture, size, "bicubic"),
                          lambda: tf.image.resize(picture, size, "bilinear"))[:, :, 0]
        averages = tf.image.resize(picture, size, "area")[:, :, 0]
        top, bottom, left, right = _bounds(centres >= 32)
        longest = tf.maximum(bottom - top, right - left) + 1
        mnist_box = tf.logical_and(longest >= MNIST_BOX - 1, longest <= MNIST_BOX + 1)
        return centres, tf.logical_and(
            tf.reduce_mean(tf.abs(centres - averages)) <= ENLARGED_MAD,
            tf.logical_or(tf.equal(height, IMAGE_SIZE), mnist_box))

    def nothing():
        return tf.zeros([IMAGE_SIZE, IMAGE_SIZE]), tf.constant(False)

    return tf.cond(whole, sampled, nothing)


def _mnist_like_square(gray):
    gray = tf.cast(gray, tf.float64)
    inner = tf.pad(tf.ones([IMAGE_SIZE - 4, IMAGE_SIZE - 4], tf.bool), [[2, 2], [2, 2]])
    ring_mean = tf.reduce_mean(tf.boolean_mask(gray, tf.logical_not(inner)))
    top, bottom, left, right = _bounds(gray >= 32)
    longest = tf.cast(tf.maximum(bottom - top, right - left) + 1, tf.float64)
    offset = _centre_of_mass(gray) - MNIST_CENTRE
    off_centre = tf.sqrt(tf.reduce_sum(offset * offset))
    return tf.reduce_all([tf.reduce_max(gray) >= 128, ring_mean <= 16, longest >= 14,
                          longest <= 21, off_centre <= 1.0])


# --- Small tools -----------------------------------------------------------------------


def _percentile(values, q):
    """numpy's default ("linear") percentile of a 1-D tensor, q in 0-100."""
    ordered = tf.sort(tf.reshape(values, [-1]))
    last = tf.cast(tf.size(ordered) - 1, tf.float64)
    position = tf.constant(q / 100.0, tf.float64) * last
    below = tf.floor(position)
    fraction = tf.cast(position - below, ordered.dtype)
    low = tf.gather(ordered, tf.cast(below, tf.int32))
    high = tf.gather(ordered, tf.cast(tf.minimum(below + 1, last), tf.int32))
    return low + (high - low) * fraction


def _bounds(mask):
    """(top, bottom, left, right) of the True pixels of a 2-D mask (inclusive, int32)."""
    rows = tf.reduce_any(mask, axis=1)
    cols = tf.reduce_any(mask, axis=0)
    height, width = tf.shape(mask)[0], tf.shape(mask)[1]
    top = tf.cast(tf.argmax(tf.cast(rows, tf.int32)), tf.int32)
    bottom = height - 1 - tf.cast(tf.argmax(tf.cast(rows[::-1], tf.int32)), tf.int32)
    left = tf.cast(tf.argmax(tf.cast(cols, tf.int32)), tf.int32)
    right = width - 1 - tf.cast(tf.argmax(tf.cast(cols[::-1], tf.int32)), tf.int32)
    return top, bottom, left, right


def _centre_of_mass(image):
    """(row, column) of the centre of mass, float64 [2]."""
    image = tf.cast(image, tf.float64)
    total = tf.reduce_sum(image)
    rows = tf.range(tf.shape(image)[0], dtype=tf.float64)
    cols = tf.range(tf.shape(image)[1], dtype=tf.float64)
    return tf.stack([tf.reduce_sum(tf.reduce_sum(image, axis=1) * rows) / total,
                     tf.reduce_sum(tf.reduce_sum(image, axis=0) * cols) / total])


def _grey_dilate(image, radius):
    """Maximum over a (2 radius + 1)-pixel square (pixels outside the image ignored), as
    a column then a row pass of `tf.nn.dilation2d`."""
    side = 2 * radius + 1
    out = image[tf.newaxis, :, :, tf.newaxis]
    for shape in ([side, 1, 1], [1, side, 1]):
        out = tf.nn.dilation2d(out, tf.zeros(shape, image.dtype), [1, 1, 1, 1], "SAME",
                               "NHWC", [1, 1, 1, 1])
    return out[0, :, :, 0]


# --- Finding the ink -------------------------------------------------------------------


def _ink(gray):
    """How far each pixel stands out from the paper, in grey levels (ink ≥ 0), whether
    the ink is darker than the paper, and the paper's texture (a robust sigma)."""
    height, width = tf.shape(gray)[0], tf.shape(gray)[1]
    side = tf.cast(tf.minimum(height, width), tf.float64)
    ring = tf.cast(tf.maximum(tf.round(0.04 * side), 1.0), tf.int32)
    rows, cols = tf.range(height)[:, tf.newaxis], tf.range(width)[tf.newaxis, :]
    inside = ((rows >= ring) & (rows < height - ring)) & ((cols >= ring) & (cols < width - ring))
    paper, noise = _paper(gray, tf.logical_not(inside))
    spread = tf.cast(_percentile(gray, 99) - _percentile(gray, 1), tf.float64)

    def from_the_bulk():
        # The ring is mostly ink (a tight crop): the paper is then the bulk of the picture.
        stride = tf.maximum(1, tf.cast(tf.sqrt(tf.cast(height * width, tf.float64)
                                               / 40_000), tf.int32))
        sample = tf.equal(rows % stride, 0) & tf.equal(cols % stride, 0)
        return _paper(gray, sample)

    paper, noise = tf.cond(noise > 0.1 * spread, from_the_bulk, lambda: (paper, noise))
    diff = gray - paper
    # The ink is the side with more that stands out beyond the texture: a threshold
    # on brightness (127, or Otsu's) fails on grey paper, shadows or light ink.
    beyond = tf.cast(NOISE_SIGMAS * noise, tf.float32)
    dark = tf.reduce_sum(tf.nn.relu(-diff - beyond))
    light = tf.reduce_sum(tf.nn.relu(diff - beyond))
    inverted = dark > light
    return tf.nn.relu(tf.where(inverted, -diff, diff)), inverted, noise


def _paper(gray, where):
    """The paper's brightness under every pixel (float32), and its texture (float64).

    A smooth surface is fitted to the pixels `where` (the border ring) by least trimmed
    squares: each refit uses the 35 % that fit best, so ink touching the border (tight
    crops, digits filling the frame) does not bend it as long as most of those pixels
    are paper. A quadratic (for big pictures) or a plane follows uneven light, but it
    can also bend through ink on one side and paper on the other: of the constant,
    plane and quadratic, the one whose best-fitting part fits most tightly wins (a
    stiffer one on near ties)."""
    shape = tf.shape(gray)
    at = tf.where(where)
    values = tf.cast(tf.gather_nd(gray, at), tf.float64)
    design = _basis(at[:, 0], at[:, 1], shape)
    side = tf.minimum(shape[0], shape[1])
    bendiest = tf.where(side < 16, 0, tf.where(side < 64, 1, 2))
    coefficients, scores, noises = [], [], []
    for degree, terms in enumerate((1, 3, 6)):
        fitted, noise = _trimmed_fit(design[:, :terms], values)
        coefficients.append(tf.pad(fitted, [[0, 6 - terms]]))
        allowed = tf.less_equal(degree, bendiest)
        never = tf.constant(float("inf"), tf.float64)
        scores.append(tf.where(allowed, noise * (1 + 0.1 * degree), never))
        noises.append(noise)
    best = tf.argmin(tf.stack(scores), output_type=tf.int32)
    grid = tf.where(tf.ones(shape, tf.bool))
    surface = tf.linalg.matvec(_basis(grid[:, 0], grid[:, 1], shape),
                               tf.gather(tf.stack(coefficients), best))
    return tf.cast(tf.reshape(surface, shape), tf.float32), tf.gather(tf.stack(noises), best)


def _basis(rows, cols, shape):
    """The six polynomial terms up to degree 2 of pixel coordinates scaled to [-1, 1]."""
    scale = tf.cast(tf.maximum(shape - 1, 1), tf.float64)
    y = tf.cast(rows, tf.float64) / scale[0] * 2 - 1
    x = tf.cast(cols, tf.float64) / scale[1] * 2 - 1
    return tf.stack([tf.ones_like(x), x, y, x * x, x * y, y * y], axis=-1)


def _trimmed_fit(design, values):
    """Least trimmed squares: (coefficients, robust sigma of the best-fitting part)."""
    keep = tf.ones_like(values)
    terms = tf.shape(design)[1]
    for _ in range(4):
        # Normal equations: at most 6 unknowns (tf.linalg.solve of the weighted Gram matrix).
        kept = design * keep[:, tf.newaxis]
        gram = tf.matmul(kept, design, transpose_a=True) + 1e-9 * tf.eye(terms, dtype=tf.float64)
        moments = tf.linalg.matvec(kept, values, transpose_a=True)[:, tf.newaxis]
        coefficients = tf.linalg.solve(gram, moments)[:, 0]
        misfit = tf.abs(values - tf.linalg.matvec(design, coefficients))
        keep = tf.cast(misfit <= _percentile(misfit, 35), tf.float64)
    # 0.3186 sigma is the first quartile of |normal noise|.
    return coefficients, tf.maximum(_percentile(misfit, 25) / 0.3186, 1.0)


def _otsu(values):
    """Otsu's threshold on 256 bins from 0 to the largest value: the upper edge of the
    bin that best splits the values into two classes."""
    values = tf.reshape(tf.cast(values, tf.float64), [-1])
    top = tf.maximum(tf.reduce_max(values), 1e-9)
    value_range = tf.stack([tf.constant(0.0, tf.float64), top])
    counts = tf.cast(tf.histogram_fixed_width(values, value_range, 256), tf.float64)
    edges = tf.linspace(tf.constant(0.0, tf.float64), top, 257)
    centres = (edges[:-1] + edges[1:]) / 2
    below = tf.cumsum(counts)
    above = below[-1] - below
    mass = tf.cumsum(counts * centres)
    mean_below = tf.math.divide_no_nan(mass, below)
    mean_above = tf.math.divide_no_nan(mass[-1] - mass, above)
    between = below * above * (mean_below - mean_above) ** 2
    valid = (below > 0) & (above > 0)
    between = tf.where(valid, between, tf.constant(-1.0, tf.float64))
    return tf.gather(edges[1:], tf.argmax(between, output_type=tf.int32))


# --- The marks -------------------------------------------------------------------------


def _marks(ink, noise):
    """(whether ink was found, bool mask of the marks kept, their stats float64 [n, 5]
    of area, top, bottom, left, right). Pixels below Otsu's threshold and specks are left
    out."""
    strongest = tf.cast(tf.reduce_max(ink), tf.float64)
    strong = strongest >= tf.maximum(2 * NOISE_SIGMAS * noise, MIN_CONTRAST)
    level = tf.maximum(_otsu(ink), NOISE_SIGMAS * noise)
    mask = tf.logical_and(tf.cast(ink, tf.float64) > level, strong)
    labels = _label(mask)
    at = tf.where(mask)
    ids, index = tf.unique(tf.gather_nd(labels, at))
    count = tf.size(ids)
    area = tf.math.unsorted_segment_sum(tf.ones_like(index, tf.float64), index, count)
    rows, cols = tf.cast(at[:, 0], tf.float64), tf.cast(at[:, 1], tf.float64)
    stats = tf.stack([area,
                      tf.math.unsorted_segment_min(rows, index, count),
                      tf.math.unsorted_segment_max(rows, index, count),
                      tf.math.unsorted_segment_min(cols, index, count),
                      tf.math.unsorted_segment_max(cols, index, count)], axis=1)
    biggest = tf.reduce_max(tf.concat([area, [0.0]], 0))
    kept = area >= tf.maximum(tf.constant(MIN_MARK_PIXELS, tf.float64), SPECK_FRACTION * biggest)
    kept_mask = tf.scatter_nd(at, tf.gather(kept, index), tf.shape(mask, out_type=tf.int64))
    return tf.reduce_any(kept), kept_mask, tf.boolean_mask(stats, kept)


def _label(mask):
    """8-connected components: int32 labels (0 = background; each mark's label is one
    more than the number of one of its pixels), by label propagation (the largest label
    of the 3x3 neighbourhood) with pointer jumping (a pixel takes the label of the pixel
    its label names), in a tf.while_loop bounded by the pixel count."""
    shape = tf.shape(mask)
    numbers = tf.reshape(tf.range(1, tf.size(mask) + 1, dtype=tf.float32), shape)
    start = tf.where(mask, numbers, 0.0)

    def step(labels, _):
        spread = tf.nn.max_pool2d(labels[tf.newaxis, :, :, tf.newaxis], 3, 1, "SAME")[0, :, :, 0]
        spread = tf.where(mask, tf.maximum(labels, spread), 0.0)
        pointed = tf.gather(tf.reshape(spread, [-1]),
                            tf.maximum(tf.cast(spread, tf.int32) - 1, 0))
        new = tf.where(mask, tf.maximum(spread, pointed), 0.0)
        return new, tf.reduce_any(tf.not_equal(new, labels))

    labels, _ = tf.while_loop(lambda labels, changed: changed, step, (start, tf.constant(True)),
                              maximum_iterations=tf.size(mask))
    return tf.cast(labels, tf.int32)


def _digit_groups(stats):
    """How many digits the marks look like. Marks whose columns overlap (or nearly) are
    one group: a 5's flag, a 4 written in two strokes, a broken pen line. A group counts
    as a digit when it is at least half as tall as the tallest and has a tenth of the
    ink of the biggest."""
    stats = tf.gather(stats, tf.argsort(stats[:, 3], stable=True))

    def join(state, mark):
        group = state[0]
        slack = 0.1 * tf.maximum(group[2] - group[1] + 1, mark[2] - mark[1] + 1)
        merge = mark[3] <= group[4] + slack
        joined = tf.stack([group[0] + mark[0], tf.minimum(group[1], mark[1]),
                           tf.maximum(group[2], mark[2]), group[3],
                           tf.maximum(group[4], mark[4])])
        return tf.where(merge, joined, mark), tf.logical_not(merge)

    nothing = tf.constant([0.0, 0.0, 0.0, 0.0, -1e9], tf.float64)
    groups, starts = tf.scan(join, stats, initializer=(nothing, tf.constant(True)))
    ends = tf.concat([starts[1:], [True]], 0)
    groups = tf.boolean_mask(groups, ends)
    heights = groups[:, 2] - groups[:, 1] + 1
    digits = ((heights >= 0.5 * tf.reduce_max(heights))
              & (groups[:, 0] >= 0.1 * tf.reduce_max(groups[:, 0])))
    return tf.reduce_sum(tf.cast(digits, tf.int32))


# --- Cropping, scaling, centring -------------------------------------------------------


def _mnist_image(ink, mask, noise):
    """The kept marks' ink → uint8 [28, 28]: cropped, restroked, scaled into the 20x20
    box and placed with its centre of mass at (14, 14)."""
    # Keep the soft edge around each kept mark, drop everything else (specks, texture):
    # the pixels next to a mark, and those up to one pixel of the result away from it
    # that stand out from the paper's texture.
    top, bottom, left, right = _bounds(mask)
    longest = tf.cast(tf.maximum(bottom - top, right - left) + 1, tf.float64)
    radius = tf.cast(tf.math.ceil(longest / MNIST_BOX), tf.int32)
    marks = tf.cast(mask, tf.float32)
    beyond = tf.cast(NOISE_SIGMAS * noise, tf.float32)
    near = (_grey_dilate(marks, 1) > 0) | ((_grey_dilate(marks, radius) > 0) & (ink > beyond))
    level = _percentile(tf.boolean_mask(ink, mask), 80)  # the stroke's core: full white
    ink = tf.where(near, tf.clip_by_value(ink / level, 0.0, 1.0), 0.0)
    # The crop holds the soft edge too: on a coarse scan it is a whole cell of the digit.
    top, bottom, left, right = _bounds(ink > 0)
    crop = ink[top:bottom + 1, left:right + 1]
    crop = _restroke(crop, mask[top:bottom + 1, left:right + 1])
    return _centred(_fit_box(crop))


def _restroke(crop, mask):
    """Bring the stroke width, once scaled into the box, within MNIST's range: strokes
    thinner than THIN_STROKE (a fine pen on a big picture, which would nearly vanish)
    are widened to MNIST's median by grey dilation; strokes thicker than THICK_STROKE
    (a marker, a blob) are narrowed to THICK_STROKE by grey erosion."""
    longest = tf.cast(tf.reduce_max(tf.shape(crop)), tf.float64)
    width = _stroke_width(mask)
    scaled = width * MNIST_BOX / longest
    thin, thick = scaled < THIN_STROKE, scaled > THICK_STROKE
    # Dilating (eroding) by r grows (shrinks) the stroke and the crop by 2r: solve
    # (w ± 2r) / (L ± 2r) = target / box for r.
    ratio = tf.where(thin, tf.constant(MNIST_STROKE, tf.float64), THICK_STROKE) / MNIST_BOX
    radius = tf.cast(tf.round(tf.abs(ratio * longest - width) / (2 * (1 - ratio))), tf.int32)

    def thickened():
        return _grey_dilate(tf.pad(crop, [[radius, radius], [radius, radius]]), radius)

    def thinned():
        eroded = -_grey_dilate(-crop, radius)
        top, bottom, left, right = _bounds(eroded > 0)
        return tf.cond(tf.reduce_any(eroded > 0),
                       lambda: eroded[top:bottom + 1, left:right + 1], lambda: crop)

    change = tf.logical_and(tf.logical_or(thin, thick), radius > 0)
    return tf.cond(change, lambda: tf.cond(thin, thickened, thinned), lambda: crop)


def _stroke_width(mask):
    """Mean stroke width in pixels, 2 x area / perimeter (the measure behind
    MNIST_STROKE)."""
    padded = tf.pad(mask, [[1, 1], [1, 1]])
    perimeter = (tf.math.count_nonzero(tf.not_equal(padded[1:], padded[:-1]))
                 + tf.math.count_nonzero(tf.not_equal(padded[:, 1:], padded[:, :-1])))
    area = tf.math.count_nonzero(mask)
    return 2.0 * tf.cast(area, tf.float64) / tf.cast(tf.maximum(perimeter, 1), tf.float64)


def _fit_box(crop):
    """Scale (aspect ratio kept) so that the longer side of the ink at least EDGE strong
    is MNIST_BOX pixels; the fainter edge around it comes along. Reducing averages the
    area under each pixel (what anti-aliasing a pen's trace does) on the sharpest
    sampling grid (`_sharpest_reduction`); enlarging a coarse scan (8x8 cells) uses
    Lanczos (a = 3), which keeps the strokes' shapes where bilinear blurs them into
    blobs, its ringing clipped. Returns the result cropped to its ink, at most 24 pixels
    a side (the edge never pushes a digit out of 28x28)."""
    top, bottom, left, right = _bounds(crop >= EDGE)
    core = tf.cast(tf.maximum(bottom - top, right - left) + 1, tf.float64)
    shape = tf.cast(tf.shape(crop), tf.float64)
    scale = tf.minimum(MNIST_BOX / core, (MNIST_BOX + 4) / tf.reduce_max(shape))

    def enlarged():
        size = tf.maximum(1, tf.cast(tf.round(shape * scale), tf.int32))
        box = tf.image.resize(crop[:, :, tf.newaxis], size, method="lanczos3", antialias=True)
        return _padded(box[:, :, 0])

    box = tf.clip_by_value(tf.cond(scale < 1, lambda: _sharpest_reduction(crop, scale),
                                   enlarged), 0.0, 1.0)
    top, bottom, left, right = _bounds(box > 0)
    return box[top:bottom + 1, left:right + 1]


def _sharpest_reduction(crop, scale):
    """Area-average `crop` by `scale` (< 1) with the sampling grid shifted by each of
    PHASES x PHASES offsets up to one result pixel; the sharpest result (largest sum of
    squares: the least ink smeared across pixel borders), padded to 28x28."""
    shape = tf.cast(tf.shape(crop), tf.float64)
    candidates = []
    for row in range(PHASES):
        for col in range(PHASES):
            offset = tf.cast(tf.round(tf.constant([row, col], tf.float64)
                                      / (PHASES * scale)), tf.int32)
            size = tf.cast(tf.math.ceil((shape + tf.cast(offset, tf.float64)) * scale), tf.int32)
            extent = tf.cast(tf.round(tf.cast(size, tf.float64) / scale), tf.int32)
            after = tf.maximum(0, extent - offset - tf.shape(crop))
            placed = tf.pad(crop, tf.stack([offset, after], axis=1))
            box = tf.image.resize(placed[:, :, tf.newaxis], size, method="area")
            candidates.append(_padded(box[:, :, 0]))
    candidates = tf.stack(candidates)
    sharpest = tf.argmax(tf.reduce_sum(candidates * candidates, axis=[1, 2]))
    return tf.gather(candidates, sharpest)


def _padded(box):
    """A box of at most 28x28 → 28x28, the box at the top left."""
    height, width = tf.shape(box)[0], tf.shape(box)[1]
    return tf.pad(box, [[0, IMAGE_SIZE - height], [0, IMAGE_SIZE - width]])


def _centred(box):
    """Paste the box into 28x28, moved by whole pixels (as MNIST was) so that its centre
    of mass is nearest to (14, 14); a digit whose mass is far off its box's middle is
    stopped at the edge rather than cut."""
    height, width = tf.shape(box)[0], tf.shape(box)[1]
    com = _centre_of_mass(box)
    corner = tf.cast(tf.floor(MNIST_CENTRE - com + 0.5), tf.int32)
    top = tf.clip_by_value(corner[0], 0, IMAGE_SIZE - height)
    left = tf.clip_by_value(corner[1], 0, IMAGE_SIZE - width)
    image = tf.pad(box, [[top, IMAGE_SIZE - height - top], [left, IMAGE_SIZE - width - left]])
    return tf.cast(tf.round(image * 255), tf.uint8)
