"""The `serving_image` signature (keras_adder/serving/image_signature.py), run as TF
Serving runs it: serving_compat/image_check.py loads the exported SavedModel into a
Session, under the project's TensorFlow and under the oldest one the docs promise, and
feeds it real files' bytes. Its answers are compared with `serving_default`'s on the raw
pixels, loaded with tf.saved_model.load in this process.
"""

import base64
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from keras_adder.serving import image_signature as signature
from keras_adder.serving.rest import tensors_from_rest_body

REPO = Path(__file__).resolve().parents[1]
IMAGE_CHECK = REPO / "serving_compat" / "image_check.py"
OLDEST_PYTHON = REPO / ".venv-serving-compat" / "bin" / "python"
# All of MNIST's test images, at the share the issue asks for.
PARITY_PAIRS = 10_000
PARITY_SHARE = 0.999
FORMAT_EXAMPLES = 10


def encoded(picture, fmt="PNG", **options):
    """A PIL image or a uint8 array → the bytes of its file in `fmt`."""
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **options)
    return buffer.getvalue()


def enlarged(image):
    return Image.fromarray(image).resize((112, 112))


# The transposition that stores an upright picture as EXIF orientation 1-8 says it is.
STORED_AS = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
             6: "ROTATE_90", 7: "TRANSVERSE", 8: "ROTATE_270"}


def exif_bytes(orientation, big_endian=False, tag=0x0112, pointer=8):
    """An Exif segment's payload as cameras write it: a TIFF header in either byte
    order whose first directory, right after it, holds the camera's make, then `tag`
    (the orientation's, unless another is asked) with the value `orientation`. The
    header points to the directory, unless another `pointer` is asked."""
    order = ">" if big_endian else "<"
    entries = [struct.pack(order + "HHI", 0x010F, 2, 4) + b"Cam\0",
               struct.pack(order + "HHIH", tag, 3, 1, orientation) + bytes(2)]
    tiff = ((b"MM" if big_endian else b"II") + struct.pack(order + "HI", 42, pointer)
            + struct.pack(order + "H", len(entries))
            + b"".join(entries) + bytes(4))
    return b"Exif\0\0" + tiff


def exif_jpeg(upright, orientation, big_endian=False, jfif=True):
    """A JPEG (RGB, quality 95) of the PIL image `upright` stored as `orientation` says,
    with that EXIF tag; jfif=False drops the JFIF segment, so that Exif comes first."""
    stored = upright.convert("RGB")
    if orientation in STORED_AS:
        stored = stored.transpose(getattr(Image.Transpose, STORED_AS[orientation]))
    data = encoded(stored, "JPEG", quality=95, exif=exif_bytes(orientation, big_endian))
    if not jfif:
        assert data[2:4] == b"\xff\xe0"
        data = data[:2] + data[4 + int.from_bytes(data[4:6], "big"):]
    return data


def case(pictures, numbers=None):
    numbers = list(range(len(pictures))) if numbers is None else numbers
    return {"picture": [base64.b64encode(p).decode() for p in pictures],
            "number": [int(n) % 10 for n in numbers]}


def patched(data, offset, values):
    data = bytearray(data)
    data[offset:offset + len(values)] = values
    return bytes(data)


