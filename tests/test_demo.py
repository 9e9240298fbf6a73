"""The browser demo, tested in a real browser: Chromium driven by Playwright (Playwright's
own or Debian's, whichever tests/browser.py finds).

The app is built over the shared short training run's SavedModel and served on a free
loopback port; the test draws digits as mouse strokes on the sketchpad, sets numbers,
presses the button and reads the page. Every request the page makes must stay on this
machine.
"""

import contextlib
import io
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from browser import chromium_executable
from PIL import Image

TIMEOUT_MS = 60_000
# Set to a path (e.g. docs/images/demo.png) to keep the screenshot of the 7.
SCREENSHOT_VARIABLE = "KERAS_ADDER_DEMO_SCREENSHOT"


def _circle(centre_x, centre_y, radius_x, radius_y, points=24):
    return [(centre_x + radius_x * math.sin(2 * math.pi * i / points),
             centre_y - radius_y * math.cos(2 * math.pi * i / points))
            for i in range(points + 1)]


# Strokes as fractions of the canvas, drawn the way MNIST's writers drew them: a slightly
# slanted 1, a 7 with its top bar and a long diagonal, a 0 taller than wide.
STROKES = {
    1: [[(0.53, 0.2), (0.47, 0.8)]],
    7: [[(0.3, 0.22), (0.7, 0.22), (0.62, 0.4), (0.45, 0.8)]],
    0: [_circle(0.5, 0.5, 0.18, 0.3)],
}
NUMBERS = {1: 4, 7: 8, 0: 6}
ANSWER = re.compile(r"^(\d) \+ (\d) = (\d+)")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def recorded(calls, signature, call):
    """`call`, appending (signature, its first argument) to `calls` each time."""
    def recording(inputs, numbers):
        calls.append((signature, inputs))
        return call(inputs, numbers)

    return recording


@pytest.fixture(scope="module")
def demo(trained_run):
    """(url, paths, calls): the served app, every picture path it loaded, and every call
    of the model ("serving_image" with the bytes sent, or "serving_default" with the
    images), in order."""
    from keras_adder.data import pictures as images
    from keras_adder.serving import formats
    from keras_adder.serving import gradio_app as demo_app

    loaded, calls = [], []
    read_picture, load_model = images.read_picture, formats.load_model

    def recording_read_picture(path, *args, **kwargs):
        loaded.append(path)
        return read_picture(path, *args, **kwargs)

    def recording_load_model(path):
        model = load_model(path)
        return model._replace(
            call=recorded(calls, "serving_default", model.call),
            call_pictures=recorded(calls, "serving_image", model.call_pictures))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(images, "read_picture", recording_read_picture)
        patch.setattr(formats, "load_model", recording_load_model)
        app = demo_app.build_app(trained_run["export_path"])
        url = demo_app.launch(app, port=free_port(), block=False)
        try:
            yield url, loaded, calls
        finally:
            app.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_executable(playwright),
                                             headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@contextlib.contextmanager
def opened(browser, url):
    """A fresh page of the app at `url`; requests to anywhere but this machine fail."""
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    outside = []

    def local_only(route):
        host = urllib.parse.urlparse(route.request.url).hostname
        if route.request.url.startswith("data:") or host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", local_only)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#sketchpad canvas")
    yield page
    page.close()
    assert not outside, f"the page tried to reach other machines: {outside}"


@pytest.fixture
def page(browser, demo):
    with opened(browser, demo[0]) as page:
        yield page


def canvas_square(page):
    """(x, y, side) on the page of the black drawing area inside the editor's canvas."""
    canvas = page.locator("#sketchpad canvas").first
    box = canvas.bounding_box()
    pixels = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L"))
    rows, cols = np.nonzero(pixels < 16)
    scale = box["width"] / pixels.shape[1]
    side = (min(np.ptp(rows), np.ptp(cols)) + 1) * scale
    return box["x"] + cols.min() * scale, box["y"] + rows.min() * scale, side


def draw(page, strokes):
    """Select the brush, then draw each stroke as a mouse drag on the black canvas."""
    page.locator("#sketchpad button[aria-label='Brush']").click()
    left, top, side = canvas_square(page)
    for stroke in strokes:
        points = [(left + x * side, top + y * side) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point, steps=8)
        page.mouse.up()


