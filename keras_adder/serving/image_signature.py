"""The `serving_image` signature: encoded pictures in, prepared in the graph, answers out.

A TF Serving client with a photo or a canvas drawing sends the file's bytes; the
SavedModel checks them, decodes them and prepares them as MNIST was
(`keras_adder.data.preparation.prepare`), then answers through `serving_default`:

    inputs:  picture tf.string [N]  (a PNG, JPEG, BMP or GIF file's bytes; over REST
                                     {"b64": "<standard base64 of the file>"})
             number  int32 [N]      (0-9)
    outputs: digit, sum, digit_probabilities, sum_probabilities (as serving_default;
             digit and sum are -1 for a picture in which no ink was found),
             image       uint8 [N, 28, 28]  (what the model saw)
             ink_found   bool [N]           (False: a blank picture, answered -1)
             digits_seen int32 [N]          (groups of marks that look like separate
                                             digits; more than 1: one digit per picture)

Every limit is checked from the bytes and the headers before anything is decoded, and a
refused request fails with InvalidArgument (HTTP 400 in TF Serving) naming the picture
and the reason. Pictures are decoded and prepared one at a time, so the memory a
request needs is bounded by the largest picture it may hold, not by the batch.
"""

import base64

import tensorflow as tf

from keras_adder.core.constants import IMAGE_SIZE, MAX_PICTURE_BYTES, MAX_PICTURE_PIXELS
from keras_adder.data import preparation

IMAGE_SIGNATURE = "serving_image"

# The limits, with E (MAX_PICTURE_BYTES) and P (MAX_PICTURE_PIXELS) from core.constants
# (docs/serving.md gives the peak memory of the worst request they allow).
MAX_PICTURES = 64  # B: pictures in one request
MAX_REQUEST_PIXELS = 48_000_000  # T: all of a request's pictures together
# Transparent pixels show the paper: white, as a canvas drawing or a scan is.
PAPER = 255.0
# Pictures are reduced (area-averaged) to this longer side before the preparation, as
# keras_adder.data.pictures.WORK_SIDE: ample for a 20x20 result.
WORK_SIDE = 512

UNKNOWN, PNG, JPEG, BMP, GIF = 0, 1, 2, 3, 4
FORMATS = ["not a picture", "PNG", "JPEG", "BMP", "GIF"]
_HEAD = 32  # header bytes read for the format and the size
# Where a JPEG's EXIF orientation is looked for, bounded so that the work per picture is
# fixed: the Exif standard puts its segment first, and JFIF files put it second.
EXIF_WINDOW = 2**16
EXIF_SEGMENTS = 4
EXIF_ENTRIES = 64
ORIENTATION_TAG = 0x0112
# Grey from RGB with ITU-R 601-2 luma, as Pillow's convert("L") (keras_adder.data.pictures).
_LUMA = (0.299, 0.587, 0.114)

NOT_A_PICTURE = (
    "picture {} is not a PNG, JPEG, BMP or GIF file (its first bytes are none of theirs): "
    "send the bytes of the file itself; in a REST body, a string input carries them as "
    '{"b64": "<the file in standard base64>"}, not as the base64 text alone')


def _bytes_at(head, start, count, big_endian):
    """An unsigned integer from `count` bytes of `head` (int64 [_HEAD]) at `start`."""
    value = tf.constant(0, tf.int64)
    order = range(count) if big_endian else reversed(range(count))
    for i in order:
        value = value * 256 + head[start + i]
    return value


def _signed32(value):
    return tf.where(value >= 2**31, value - 2**32, value)


def _starts_with(head, magic):
    return tf.reduce_all(tf.equal(head[:len(magic)], list(magic)))


