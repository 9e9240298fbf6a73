"""`python -m keras_adder.predict`: images in, the exported model's answers out."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keras_adder import predict
from keras_adder.cli import run
from keras_adder.core.errors import KerasAdderError
from keras_adder.data import pictures as images
from keras_adder.data.pipeline import model_inputs

REPO = Path(__file__).resolve().parents[1]


def predict_json(capsys, *argv):
    rows = predict.main([*argv, "--json"])
    output = json.loads(capsys.readouterr().out)
    assert output["predictions"] == rows
    return output


def test_mnist_test_images_match_the_keras_model(trained_run, trained_model, mnist, capsys):
    _, (test_images, test_labels) = mnist
    indices = list(range(100, 130))
    numbers = [i * 3 % 10 for i in indices]
    base = Path(trained_run["export_path"]).parent  # a base path: the highest version
    output = predict_json(capsys, "--model", str(base),
                          "--mnist-test-index", *map(str, indices),
                          "--number", *map(str, numbers))
    assert output["model"] == trained_run["export_path"]
    rows = output["predictions"]
    expected = trained_model.predict(model_inputs(test_images[indices], np.array(numbers)),
                                     verbose=0)
    assert [row["source"] for row in rows] == [f"mnist-test[{i}]" for i in indices]
    assert [row["number"] for row in rows] == numbers
    assert [row["label"] for row in rows] == test_labels[indices].tolist()
    assert [row["digit"] for row in rows] == expected["digit"].argmax(axis=1).tolist()
    assert [row["sum"] for row in rows] == expected["sum"].argmax(axis=1).tolist()
    np.testing.assert_allclose([row["digit_probability"] for row in rows],
                               expected["digit"].max(axis=1), atol=1e-5)
    np.testing.assert_allclose([row["sum_probability"] for row in rows],
                               expected["sum"].max(axis=1), atol=1e-5)
    right = [row["digit"] == row["label"] and row["sum"] == row["label"] + row["number"]
             for row in rows]
    assert np.mean(right) >= 0.9


def test_highest_version_is_numeric_not_alphabetical(trained_run, tmp_path, capsys):
    (tmp_path / "2").symlink_to(trained_run["export_path"])
    (tmp_path / "10").symlink_to(trained_run["export_path"])
    (tmp_path / ".staging-11-123").mkdir()  # an export in progress is not a version
    output = predict_json(capsys, "--model", str(tmp_path), "--mnist-test-index", "0",
                          "--number", "1")
    assert output["model"] == str(tmp_path / "10")


def test_table_has_a_row_per_image(trained_run, trained_model, mnist, tmp_path, capsys):
    _, (test_images, test_labels) = mnist
    np.save(tmp_path / "three.npy", test_images[:3])
    predict.main(["--model", trained_run["export_path"], str(tmp_path / "three.npy"),
                  "--number", "4"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"model: {trained_run['export_path']}"
    assert lines[1].split() == ["image", "number", "digit", "p(digit)", "sum", "p(sum)", "note"]
    assert len(lines) == 5
    expected = trained_model.predict(model_inputs(test_images[:3], np.full(3, 4)), verbose=0)
    for i, line in enumerate(lines[2:]):
        cells, digit, total = line.split(), expected["digit"][i], expected["sum"][i]
        assert cells[:3] == [f"{tmp_path / 'three.npy'}[{i}]", "4", str(digit.argmax())]
        assert cells[4] == str(total.argmax())
        # Printed with 3 decimals; the SavedModel's probabilities are within 1e-5.
        assert float(cells[3]) == pytest.approx(digit.max(), abs=5e-4 + 1e-5)
        assert float(cells[5]) == pytest.approx(total.max(), abs=5e-4 + 1e-5)
        unsure = min(digit.max(), total.max()) < images.UNSURE_BELOW
        assert cells[6:] == (["unsure"] if unsure else [])


def test_answers_below_the_threshold_are_flagged_unsure():
    outputs = {"digit": np.array([3, 3]), "sum": np.array([5, 5]),
               "digit_probabilities": np.full((2, 10), 0.01),
               "sum_probabilities": np.full((2, 19), 0.01)}
    outputs["digit_probabilities"][:, 3] = [0.95, images.UNSURE_BELOW - 0.01]
    outputs["sum_probabilities"][:, 5] = [0.97, 0.99]
    rows = predict.prediction_rows(["a", "b"], [2, 2], [None, None], outputs)
    assert [row["unsure"] for row in rows] == [False, True]
    assert predict.format_table(rows).splitlines()[2].endswith("unsure")


# --- Image files -----------------------------------------------------------------------


def write_picture(path, mnist_image, *, dark_on_light, scale=4, mode="L", size=None):
    """An MNIST digit as a bigger picture file, the way a person might draw or scan it."""
    pixels = 255 - mnist_image if dark_on_light else mnist_image
    picture = Image.fromarray(pixels).resize((28 * scale, 28 * scale), Image.Resampling.NEAREST)
    if size:  # a non-square canvas, the digit in its middle
        canvas = Image.new("L", size, 255 if dark_on_light else 0)
        canvas.paste(picture, ((size[0] - picture.width) // 2, (size[1] - picture.height) // 2))
        picture = canvas
    picture.convert(mode).save(path)
    return path


@pytest.mark.parametrize("name, options", [
    ("light_on_dark.png", dict(dark_on_light=False)),
    ("dark_on_light.png", dict(dark_on_light=True)),
    ("dark_on_light_rgb.jpg", dict(dark_on_light=True, mode="RGB")),
    ("wide.png", dict(dark_on_light=True, size=(168, 112))),
])
def test_image_files_become_mnist_like(mnist, tmp_path, name, options):
    _, (test_images, _) = mnist
    original = test_images[7]
    loaded = images.load_digit(write_picture(tmp_path / name, original, **options)).image
    assert loaded.dtype == np.uint8 and loaded.shape == (28, 28)
    assert loaded[0].max() < 40 and loaded.max() > 200  # light digit, dark border
    # Re-prepared as MNIST was prepared: the same digit, up to resampling and JPEG.
    assert np.corrcoef(loaded.ravel(), original.ravel())[0, 1] > 0.9


def test_transparent_background_counts_as_white(mnist, tmp_path):
    _, (test_images, _) = mnist
    digit = test_images[7]
    rgba = np.zeros((28, 28, 4), np.uint8)  # black ink, alpha = ink; elsewhere transparent
    rgba[..., 3] = digit
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ink.png")
    loaded = images.load_digit(tmp_path / "ink.png").image
    assert np.corrcoef(loaded.ravel(), digit.ravel())[0, 1] > 0.95


def test_pictures_and_arrays_get_the_right_digits(trained_run, mnist, tmp_path, capsys):
    _, (test_images, test_labels) = mnist
    files = [str(write_picture(tmp_path / "a.png", test_images[0], dark_on_light=True)),
             str(write_picture(tmp_path / "b.jpg", test_images[1], dark_on_light=False,
                               mode="RGB"))]
    np.save(tmp_path / "one.npy", test_images[2])
    np.save(tmp_path / "two.npy", test_images[3:5].astype(np.float64))
    files += [str(tmp_path / "one.npy"), str(tmp_path / "two.npy")]
    rows = predict_json(capsys, *files, "--number", "1", "2", "3", "4", "5",
                        "--model", trained_run["export_path"])["predictions"]
    assert [row["source"] for row in rows] == [
        files[0], files[1], files[2], f"{files[3]}[0]", f"{files[3]}[1]"]
    assert [row["digit"] for row in rows] == test_labels[:5].tolist()
    assert [row["sum"] for row in rows] == (test_labels[:5] + [1, 2, 3, 4, 5]).tolist()
    assert all("label" not in row for row in rows)


def test_show_draws_the_inputs_with_predictions(trained_run, tmp_path, capsys):
    predict.main(["--model", trained_run["export_path"], "--mnist-test-index", "0", "1", "2",
                  "--number", "5", "--show", str(tmp_path / "out.png")])
    with Image.open(tmp_path / "out.png") as picture:
        assert picture.format == "PNG" and picture.width > 200
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary left


# --- Pictures through the serving_image signature --------------------------------------


def served_image_signature(export_path):
    """The SavedModel's serving_image signature, loaded with TensorFlow's own loader."""
    import tensorflow as tf

    return tf.saved_model.load(str(export_path)).signatures["serving_image"]


def exif_rotated(path, mnist_image):
    """A dark-on-light JPEG stored turned a quarter, with the EXIF tag that turns it back
    (as phones store photos): TensorFlow's decoder ignores the tag."""
    picture = Image.fromarray(255 - mnist_image).resize((112, 112), Image.Resampling.NEAREST)
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to view"
    picture.transpose(Image.Transpose.ROTATE_90).convert("RGB").save(path, exif=exif,
                                                                     quality=95)
    return path