def submit(page, number):
    """Set the number, press Add; the answer text once it has changed."""
    page.locator("#number input").fill(str(number))
    result = page.locator("#result textarea")
    before = result.input_value()
    page.locator("#add").click()
    page.wait_for_function(
        "([selector, before]) => document.querySelector(selector).value !== before",
        arg=["#result textarea", before])
    return result.input_value()


def upload(page, path):
    """Choose `path` in the upload box and wait until the page shows it uploaded."""
    page.locator("#upload input[type=file]").set_input_files(str(path))
    page.wait_for_selector(f"#upload td.filename[aria-label='{Path(path).name}']")


def shown_image(page):
    """The 28x28 image the page shows as the model's input, decoded from its PNG."""
    source = page.locator("#model-input img").get_attribute("src")
    body = page.request.get(urllib.parse.urljoin(page.url, source)).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("L"))


def served_image(export_path, path, number):
    """The 28x28 image that the SavedModel's serving_image signature (TensorFlow's own
    loader) sees for the file's bytes, as a TF Serving client sends them."""
    import tensorflow as tf

    serve_image = tf.saved_model.load(str(export_path)).signatures["serving_image"]
    return serve_image(picture=tf.constant([Path(path).read_bytes()]),
                       number=tf.constant([number]))["image"].numpy()[0]


@pytest.mark.parametrize("digit", sorted(STROKES))
def test_drawn_digits_are_read_and_added(page, demo, digit, tmp_path, trained_run):
    from keras_adder.serving import gradio_app as demo_app

    _, loaded, calls = demo
    assert "pictures go through its serving_image signature" in page.locator(
        "#model-note").inner_text()
    draw(page, STROKES[digit])
    text = submit(page, NUMBERS[digit])
    match = ANSWER.match(text)
    assert match, text
    assert (int(match[1]), int(match[2]), int(match[3])) == (
        digit, NUMBERS[digit], digit + NUMBERS[digit])
    page.wait_for_selector("#digit-probabilities, #sum-probabilities")
    # The canvas' PNG the app received, as TF Serving's serving_image sees its bytes.
    drawing = shutil.copy(loaded[-1], tmp_path / "drawing.png")
    with Image.open(drawing) as picture:
        assert picture.format == "PNG"
    assert calls[-1] == ("serving_image", [drawing.read_bytes()])
    expected = served_image(trained_run["export_path"], drawing, NUMBERS[digit])
    scale = demo_app.SHOWN_SCALE
    assert np.array_equal(shown_image(page), np.kron(expected, np.ones((scale, scale))))
    screenshot = os.environ.get(SCREENSHOT_VARIABLE)
    if digit == 7:
        page.screenshot(path=screenshot or tmp_path / "demo.png", full_page=True)


def test_an_empty_canvas_gets_a_message(page):
    assert page.locator("#sketchpad button[aria-label='Clear canvas']").is_hidden()
    text = submit(page, 5)
    assert "no digit found" in text and "Draw a digit" in text
    assert not ANSWER.match(text)


def test_an_uploaded_photo_goes_through_the_same_loader(page, demo, mnist, tmp_path,
                                                        trained_run):
    from keras_adder.serving import gradio_app as demo_app

    _, _, calls = demo
    (_, _), (test_images, test_labels) = mnist
    photo = tmp_path / "photo.jpg"
    Image.fromarray(255 - test_images[0]).resize((140, 140)).save(photo)  # dark on light
    upload(page, photo)
    text = submit(page, 2)
    assert ANSWER.match(text), text
    assert int(ANSWER.match(text)[1]) == test_labels[0]
    # The uploaded file's own bytes, through the SavedModel's serving_image.
    assert calls[-1] == ("serving_image", [photo.read_bytes()])
    expected = served_image(trained_run["export_path"], photo, 2)
    scale = demo_app.SHOWN_SCALE
    page.wait_for_selector("#model-input img")
    assert np.array_equal(shown_image(page), np.kron(expected, np.ones((scale, scale))))


class FakeModel:
    """Stands in for a model without the picture signature in the checks below."""

    call_pictures = None

    def call(self, images, numbers):
        assert images.shape == (1, 28, 28) and images.dtype == np.uint8
        number = int(numbers[0])
        digit = np.eye(10, dtype=np.float32)[[3]]
        total = np.eye(19, dtype=np.float32)[[3 + number]]
        return {"digit": np.array([3]), "sum": np.array([3 + number]),
                "digit_probabilities": digit, "sum_probabilities": total}