def _header(picture):
    """What the first bytes say, without decoding: (format code, width, height, an upper
    bound on the frames TensorFlow would decode, a problem code: 0 none, 1 a header
    that names no size (PNG without IHDR, OS/2 BMP))."""
    start = tf.strings.substr(picture, 0, _HEAD)  # shorter for a short string
    padded = tf.strings.substr(tf.strings.join([start, b"\0" * _HEAD]), 0, _HEAD)
    head = tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int64)
    head = tf.ensure_shape(head, [_HEAD])
    one, zero = tf.constant(1, tf.int64), tf.constant(0, tf.int64)
    is_png = _starts_with(head, b"\x89PNG\r\n\x1a\n")
    is_jpeg = _starts_with(head, b"\xff\xd8\xff")
    is_bmp = _starts_with(head, b"BM")
    is_gif = tf.logical_or(_starts_with(head, b"GIF87a"), _starts_with(head, b"GIF89a"))
    kind = tf.where(is_png, PNG, tf.where(is_jpeg, JPEG, tf.where(
        is_bmp, BMP, tf.where(is_gif, GIF, UNKNOWN))))

    def png():
        named = tf.reduce_all(tf.equal(head[12:16], list(b"IHDR")))
        return (_bytes_at(head, 16, 4, True), _bytes_at(head, 20, 4, True), one,
                tf.where(named, zero, one))

    def jpeg():
        # Reads the markers up to the frame header; a corrupt header fails here, still
        # before any pixel is decoded.
        shape = tf.cast(tf.io.extract_jpeg_shape(picture), tf.int64)
        return shape[1], shape[0], one, zero

    def bmp():
        # BITMAPINFOHEADER and later (40+ bytes) hold int32 sizes; the height is
        # negative for a top-down picture. OS/2's 12-byte header is refused.
        modern = _bytes_at(head, 14, 4, False) >= 40
        height = tf.abs(_signed32(_bytes_at(head, 22, 4, False)))
        return (_signed32(_bytes_at(head, 18, 4, False)), height, one,
                tf.where(modern, zero, one))

    def gif():
        # TensorFlow decodes every frame, each as large as the logical screen. A frame
        # starts with an image separator byte (0x2C), so their count bounds the frames.
        separators = tf.reduce_sum(tf.cast(tf.equal(tf.io.decode_raw(picture, tf.uint8), 0x2C),
                                           tf.int64))
        return (_bytes_at(head, 6, 2, False), _bytes_at(head, 8, 2, False),
                tf.maximum(separators, one), zero)

    def unknown():
        return zero, zero, one, zero

    width, height, frames, problem = tf.switch_case(kind, [unknown, png, jpeg, bmp, gif])
    return tf.cast(kind, tf.int32), width, height, frames, problem


def _refuse(ok, message, *values):
    """An assertion that names the first picture for which `ok` is False: each "{}" of
    `message` takes that picture's index, then its `values` in turn."""
    # One more element, so that an empty request has something to pick too.
    first = tf.argmin(tf.concat([tf.cast(ok, tf.int32), [0]], 0), output_type=tf.int32)
    texts = [tf.strings.as_string(first)]
    for value in values:
        value = tf.gather(tf.concat([value, tf.zeros([1], value.dtype)], 0), first)
        texts.append(value if value.dtype == tf.string else tf.strings.as_string(value))
    pieces = message.split("{}")
    joined = [pieces[0]]
    for text, piece in zip(texts, pieces[1:]):
        joined += [text, piece]
    return tf.debugging.Assert(tf.reduce_all(ok), [tf.strings.join(joined)])


def _in_order(checks):
    """Run the assertions one after the other, so that a request is refused for the
    first reason that applies (and a later check never sees what an earlier refused)."""
    done = []
    for check in checks:
        with tf.control_dependencies(done):
            done = [check()]
    return done


def _request_checks(picture, number):
    """The refusals decided from the request's shape and byte counts alone."""
    count = tf.shape(picture)[0]
    size = tf.cast(tf.strings.length(picture), tf.int64)
    return _in_order([
        lambda: tf.debugging.assert_equal(
            tf.shape(number)[0], count,
            message="picture and number must have the same batch size"),
        lambda: tf.debugging.assert_less_equal(
            count, MAX_PICTURES, message=f"a request may hold at most {MAX_PICTURES} pictures"),
        lambda: _refuse(size <= MAX_PICTURE_BYTES,
                        f"picture {{}} has {{}} bytes, over the limit of {MAX_PICTURE_BYTES:,}",
                        size),
    ])


def _header_checks(headers):
    """The refusals decided from each picture's header, before anything is decoded."""
    kind, width, height, frames, problem = headers
    pixels = width * height
    names = tf.gather(tf.constant(FORMATS), kind)
    total = tf.reduce_sum(pixels * frames)
    return _in_order([
        lambda: _refuse(kind != UNKNOWN, NOT_A_PICTURE),
        lambda: _refuse(problem == 0, "picture {} is a {} whose header gives no usable size "
                        "(a PNG without IHDR first, or an OS/2 BMP)", names),
        lambda: _refuse((width > 0) & (height > 0), "picture {} is a {} of {}x{}: no pixels",
                        names, width, height),
        lambda: _refuse(pixels <= MAX_PICTURE_PIXELS, "picture {} is a {} of {}x{} = {} "
                        f"pixels, over the limit of {MAX_PICTURE_PIXELS:,}",
                        names, width, height, pixels),
        lambda: _refuse(pixels * frames <= MAX_PICTURE_PIXELS,
                        "picture {} is a GIF of {}x{} that may hold {} frames, all of which "
                        "TensorFlow decodes: over the limit of "
                        f"{MAX_PICTURE_PIXELS:,} pixels in all (send one frame, or a PNG)",
                        width, height, frames),
        lambda: tf.debugging.Assert(total <= MAX_REQUEST_PIXELS, [tf.strings.join([
            "the request holds ", tf.strings.as_string(total), " pixels in all (its "
            f"pictures together), over the limit of {MAX_REQUEST_PIXELS:,}"])]),
    ])