def test_pictures_go_through_the_serving_image_signature(trained_run, mnist, tmp_path,
                                                          capsys, monkeypatch):
    """A PNG, a JPEG, an EXIF-rotated JPEG and a TIFF: each answered by serving_image,
    and --show shows what that signature saw for the bytes a TF Serving client sends."""
    import tensorflow as tf

    _, (test_images, test_labels) = mnist
    files = [write_picture(tmp_path / "a.png", test_images[0], dark_on_light=True),
             write_picture(tmp_path / "b.jpg", test_images[1], dark_on_light=False,
                           mode="RGB"),
             exif_rotated(tmp_path / "c.jpg", test_images[2]),
             write_picture(tmp_path / "d.tiff", test_images[3], dark_on_light=True)]
    np.save(tmp_path / "e.npy", test_images[4])
    shown = []
    monkeypatch.setattr(predict, "save_picture", lambda path, pictures, rows: shown.append(
        pictures))
    rows = predict_json(capsys, *map(str, files), str(tmp_path / "e.npy"), "--number", "3",
                        "--model", trained_run["export_path"],
                        "--show", str(tmp_path / "out.png"))["predictions"]
    assert [row["signature"] for row in rows] == ["serving_image"] * 4 + ["serving_default"]
    assert [row["digit"] for row in rows] == test_labels[:5].tolist()
    assert [row["sum"] for row in rows] == (test_labels[:5] + 3).tolist()
    # The files' own bytes where TensorFlow reads them as the file means; the rotated
    # JPEG and the TIFF as PNGs of the upright picture.
    sent = [images.read_picture(path) for path in files]
    assert [picture.own for picture in sent] == [True, True, False, False]
    assert [sent[0].encoded, sent[1].encoded] == [files[0].read_bytes(), files[1].read_bytes()]
    served = served_image_signature(trained_run["export_path"])(
        picture=tf.constant([picture.encoded for picture in sent]),
        number=tf.constant([3] * 4))
    np.testing.assert_array_equal(shown[0][:4], served["image"].numpy())
    assert [row["digit"] for row in rows[:4]] == served["digit"].numpy().tolist()
    np.testing.assert_array_equal(shown[0][4], test_images[4])