class FakePictureModel(FakeModel):
    """Stands in for a SavedModel with serving_image: it answers the bytes it is sent
    (blank when they are `blank`), showing a striped image as what it saw."""

    def __init__(self, blank=b""):
        self.sent, self.blank = [], blank

    def call(self, images, numbers):
        raise AssertionError("a picture went through serving_default")

    def call_pictures(self, pictures, numbers):
        self.sent += pictures
        outputs = FakeModel.call(self, np.zeros((1, 28, 28), np.uint8), numbers)
        ink = pictures[0] != self.blank
        outputs.update(image=np.tile(np.arange(28, dtype=np.uint8), (1, 28, 1)),
                       ink_found=np.array([ink]), digits_seen=np.array([int(ink)]))
        return outputs


def test_pictures_go_to_the_picture_signature_as_the_files_bytes(tmp_path):
    from keras_adder.serving.gradio_app import SHOWN_SCALE, answer

    stroke, blank = _stroke(tmp_path), _blank(tmp_path)
    model = FakePictureModel(blank=Path(blank).read_bytes())
    text, digits, _, image = answer(model, {"composite": stroke}, None, 4)
    assert text == "3 + 4 = 7" and model.sent == [Path(stroke).read_bytes()]
    assert np.array_equal(image, np.kron(np.tile(np.arange(28), (28, 1)),
                                         np.ones((SHOWN_SCALE, SHOWN_SCALE))))
    text, *rest = answer(model, {"composite": blank}, None, 4)  # ink_found False
    assert text.startswith("no digit found") and "Draw a digit" in text
    assert rest == [None, None, None]


def _blank(tmp_path, name="blank.png"):
    path = tmp_path / name
    Image.new("RGB", (280, 280)).save(path)
    return str(path)


def _stroke(tmp_path):
    path = tmp_path / "stroke.png"
    image = np.zeros((280, 280), np.uint8)
    image[60:220, 130:150] = 255
    Image.fromarray(image).save(path)
    return str(path)


@pytest.mark.parametrize("drawing, upload, number, message", [
    (None, None, 3, "Draw a digit"),
    ({"background": None, "layers": [], "composite": None}, None, 3, "Draw a digit"),
    ("blank", None, 3, "no digit found"),
    (None, "blank", 3, "no digit found"),
    (None, "not-an-image", 3, "not an image"),
    ("stroke", None, None, "whole number"),
    ("stroke", None, 2.5, "whole number"),
    ("stroke", None, 10, "whole number"),
    ("stroke", None, -1, "whole number"),
])
def test_every_widget_input_gets_an_answer_or_a_message(tmp_path, drawing, upload,
                                                        number, message):
    from keras_adder.serving.gradio_app import answer

    files = {"blank": _blank(tmp_path), "stroke": _stroke(tmp_path)}
    (tmp_path / "notes.png").write_text("not a picture")
    files["not-an-image"] = str(tmp_path / "notes.png")
    drawing = {"composite": files[drawing]} if isinstance(drawing, str) else drawing
    text, *rest = answer(FakeModel(), drawing, files.get(upload), number)
    assert message in text
    assert str(tmp_path) not in text  # Gradio's temporary names mean nothing to users
    assert rest == [None, None, None]


def test_a_drawing_and_a_number_give_the_sum(tmp_path):
    from keras_adder.serving.gradio_app import answer

    text, digits, sums, image = answer(FakeModel(), {"composite": _stroke(tmp_path)}, None, 4)
    assert text == "3 + 4 = 7"
    assert digits["3"] == 1.0 and sums["7"] == 1.0 and image.shape == (224, 224)