def _gray(pixels):
    """uint8 [H, W, 1-4 channels] (grey, grey and alpha, RGB, RGBA) → float32 grey levels
    [H, W] (0-255), alpha composited onto PAPER. Channel by channel: a 12-MP picture
    never exists as a float32 [H, W, 4] tensor (192 MB)."""
    channels = tf.shape(pixels)[2]

    def channel(i):
        return tf.cast(pixels[:, :, i], tf.float32)

    luma = tf.cond(channels >= 3,
                   lambda: _LUMA[0] * channel(0) + _LUMA[1] * channel(1) + _LUMA[2] * channel(2),
                   lambda: channel(0))

    def composited():
        alpha = channel(channels - 1) / 255.0
        return luma * alpha + PAPER * (1.0 - alpha)

    return tf.round(tf.cond(tf.equal(channels % 2, 0), composited, lambda: luma))


def _exif_orientation(picture):
    """A JPEG's EXIF orientation (1-8; 1 when it has none, or none that is read here),
    from the TIFF header and first directory of its Exif segment, which one of its first
    EXIF_SEGMENTS segments within the first EXIF_WINDOW bytes must start. Every read is
    clipped to the window: damaged EXIF data reads as some number, never out of bounds."""
    window = tf.strings.substr(picture, 0, EXIF_WINDOW)
    window = tf.strings.join([window, b"\0" * 16])  # a marker read past the end is 0
    data = tf.cast(tf.io.decode_raw(window, tf.uint8), tf.int32)
    last = tf.shape(data)[0] - 1

    def at(index):
        return tf.gather(data, tf.clip_by_value(index, 0, last))

    position, tiff = tf.constant(2), tf.constant(-1)  # after the start-of-image marker
    for _ in range(EXIF_SEGMENTS):
        marker = at(position) * 256 + at(position + 1)
        exif = (marker == 0xFFE1) & tf.reduce_all(
            tf.equal(at(position + 4 + tf.range(6)), list(b"Exif\0\0")))
        tiff = tf.where((tiff < 0) & exif, position + 10, tiff)
        # Application segments (APP0-APP15) and comments precede the image data.
        skippable = ((marker >= 0xFFE0) & (marker <= 0xFFEF)) | (marker == 0xFFFE)
        position = tf.where(skippable, position + 2 + at(position + 2) * 256
                            + at(position + 3), last + 1)
    little = tf.reduce_all(tf.equal(at(tiff + tf.range(2)), list(b"II")))
    big = tf.reduce_all(tf.equal(at(tiff + tf.range(2)), list(b"MM")))

    def number(index, count):  # unsigned, in the TIFF header's byte order
        places = tf.range(count)
        weights = tf.where(little, 256 ** places, 256 ** (count - 1 - places))
        return tf.reduce_sum(at(index[..., tf.newaxis] + places) * weights, -1)

    directory = tiff + number(tiff + 4, 4)
    entries = directory + 2 + 12 * tf.range(EXIF_ENTRIES)
    found = ((number(entries, 2) == ORIENTATION_TAG)
             & (tf.range(EXIF_ENTRIES) < number(directory, 2)))
    value = tf.reduce_max(tf.where(found, number(entries + 8, 2), 0))
    read = (tiff >= 0) & (little | big) & (value >= 1) & (value <= 8)
    return tf.where(read, value, 1)


def upright(gray, orientation):
    """Grey levels [H, W] stored as EXIF orientation 1-8 says → as they are to be seen
    (what Pillow's ImageOps.exif_transpose does)."""
    return tf.switch_case(orientation - 1, [
        lambda: gray,
        lambda: tf.reverse(gray, [1]),  # 2: mirrored left-right
        lambda: tf.reverse(gray, [0, 1]),  # 3: turned 180 degrees
        lambda: tf.reverse(gray, [0]),  # 4: mirrored top-bottom
        lambda: tf.transpose(gray),  # 5: mirrored along the main diagonal
        lambda: tf.reverse(tf.transpose(gray), [1]),  # 6: to be turned 90 degrees clockwise
        lambda: tf.reverse(tf.transpose(gray), [0, 1]),  # 7: mirrored along the other diagonal
        lambda: tf.reverse(tf.transpose(gray), [0]),  # 8: to be turned 90 degrees anticlockwise
    ])