def good_cases(test_images):
    """Cases that must be answered: the parity set, each format, alpha, a blank."""
    digits = test_images[:FORMAT_EXAMPLES]
    transparent = []  # black everywhere; only alpha draws the digit (dark on clear paper)
    for image in digits:
        alpha = np.asarray(enlarged(image))
        rgba = np.zeros(alpha.shape + (4,), np.uint8)
        rgba[..., 3] = alpha
        transparent.append(encoded(rgba))
    blank = encoded(np.full((100, 100), 255, np.uint8))
    # The parity pairs, in requests of the largest size the signature takes.
    pairs = [encoded(enlarged(image)) for image in test_images[:PARITY_PAIRS]]
    parity = {f"enlarged PNG {start}": case(pairs[start:start + signature.MAX_PICTURES],
                                            range(start, min(start + signature.MAX_PICTURES, PARITY_PAIRS)))
              for start in range(0, PARITY_PAIRS, signature.MAX_PICTURES)}
    return parity | {
        "MNIST PNG": case([encoded(image) for image in digits]),
        "JPEG": case([encoded(enlarged(image).convert("RGB"), "JPEG", quality=95)
                      for image in digits]),
        "CMYK JPEG": case([encoded(enlarged(image).convert("CMYK"), "JPEG", quality=95)
                           for image in digits]),
        "BMP": case([encoded(enlarged(image), "BMP") for image in digits]),
        "GIF": case([encoded(enlarged(image), "GIF") for image in digits]),
        # Orientations 1-8 and 1-2 again, both byte orders, Exif first or after JFIF.
        "EXIF-turned JPEG": case([exif_jpeg(enlarged(image), i % 8 + 1, big_endian=i % 2 == 1,
                                            jfif=i % 4 < 2) for i, image in enumerate(digits)]),
        "transparent paper": case(transparent),
        "blank among digits": case([encoded(enlarged(digits[0])), blank,
                                    encoded(enlarged(digits[1]))]),
        "empty batch": case([]),
    }