def test_explicit_preparation_and_models_without_the_signature_prepare_here(
        trained_run, mnist, tmp_path, capsys, monkeypatch):
    from keras_adder.serving import formats

    _, (test_images, test_labels) = mnist
    path = str(write_picture(tmp_path / "a.png", test_images[0], dark_on_light=True))
    model = trained_run["export_path"]
    for flag in ("--prepare", "--no-prepare"):
        if flag == "--no-prepare":  # 28x28 MNIST-like files only
            path = str(write_picture(tmp_path / "b.png", test_images[0], dark_on_light=False,
                                     scale=1))
        rows = predict_json(capsys, path, flag, "--number", "2", "--model", model)["predictions"]
        assert [(row["signature"], row["digit"]) for row in rows] == [
            ("serving_default", test_labels[0])]
    # A model without serving_image (LiteRT, ONNX, an older SavedModel).
    load_model = formats.load_model
    monkeypatch.setattr(formats, "load_model",
                        lambda *args: load_model(*args)._replace(call_pictures=None))
    rows = predict_json(capsys, path, "--number", "2", "--model", model)["predictions"]
    assert [(row["signature"], row["digit"]) for row in rows] == [
        ("serving_default", test_labels[0])]


def test_pictures_the_signature_cannot_read_as_one_digit(
        trained_run, mnist, tmp_path, monkeypatch, capsys):
    """Blank, two digits: today's words, now from the signature's ink_found and
    digits_seen (nothing is prepared here). One line, exit 2, nothing written."""
    _, (test_images, _) = mnist

    def never(*args, **kwargs):
        raise AssertionError("prepared here, not by the signature")

    monkeypatch.setattr(images, "prepare_digit", never)
    monkeypatch.chdir(tmp_path)
    Image.new("L", (50, 50), 255).save("blank.png")
    Image.fromarray(np.concatenate([test_images[1], test_images[2]], axis=1)).save("pair.png")
    Image.fromarray(test_images[3]).save("one.png")
    for name, message in [
            ("blank.png", "blank.png: no digit found: nothing stands out from the background "
                          "(a blank image?)"),
            ("pair.png", "pair.png: 2 separate marks side by side look like 2 digits: give "
                         "one digit per image")]:
        before = sorted(tmp_path.iterdir())
        with pytest.raises(SystemExit) as exit_info:
            run(predict.main, ["one.png", name, "--number", "3", "--show", "out.png",
                               "--model", trained_run["export_path"]])
        assert exit_info.value.code == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == f"error: {message}\n"
        assert sorted(tmp_path.iterdir()) == before