def decode_gray(picture, kind):
    """A checked picture → float32 grey levels [H, W] (0-255), alpha composited onto
    PAPER, reduced to at most WORK_SIDE pixels on its longer side, and a JPEG turned as
    its EXIF orientation says (after the reduction: a smaller copy to turn)."""
    gray = tf.switch_case(kind - 1, [
        lambda: _gray(tf.io.decode_png(picture, channels=0)),
        lambda: _gray(tf.io.decode_jpeg(picture, channels=3)),  # grey and CMYK as RGB
        lambda: _gray(tf.io.decode_bmp(picture, channels=0)),
        lambda: _gray(tf.io.decode_gif(picture)[0]),
    ])[:, :, tf.newaxis]
    shape = tf.shape(gray)[:2]
    longer = tf.reduce_max(shape)
    reduced = tf.maximum(1, tf.cast(tf.round(tf.cast(shape, tf.float64) * WORK_SIDE
                                             / tf.cast(longer, tf.float64)), tf.int32))
    gray = tf.cond(longer > WORK_SIDE,
                   lambda: tf.image.resize(gray, reduced, method="area"), lambda: gray)
    return tf.cond(tf.equal(kind, JPEG),
                   lambda: upright(gray[:, :, 0], _exif_orientation(picture)),
                   lambda: gray[:, :, 0])


def _each(fn, pictures, dtypes, shapes=None):
    """fn(picture, index) for each picture, one at a time; the stacked results. Unlike
    tf.map_fn, which first copies the whole batch into a TensorArray, each picture's
    bytes are taken (tf.gather) only when its turn comes."""
    count = tf.shape(pictures)[0]
    shapes = shapes or [[]] * len(dtypes)
    arrays = [tf.TensorArray(dtype, size=count, element_shape=shape)
              for dtype, shape in zip(dtypes, shapes)]

    def step(i, arrays):
        results = fn(tf.gather(pictures, i), i)
        return i + 1, [array.write(i, result) for array, result in zip(arrays, results)]

    _, arrays = tf.while_loop(lambda i, _: i < count, step, (0, arrays),
                              parallel_iterations=1)
    return [array.stack() for array in arrays]


def _prepared(picture, kind):
    prepared = preparation.prepare(decode_gray(picture, kind), preparation.AUTO)
    return prepared["image"], tf.logical_not(prepared["empty"]), prepared["digits"]


def make_image_serving_function(serve):
    """The picture signature, answering through `serve` (the raw-pixel signature)."""

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="picture"),
        tf.TensorSpec([None], tf.int32, name="number"),
    ], autograph=False)
    def serve_image(picture, number):
        picture = tf.ensure_shape(picture, [None])
        number = tf.ensure_shape(number, [None])
        with tf.control_dependencies(_request_checks(picture, number)):
            headers = _each(lambda one, _: _header(one), picture,
                            [tf.int32, tf.int64, tf.int64, tf.int64, tf.int64])
        with tf.control_dependencies(_header_checks(headers)):
            # One picture at a time: the memory is bounded by the largest one.
            image, ink, digits = _each(
                lambda one, i: _prepared(one, headers[0][i]), picture,
                [tf.uint8, tf.bool, tf.int32], [[IMAGE_SIZE, IMAGE_SIZE], [], []])
        outputs = dict(serve(image=image, number=number))
        for head in ("digit", "sum"):
            outputs[head] = tf.where(ink, outputs[head], -1)
        outputs.update(image=image, ink_found=ink, digits_seen=digits)
        return outputs

    return serve_image


def picture_request_bodies(pictures, numbers):
    """TF Serving REST :predict bodies for `serving_image` (row form, columnar form):
    each picture's bytes as {"b64": standard base64}, the only way JSON carries them."""
    encoded = [{"b64": base64.b64encode(picture).decode("ascii")} for picture in pictures]
    numbers = [int(number) for number in numbers]
    rows = {"signature_name": IMAGE_SIGNATURE,
            "instances": [{"picture": picture, "number": number}
                          for picture, number in zip(encoded, numbers)]}
    columns = {"signature_name": IMAGE_SIGNATURE,
               "inputs": {"picture": encoded, "number": numbers}}
    return rows, columns