def animated_gif(frames, side):
    pictures = []
    for i in range(frames):  # each frame differs, so none is merged away
        frame = Image.new("L", (side, side), 255)
        ImageDraw.Draw(frame).text((i % side, i // side), "7", fill=0)
        pictures.append(frame)
    return encoded(pictures[0], "GIF", save_all=True, append_images=pictures[1:])


def refused_cases(test_images):
    """{name: (case, words its refusal must contain)}: one per limit and refusal."""
    png = encoded(enlarged(test_images[0]))
    bmp = encoded(enlarged(test_images[0]), "BMP")
    big = Image.new("L", (4000, 3001), 255)  # 12,004,000 pixels
    wide = encoded(Image.new("L", (3500, 2800), 255))  # 9.8 MP: 5 make 49 MP
    side = 200  # 301 frames of 200x200 = 12,040,000 pixels
    limit = f"{signature.MAX_PICTURE_PIXELS:,}"
    return {
        "text": (case([png, b"1 2 3"]), ["picture 1 is not a PNG, JPEG, BMP or GIF",
                                         "b64", "the file in standard base64"]),
        "base64 text": (case([base64.b64encode(png)]), ["picture 0 is not a PNG", "b64"]),
        "too many bytes": (case([png + bytes(signature.MAX_PICTURE_BYTES + 1 - len(png))]),
                           [f"picture 0 has {signature.MAX_PICTURE_BYTES + 1} bytes, over the "
                            f"limit of {signature.MAX_PICTURE_BYTES:,}"]),
        "PNG pixels": (case([encoded(big)]), [f"picture 0 is a PNG of 4000x3001 = 12004000 "
                                              f"pixels, over the limit of {limit}"]),
        "JPEG pixels": (case([png, encoded(big, "JPEG")]),
                        ["picture 1 is a JPEG of 4000x3001 = 12004000 pixels"]),
        "BMP pixels": (case([patched(bmp, 18, (5000).to_bytes(4, "little")
                                     + (-5000).to_bytes(4, "little", signed=True))]),
                       [f"picture 0 is a BMP of 5000x5000 = 25000000 pixels, over the limit "
                        f"of {limit}"]),
        "GIF frames": (case([animated_gif(301, side)]),
                       ["picture 0 is a GIF of 200x200 that may hold", "send one frame"]),
        "request pixels": (case([wide] * 5), [
            "the request holds 49000000 pixels in all (its pictures together), over the limit of "
            f"{signature.MAX_REQUEST_PIXELS:,}"]),
        "too many pictures": (case([png] * (signature.MAX_PICTURES + 1)),
                              [f"a request may hold at most {signature.MAX_PICTURES} pictures"]),
        "two pictures, one number": (case([png, png], [3]),
                                     ["picture and number must have the same batch size"]),
        "PNG without IHDR": (case([patched(png, 12, b"JUNK")]),
                             ["picture 0 is a PNG whose header gives no usable size"]),
        "OS/2 BMP": (case([patched(bmp, 14, (12).to_bytes(4, "little"))]),
                     ["picture 0 is a BMP whose header gives no usable size"]),
        "no pixels": (case([patched(png, 16, bytes(4))]), ["picture 0 is a PNG of 0x112: no pixels"]),
        "number 10": (case([png], [0]) | {"number": [10]},
                      ["number must be an integer from 0 to 9"]),
    }


def run_image_check(python, model, cases, folder):
    path = folder / "cases.json"
    path.write_text(json.dumps(cases))
    result = subprocess.run([str(python), str(IMAGE_CHECK), str(model), str(path)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cases(mnist):
    _, (test_images, _) = mnist
    refused = refused_cases(test_images)
    return good_cases(test_images), refused


@pytest.fixture(scope="module")
def raw_answers(trained_run, mnist):
    """serving_default on the raw pixels of the parity images (tf.saved_model.load)."""
    import tensorflow as tf

    _, (test_images, _) = mnist
    serve = tf.saved_model.load(trained_run["export_path"]).signatures["serving_default"]
    numbers = np.arange(PARITY_PAIRS, dtype=np.int32) % 10
    parts = [serve(image=tf.constant(test_images[start:start + 1000]),
                   number=tf.constant(numbers[start:start + 1000]))
             for start in range(0, PARITY_PAIRS, 1000)]  # serving_default takes 1,024 at most
    return {key: np.concatenate([part[key].numpy() for part in parts]) for key in parts[0]}


def reports_for(python, trained_run, cases, tmp_path_factory):
    good, refused = cases
    everything = dict(good) | {name: request for name, (request, _) in refused.items()}
    folder = tmp_path_factory.mktemp("image_check")
    return run_image_check(python, trained_run["export_path"], everything, folder)


@pytest.fixture(scope="module")
def project_report(trained_run, cases, tmp_path_factory):
    return reports_for(sys.executable, trained_run, cases, tmp_path_factory)


@pytest.fixture(scope="module")
def oldest_report(trained_run, cases, tmp_path_factory):
    assert OLDEST_PYTHON.is_file(), (
        f"{OLDEST_PYTHON} is missing: build it with `make .venv-serving-compat/.installed` "
        "(`make test` does)")
    return reports_for(OLDEST_PYTHON, trained_run, cases, tmp_path_factory)


REPORTS = ["project_report", "oldest_report"]


@pytest.mark.slow
@pytest.mark.parametrize("report", REPORTS)
def test_both_signatures_are_served(report, request):
    report = request.getfixturevalue(report)
    served = [name for name in report["signatures"] if not name.startswith("__")]
    assert served == ["serving_default", "serving_image"]


@pytest.mark.slow
@pytest.mark.parametrize("report", REPORTS)
def test_enlarged_mnist_pngs_answer_as_raw_pixels(report, request, raw_answers):
    answers = request.getfixturevalue(report)["cases"]
    parts = [answers[f"enlarged PNG {start}"]["outputs"]
             for start in range(0, PARITY_PAIRS, signature.MAX_PICTURES)]
    outputs = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    same = (outputs["digit"] == raw_answers["digit"]) & (outputs["sum"] == raw_answers["sum"])
    assert same.mean() >= PARITY_SHARE, f"{(~same).sum()} of {PARITY_PAIRS} answers differ"
    # A few MNIST digits are drawn in separate strokes side by side (a broken 5, 7 or 4).
    assert outputs["ink_found"].all() and (outputs["digits_seen"] >= 1).all()
    assert (outputs["digits_seen"] == 1).mean() >= 0.99
    assert outputs["image"].shape == (PARITY_PAIRS, 28, 28)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MNIST PNG", "JPEG", "CMYK JPEG", "BMP", "GIF",
                                  "EXIF-turned JPEG", "transparent paper"])
def test_every_format_answers_as_raw_pixels(name, project_report, raw_answers, mnist):
    _, (test_images, _) = mnist
    outputs = project_report["cases"][name]["outputs"]
    assert outputs["digit"] == raw_answers["digit"][:FORMAT_EXAMPLES].tolist()
    assert outputs["sum"] == raw_answers["sum"][:FORMAT_EXAMPLES].tolist()
    assert all(outputs["ink_found"])
    if name == "MNIST PNG":  # already MNIST-like: used exactly as it is
        np.testing.assert_array_equal(outputs["image"], test_images[:FORMAT_EXAMPLES])


@pytest.mark.slow
def test_exif_turned_jpegs_are_turned_under_the_oldest_tensorflow(oldest_report,
                                                                   project_report):
    name = "EXIF-turned JPEG"
    oldest, project = (report["cases"][name]["outputs"]
                       for report in (oldest_report, project_report))
    assert oldest["digit"] == project["digit"] and oldest["sum"] == project["sum"]
    np.testing.assert_array_equal(oldest["image"], project["image"])


def test_exif_orientation_is_read_as_pillow_reads_it():
    """Each orientation, in both byte orders, Exif first or after JFIF, against Pillow's
    reading; a picture Pillow would not turn (no tag, a value out of 1-8, damaged or cut
    EXIF data) is read as 1, without an error."""
    import tensorflow as tf

    upright = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
    files = {(orientation, big_endian, jfif): exif_jpeg(upright, orientation, big_endian, jfif)
             for orientation in range(1, 9) for big_endian in (False, True)
             for jfif in (False, True)}
    plain = encoded(upright.convert("RGB"), "JPEG")
    files |= {
        "no EXIF": plain,
        "another tag": encoded(upright, "JPEG", exif=exif_bytes(6, tag=0x0110)),
        "value 9": encoded(upright, "JPEG", exif=exif_bytes(9)),
        "directory past the end": encoded(upright, "JPEG", exif=exif_bytes(6, pointer=2**20)),
        "cut after the TIFF header": exif_jpeg(upright, 6, jfif=False)[:30],
        "start of image only": plain[:2],
    }
    for name, data in files.items():
        got = int(signature._exif_orientation(tf.constant(data)).numpy())
        if isinstance(name, tuple):
            assert got == name[0] == Image.open(io.BytesIO(data)).getexif()[0x0112], name
        else:
            assert got == 1, name


def test_upright_turns_as_pillows_exif_transpose():
    import tensorflow as tf

    upright = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
    for orientation in range(1, 9):
        data = exif_jpeg(upright, orientation, jfif=False)
        stored = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
        turned = signature.upright(tf.constant(stored), tf.constant(orientation)).numpy()
        pillow = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"))
        np.testing.assert_array_equal(turned, pillow, err_msg=str(orientation))


@pytest.mark.slow
@pytest.mark.parametrize("report", REPORTS)
def test_a_blank_picture_is_no_ink_not_an_error(report, request, raw_answers):
    outputs = request.getfixturevalue(report)["cases"]["blank among digits"]["outputs"]
    assert outputs["ink_found"] == [True, False, True]
    assert outputs["digit"][1] == outputs["sum"][1] == -1
    assert not np.any(outputs["image"][1])
    assert [outputs["digit"][0], outputs["digit"][2]] == raw_answers["digit"][:2].tolist()


@pytest.mark.slow
def test_an_empty_request_gets_empty_outputs(project_report):
    outputs = project_report["cases"]["empty batch"]["outputs"]
    assert np.array(outputs["image"]).size == 0
    assert all(len(value) == 0 for value in outputs.values())


@pytest.mark.slow
@pytest.mark.parametrize("report", REPORTS)
def test_every_refusal_says_why(report, request, cases):
    answers = request.getfixturevalue(report)["cases"]
    for name, (_, words) in cases[1].items():
        answer = answers[name]
        assert answer.get("error") == "InvalidArgumentError", (name, answer)
        for word in words:
            assert word in answer["message"], (name, answer["message"])


def test_the_export_check_refuses_an_image_signature_that_differs():
    """check_export also calls serving_image: wrong images or answers stop the export."""
    import tensorflow as tf

    from keras_adder.core.errors import KerasAdderError
    from keras_adder.serving.saved_model import check_image_signature

    images = np.zeros([2, 28, 28], np.uint8)
    images[:, 10:18, 13:15] = 255
    served = {"digit": tf.constant([1, 1]), "sum": tf.constant([1, 2])}

    def answering(image, digit, ink=(True, True)):
        return lambda picture, number: {"image": tf.constant(image), "digit": tf.constant(digit),
                                        "sum": tf.constant([1, 2]), "ink_found": tf.constant(ink)}

    check_image_signature(answering(images, [1, 1]), images, [0, 1], served)
    with pytest.raises(KerasAdderError, match="does not see MNIST's PNGs as they are"):
        check_image_signature(answering(images * 0, [1, 1]), images, [0, 1], served)
    with pytest.raises(KerasAdderError, match="answers digit unlike serving_default"):
        check_image_signature(answering(images, [1, 7]), images, [0, 1], served)
    with pytest.raises(KerasAdderError, match="finds ink unlike the pictures hold"):
        check_image_signature(answering(images, [1, 1], ink=(True, False)), images, [0, 1],
                              served)
    # A blank check image is answered "no ink" (-1), never as serving_default's guess.
    images[1] = 0
    blank = {"image": images, "digit": [1, -1], "sum": [1, -1], "ink_found": (True, False)}
    check_image_signature(lambda picture, number: {key: tf.constant(value)
                                                   for key, value in blank.items()},
                          images, [0, 1], served)
    with pytest.raises(KerasAdderError, match="answers digit unlike serving_default"):
        check_image_signature(answering(images, [1, 1], ink=(True, False)), images, [0, 1],
                              served)


# --- REST bodies with {"b64": ...} ------------------------------------------------------

EXAMPLES = REPO / "saved_models" / "examples"


def test_picture_example_bodies_are_what_the_writer_gives(mnist):
    """saved_models/examples/picture_*.json: the first three test images drawn as a
    person would (warm-up's drawings), with the numbers 5, 9, 0."""
    from keras_adder.serving.warmup import drawings

    _, (test_images, _) = mnist
    rows, columns = signature.picture_request_bodies(drawings(test_images[:3]), [5, 9, 0])
    assert json.loads((EXAMPLES / "picture_instances.json").read_text()) == rows
    assert json.loads((EXAMPLES / "picture_inputs.json").read_text()) == columns


@pytest.mark.slow
@pytest.mark.parametrize("name", ["picture_instances.json", "picture_inputs.json"])
def test_picture_rest_bodies_get_the_right_answers(name, trained_run):
    import tensorflow as tf

    body = json.loads((EXAMPLES / name).read_text())
    assert body["signature_name"] == signature.IMAGE_SIGNATURE
    serve = tf.saved_model.load(trained_run["export_path"]).signatures[body["signature_name"]]
    # Parsed as TF Serving parses it: {"b64": ...} becomes the picture's bytes.
    tensors = tensors_from_rest_body(body, serve.structured_input_signature[1])
    answer = serve(**{name: tf.constant(array) for name, array in tensors.items()})
    assert answer["digit"].numpy().tolist() == [7, 2, 1]
    assert answer["sum"].numpy().tolist() == [12, 11, 1]
    assert answer["ink_found"].numpy().all()