def test_a_photo_over_the_signatures_limits_goes_as_the_picture_predict_read(
        trained_run, mnist, tmp_path, capsys):
    """A 25-MP photo is within predict's own bound but over serving_image's 12 MP: the
    signature gets a PNG of the reduced picture, not the file, and answers it."""
    _, (test_images, test_labels) = mnist
    photo = Image.new("L", (5000, 5000), 255)
    digit = Image.fromarray(255 - test_images[3]).resize((2000, 2000))
    photo.paste(digit, (1500, 1500))
    photo.save(tmp_path / "big.png")
    picture = images.read_picture(tmp_path / "big.png")
    assert not picture.own and picture.encoded[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(picture.encoded)).size == (512, 512)
    rows = predict_json(capsys, str(tmp_path / "big.png"), "--number", "2", "--model",
                        str(trained_run["export_path"]))["predictions"]
    assert [(row["signature"], row["digit"]) for row in rows] == [
        ("serving_image", test_labels[3])]


def test_a_picture_the_graph_refuses_is_named_with_the_graphs_reason():
    """What the graph refuses (a corrupt file that passed Pillow, a limit) is one line
    naming the file, in the graph's words."""
    from keras_adder.serving.clients import through_picture_signature
    from keras_adder.serving.saved_model import PictureRefused

    def refusing(pictures, numbers):
        raise PictureRefused(1, "the picture is a PNG of 5000x5000 = 25000000 pixels")

    pictures = [images.Picture(np.zeros((2, 2), np.float32), b"x", True)] * 2
    with pytest.raises(KerasAdderError, match=r"^b.png: the picture is a PNG of 5000x5000 = "
                       r"25000000 pixels \(serving_image refused it\)$"):
        through_picture_signature(refusing, ["a.png", "b.png"], pictures, np.array([1, 2]))


# --- Bad input: one line on stderr, exit 2, nothing written -----------------------------


def _files(tmp):
    write_picture(tmp / "digit.png", np.eye(28, dtype=np.uint8) * 255, dark_on_light=False)
    (tmp / "notes.png").write_text("not a picture\n")
    (tmp / "cut.png").write_bytes((tmp / "digit.png").read_bytes()[:60])
    np.save(tmp / "flat.npy", np.zeros(784, np.uint8))
    np.save(tmp / "rgb.npy", np.zeros((2, 28, 28, 3), np.uint8))
    np.save(tmp / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp / "nan.npy", np.full((28, 28), np.nan))
    np.save(tmp / "none.npy", np.zeros((0, 28, 28), np.uint8))
    (tmp / "text.npy").write_text("0 0 0\n")
    (tmp / "folder.png").mkdir()