def test_help_is_fast_and_imports_neither_gradio_nor_tensorflow():
    code = ("import sys\nfrom keras_adder.demo import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('gradio', 'tensorflow') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("[]")


@pytest.mark.parametrize("flag", ["--port=0", "--port=70000", "--port=http"])
def test_a_bad_port_is_refused_before_anything_starts(flag):
    result = subprocess.run([sys.executable, "-m", "keras_adder.demo", flag],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "port" in result.stderr.splitlines()[-1]


# --- Hostile uploads, to the demo in its own process ------------------------------------

HUGE_SIDE = 12_000  # 144 megapixels: 432 MB once decoded as RGB, a few kB as a 1-bit PNG
MEMORY_RISE_LIMIT = 100 * 2**20  # bytes of peak resident memory the uploads may add
ANSWER_SECONDS = 10.0  # each answer, refusals included; Gradio's decoding took 11.5 s


@pytest.fixture(scope="module")
def untrained_export(tmp_path_factory):
    """A SavedModel of an untrained model: these checks need answers, not good ones."""
    from keras_adder.model.architectures import build_model
    from keras_adder.serving.saved_model import export_saved_model

    return export_saved_model(build_model("compact"), tmp_path_factory.mktemp("untrained"),
                              check_images=np.zeros((4, 28, 28), np.uint8))


@contextlib.contextmanager
def running_demo(export, folder):
    """(url, server, log) of `python -m keras_adder.demo` in a process of its own, so that
    its memory is the server's alone, started as a user starts it (no TF_CPP_MIN_LOG_LEVEL),
    with GRADIO_TEMP_DIR set to folder/"gradio". Stopped by SIGTERM at the end."""
    port = free_port()
    environment = {key: value for key, value in os.environ.items()
                   if key != "TF_CPP_MIN_LOG_LEVEL"}
    with open(folder / "server.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "keras_adder.demo", "--model", str(export),
             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
            cwd=Path(__file__).parents[1],
            env={**environment, "GRADIO_TEMP_DIR": str(folder / "gradio")})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while not _answers(url):
            assert server.poll() is None and time.monotonic() < deadline, (
                "the demo did not start: " + (folder / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url, server, folder / "server.log"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def demo_process(untrained_export, tmp_path_factory):
    """(url, pid, log) of one demo process shared by the hostile-upload tests."""
    with running_demo(untrained_export, tmp_path_factory.mktemp("demo")) as (url, server, log):
        yield url, server.pid, log


def _answers(url):
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


def peak_memory(pid):
    """The process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def upload_and_submit(browser, url, path, number):
    """(text, seconds): upload `path` on a fresh page, press Add; the answer text (or
    Gradio's own error, prefixed "gradio:") and the seconds from the press to it."""
    with opened(browser, url) as page:
        upload(page, path)
        page.locator("#number input").fill(str(number))
        started = time.monotonic()
        page.locator("#add").click()
        page.wait_for_function(
            "() => document.querySelector('#result textarea').value !== '' || "
            "document.querySelector('[data-testid=toast-body]') !== null")
        seconds = time.monotonic() - started
        toast = page.locator("[data-testid=toast-body]")
        if toast.count():
            return "gradio: " + toast.first.inner_text(), seconds
        return page.locator("#result textarea").input_value(), seconds


@pytest.fixture
def photo_and_huge(mnist, tmp_path):
    """(photo, huge): a 140x140 photo of an MNIST test digit, and a 17 kB 1-bit PNG
    declaring HUGE_SIDE x HUGE_SIDE pixels."""
    _, (test_images, _) = mnist
    photo = tmp_path / "photo.png"
    Image.fromarray(255 - test_images[0]).resize((140, 140)).save(photo)
    huge = tmp_path / "huge.png"
    Image.new("1", (HUGE_SIDE, HUGE_SIDE)).save(huge)
    return photo, huge


def test_hostile_uploads_are_refused_by_the_loader_before_anything_decodes_them(
        browser, demo_process, photo_and_huge, tmp_path):
    url, pid, log = demo_process
    photo, huge = photo_and_huge
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture\n")
    text, _ = upload_and_submit(browser, url, photo, 2)  # the first answer loads things
    assert ANSWER.match(text), text
    peak = peak_memory(pid)
    for path, number, message in [
            (huge, 3, "too many pixels (the limit is 50,000,000)"),
            (notes, 4, "not an image (Pillow cannot read it as PNG, JPEG, GIF, BMP, TIFF, "
                       "WEBP, PPM)")]:
        text, seconds = upload_and_submit(browser, url, path, number)
        assert text == f"{message}.", text  # the loader's own words, no file name
        assert seconds < ANSWER_SECONDS, f"{path.name} took {seconds:.1f} s"
        rise = peak_memory(pid) - peak
        print(f"{path.name}: answered in {seconds:.2f} s, peak memory "
              f"{peak / 2**20:.0f} MiB + {rise / 2**20:.1f} MiB")
        assert rise < MEMORY_RISE_LIMIT, f"{path.name}: peak memory rose {rise / 2**20:.0f} MiB"
    text, seconds = upload_and_submit(browser, url, photo, 5)
    assert ANSWER.match(text) and int(ANSWER.match(text)[2]) == 5, text
    print(f"a normal request after them: answered in {seconds:.2f} s")
    assert seconds < ANSWER_SECONDS, f"a normal request after them took {seconds:.1f} s"
    assert "Traceback" not in log.read_text(), log.read_text()


def test_three_huge_uploads_do_not_hold_up_a_normal_request(browser, demo_process,
                                                            photo_and_huge):
    """Three huge uploads sent at once, then a normal request: Gradio answers one request
    at a time, so each huge upload it decoded held the normal one up by seconds."""
    url, _, log = demo_process
    photo, huge = photo_and_huge
    with contextlib.ExitStack() as pages:
        hostile = [pages.enter_context(opened(browser, url)) for _ in range(3)]
        for page in hostile:
            upload(page, huge)
        for page in hostile:
            page.locator("#add").click()  # not waiting: the three are queued together
        text, seconds = upload_and_submit(browser, url, photo, 6)
        print(f"a normal request behind three huge uploads: answered in {seconds:.2f} s")
        assert ANSWER.match(text), text
        assert seconds < ANSWER_SECONDS, f"the normal request waited {seconds:.1f} s"
        for page in hostile:
            page.wait_for_function("() => document.querySelector('#result textarea')"
                                   ".value.startsWith('too many pixels')")
    assert "Traceback" not in log.read_text(), log.read_text()


def test_uploads_over_the_byte_limit_are_refused_while_they_arrive(demo_process):
    from keras_adder.data import pictures

    url, _, _ = demo_process
    boundary = b"keras-adder-boundary"
    part = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; '
            b'filename="big.png"\r\nContent-Type: image/png\r\n\r\n')
    body = part + bytes(pictures.MAX_FILE_BYTES + 1) + b"\r\n--" + boundary + b"--\r\n"
    request = urllib.request.Request(
        url + "gradio_api/upload", data=body, method="POST",
        headers={"Content-Type": "multipart/form-data; boundary=" + boundary.decode()})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    assert f"maximum allowed size of {pictures.MAX_FILE_BYTES}" in refused.value.read().decode()


def _wait_for_line(log, text, seconds=60):
    deadline = time.monotonic() + seconds
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"no {text!r} in: {log.read_text()[-3000:]}"
        time.sleep(0.2)


def test_a_browser_that_leaves_mid_upload_costs_one_line_and_no_file(untrained_export,
                                                                     tmp_path):
    """A closed tab stops the uploads the sketchpad still sends: uvicorn printed a
    traceback for each, and Gradio kept each partial file. Gradio's files live in a folder
    of the run's own, removed on SIGTERM; what was in GRADIO_TEMP_DIR before stays."""
    from keras_adder.serving.gradio_app import LEFT_BROWSER

    theirs = tmp_path / "gradio" / "theirs.txt"
    theirs.parent.mkdir()
    theirs.write_text("not the demo's\n")
    with running_demo(untrained_export, tmp_path) as (url, server, log):
        assert log.read_text().startswith("model: "), log.read_text()  # no TensorFlow lines
        (ours,) = theirs.parent.glob("keras-adder-demo-*")
        boundary = "keras-adder-boundary"
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                'filename="left.png"\r\nContent-Type: image/png\r\n\r\n').encode()
        port = urllib.parse.urlparse(url).port
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.sendall(
                b"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: multipart/form-data; boundary=" + boundary.encode() +
                b"\r\nContent-Length: 100000\r\n\r\n" + head + bytes(1000))
            deadline = time.monotonic() + 60
            while not list(ours.glob("tmp*")):  # Gradio's file for the upload's part
                assert time.monotonic() < deadline, "the upload was not started"
                time.sleep(0.2)
        _wait_for_line(log, LEFT_BROWSER)
        assert _answers(url)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 143
    assert "Traceback" not in log.read_text(), log.read_text()
    assert not ours.exists()
    assert theirs.read_text() == "not the demo's\n"