BAD_INPUTS = {
    "missing file": (["gone.png", "--number", "3"], "gone.png: no such file"),
    "a folder": (["folder.png", "--number", "3"], "folder.png: not a file"),
    "not an image": (["notes.png", "--number", "3"],
                     "notes.png: not an image (Pillow cannot read it as PNG, JPEG, GIF, BMP, TIFF, WEBP, PPM)"),
    "truncated image": (["cut.png", "--number", "3"], "cut.png: truncated or corrupt image (image file is truncated)"),
    "npy of shape [784]": (["flat.npy", "--number", "3"],
                           "flat.npy: array shape (784,) is not [28, 28] or [N, 28, 28]"),
    "npy of shape [2,28,28,3]": (["rgb.npy", "--number", "3"],
                                 "array shape (2, 28, 28, 3) is not [28, 28] or [N, 28, 28]"),
    "npy of objects": (["objects.npy", "--number", "3"], "objects.npy: array dtype object is not a plain number (object and structured arrays are refused)"),
    "npy of NaN": (["nan.npy", "--number", "3"],
                   "nan.npy: value nan at row 0, column 0 of image 0 is not a finite number"),
    "npy of no images": (["none.npy", "--number", "3"],
                         "no images: give image/.npy files or --mnist-test-index"),
    "text named .npy": (["text.npy", "--number", "3"], "text.npy: not a readable .npy array"),
    "number 10": (["digit.png", "--number", "10"], "number 10 is outside 0-9"),
    "number -1": (["digit.png", "--number=-1"], "number -1 is outside 0-9"),
    "number 'seven'": (["digit.png", "--number", "seven"], "number 'seven' is not an integer"),
    "2 numbers for 1 image": (["digit.png", "--number", "3", "4"],
                              "1 image(s) but 2 numbers: give one number for all images "
                              "or one per image"),
    "3 numbers for 2 images": (["digit.png", "--mnist-test-index", "4", "--number", "1", "2",
                                "3"], "2 image(s) but 3 numbers"),
    "no images": (["--number", "3"], "no images: give image/.npy files or --mnist-test-index"),
    "MNIST index 10000": (["--mnist-test-index", "10000", "--number", "3"],
                          "MNIST test index 10000 is outside 0-9999"),
    "MNIST index -1": (["--mnist-test-index", "-1", "--number", "3"],
                       "MNIST test index -1 is outside 0-9999"),
    "--show in a missing folder": (["digit.png", "--number", "3", "--show", "no/out.png"],
                                   "--show no/out.png: folder no does not exist"),
    "--show of an unknown type": (["digit.png", "--number", "3", "--show", "out.xyz"],
                                  "--show out.xyz: unknown picture type '.xyz'"),
    "--model with no SavedModel": (["digit.png", "--number", "3", "--model", "."],
                                   ".: no SavedModel there"),
    "--model version without saved_model.pb": (
        ["digit.png", "--number", "3", "--model", "base"], "highest version has no"),
    "--write-examples to a missing folder": (
        ["digit.png", "--number", "3", "--write-examples", "nowhere"],
        "--write-examples nowhere: folder does not exist"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    name, tmp_path, data_dir, monkeypatch, capsys
):
    argv, expected = BAD_INPUTS[name]
    _files(tmp_path)
    (tmp_path / "base" / "4").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        run(predict.main, [*argv, "--data-dir", str(data_dir), "--show", "picture.png"]
            if "--show" not in argv else [*argv, "--data-dir", str(data_dir)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    assert expected in captured.err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # no picture, no temp


def test_a_saved_model_of_another_kind_is_refused(tmp_path, capsys):
    import tensorflow as tf

    module = tf.Module()
    module.double = tf.function(lambda x: {"y": 2 * x},
                                input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    tf.saved_model.save(module, str(tmp_path / "other" / "1"),
                        signatures={"serving_default": module.double})
    with pytest.raises(SystemExit):
        run(predict.main, ["--mnist-test-index", "0", "--number", "1",
                           "--model", str(tmp_path / "other")])
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'other' / '1'}: not a keras_adder model: unexpected input 'x'; "
        "no input 'image'; no input 'number'; unexpected output 'y'; no output 'digit'; "
        "no output 'sum'; no output 'digit_probabilities'; no output 'sum_probabilities'\n"
    )


def test_cli_process_prints_exactly_one_line_for_a_bad_file(tmp_path):
    """No TensorFlow start-up noise before the error: input is checked before TF loads."""
    result = subprocess.run(
        [sys.executable, "-m", "keras_adder.predict", "gone.png", "--number", "3"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "error: gone.png: no such file\n"


def test_commands_start_quietly(trained_run, data_dir, tmp_path):
    """No TensorFlow start-up lines (cuInit, cudart, oneDNN) unless the user asks."""
    environment = {key: value for key, value in os.environ.items()
                   if key != "TF_CPP_MIN_LOG_LEVEL"}
    command = [sys.executable, "-m", "keras_adder.predict", "--mnist-test-index", "0",
               "--number", "3", "--model", trained_run["export_path"], "--data-dir",
               str(data_dir)]
    quiet = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                           env=environment, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert "mnist-test[0]" in quiet.stdout
    asked = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                           env={**environment, "TF_CPP_MIN_LOG_LEVEL": "0"}, timeout=300)
    assert asked.returncode == 0 and asked.stderr  # the user's setting wins
