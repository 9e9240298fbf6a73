"""Handwritten digits that are not MNIST, offline: real sources and pictures made from them.

Two independent sources of real people's digits, both shipped inside packages that
requirements-dev.txt pins (nothing is downloaded at run time):
- pyclustering 0.10.1.2 (BSD-3-Clause): 250 hand-drawn digits, 25 of each, 32x32 PNG,
  dark ink on white (`pyclustering/samples/images/digits/`). Finer than MNIST's 20x20.
- scikit-learn's `load_digits` (scikit-learn: BSD-3-Clause; the data: UCI "Optical
  Recognition of Handwritten Digits", Alpaydin and Kaynak, 43 writers, CC BY 4.0):
  1,797 digits of 8x8 cells with 17 grey levels. Coarser than MNIST.

From them this script makes, deterministically (fixed seeds), the pictures a person
might give predict: phone-photo-like JPEGs (dark ink on paper under uneven light, with
texture, off-centre, some EXIF-rotated), thick- and thin-stroke versions, light ink on a
dark board; and clean pen strokes drawn from templates (various canvases, pen widths,
slants, polarities, tight crops), which the old preparation already read well.

    python tests/handwriting.py OUT_DIR [--measure MODEL] [--limit N]

writes OUT_DIR/<set>/<files> and OUT_DIR/labels.csv; with --measure, prints the digit
and sum accuracy of a SavedModel on each set, with predict's old preparation and with
keras_adder.data.pictures.
"""

import argparse
import csv
import importlib.util
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PYCLUSTERING_DIGITS = "samples/images/digits"
SKLEARN_DIGITS = "datasets/data/digits.csv.gz"


# --- The real sources ------------------------------------------------------------------


def pyclustering_files():
    """[(path, label)] of pyclustering's 250 digit PNGs, found without importing it."""
    spec = importlib.util.find_spec("pyclustering")
    assert spec is not None, "pyclustering is not installed (requirements-dev.txt)"
    folder = Path(spec.submodule_search_locations[0]) / PYCLUSTERING_DIGITS
    files = sorted(folder.glob("Digit_*_Sample*.png"))
    assert len(files) == 250, f"{folder}: expected 250 digit PNGs, found {len(files)}"
    return [(path, int(path.name.split("_")[1])) for path in files]


def sklearn_digits():
    """scikit-learn's 1,797 digits: (uint8 [N, 8, 8] ink 0-255 on 0, labels).

    Read from the file that `sklearn.datasets.load_digits` reads (64 values 0-16 and
    the label per line), without importing scikit-learn and SciPy (seconds)."""
    spec = importlib.util.find_spec("sklearn")
    assert spec is not None, "scikit-learn is not installed (requirements-dev.txt)"
    table = np.loadtxt(Path(spec.submodule_search_locations[0]) / SKLEARN_DIGITS,
                       delimiter=",", dtype=np.int64)
    assert table.shape == (1797, 65), f"unexpected digits table {table.shape}"
    images = np.rint(table[:, :64].reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)
    return images, table[:, 64]


def ink_of(path):
    """A dark-on-white picture file → float [H, W] ink in 0-1 (1 = full ink)."""
    with Image.open(path) as image:
        white = Image.new("RGBA", image.size, "white")
        gray = Image.alpha_composite(white, image.convert("RGBA")).convert("L")
    return 1.0 - np.asarray(gray, np.float32) / 255


# --- Pictures made from them -----------------------------------------------------------


def _stroke_width(ink):
    mask = np.pad(ink > 0.5, 1)
    edges = np.count_nonzero(mask[1:] != mask[:-1]) + np.count_nonzero(mask[:, 1:] != mask[:, :-1])
    return 2.0 * np.count_nonzero(mask) / max(edges, 1)


def _odd(value):
    return max(3, int(round(value)) // 2 * 2 + 1)


def enlarge(ink, height, stroke=None):
    """Ink scaled (bicubic) to `height` pixels; stroke 'thin' or 'thick' erodes or dilates
    it to about 0.4x or 2x its width."""
    scale = height / ink.shape[0]
    image = Image.fromarray((np.clip(ink, 0, 1) * 255).astype(np.uint8))
    image = image.resize((max(1, round(ink.shape[1] * scale)), height),
                         Image.Resampling.BICUBIC)
    width = _stroke_width(np.asarray(image, np.float32) / 255)
    if stroke == "thin":
        image = image.filter(ImageFilter.MinFilter(_odd(0.6 * width)))
    elif stroke == "thick":
        image = image.filter(ImageFilter.MaxFilter(_odd(1.0 * width)))
    return np.asarray(image, np.float32) / 255


def _paper(rng, height, width, dark=False):
    """Paper (or a board) under uneven light, with texture: float [H, W, 3] 0-255."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    rows, cols = rows / height - 0.5, cols / width - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    # A gradient across the sheet (a lamp on one side) and a darker rim (vignetting).
    light = 1 + rng.uniform(0.2, 0.45) * (np.cos(angle) * cols + np.sin(angle) * rows) \
        - rng.uniform(0.3, 0.8) * (rows ** 2 + cols ** 2)
    blotches = Image.fromarray(rng.normal(0, 1, (6, 8)).astype(np.float32)).resize(
        (width, height), Image.Resampling.BICUBIC)
    base = rng.uniform(35, 60) if dark else rng.uniform(200, 240)
    level = base * light + 6 * np.asarray(blotches) + rng.normal(0, 4, (height, width))
    tint = np.array([1.0, 0.98, 0.93]) if not dark else np.array([0.95, 1.0, 0.97])
    return np.clip(level[..., None] * tint, 0, 255), light


def photo(ink, rng, *, stroke=None, dark=False, exif_rotate=False):
    """A phone-photo-like JPEG (bytes) of the digit `ink` [h, w] 0-1: off-centre on a
    sheet under uneven light, slightly blurred, some EXIF-rotated."""
    height, width = [(360, 480), (480, 360), (400, 400)][rng.integers(3)]
    digit = enlarge(ink, int(rng.integers(80, 200)), stroke)
    sheet, light = _paper(rng, height, width, dark)
    top = int(rng.integers(8, height - digit.shape[0] - 8))
    left = int(rng.integers(8, width - digit.shape[1] - 8))
    cover = np.zeros((height, width), np.float32)
    cover[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    ink_colour = np.array([225, 225, 215.0]) if dark else np.array([25, 30, 75.0])
    ink_colour = ink_colour[None, None] * light[..., None]  # the ink is lit like the paper
    alpha = cover[..., None] * rng.uniform(0.8, 1.0)
    pixels = sheet * (1 - alpha) + ink_colour * alpha
    picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0)))
    exif = Image.Exif()
    if exif_rotate:
        # Stored as the sensor saw it (turned a quarter), with the tag that turns it back.
        picture = picture.transpose(Image.Transpose.ROTATE_90)
        exif[0x0112] = 6
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=int(rng.integers(80, 93)), exif=exif)
    return out.getvalue()


# Pen-stroke templates: polylines in a unit box (x right, y down), one list per stroke.
def _arc(cx, cy, rx, ry, start, stop, n=16):
    angles = np.radians(np.linspace(start, stop, n))
    return list(zip(cx + rx * np.cos(angles), cy + ry * np.sin(angles)))


TEMPLATES = {
    0: [_arc(0.5, 0.5, 0.33, 0.48, 0, 360, 32)],
    1: [[(0.3, 0.22), (0.55, 0.0), (0.55, 1.0)]],
    2: [_arc(0.5, 0.27, 0.35, 0.27, 190, 360) + [(0.78, 0.45), (0.12, 1.0), (0.92, 1.0)]],
    3: [_arc(0.48, 0.25, 0.33, 0.25, 200, 450), _arc(0.48, 0.73, 0.38, 0.27, 270, 500)],
    4: [[(0.62, 0.0), (0.08, 0.68), (0.95, 0.68)], [(0.7, 0.3), (0.7, 1.0)]],
    5: [[(0.88, 0.02), (0.25, 0.02), (0.2, 0.45)] + _arc(0.5, 0.68, 0.38, 0.3, 230, 495)],
    6: [[(0.78, 0.0), (0.4, 0.25)] + _arc(0.5, 0.7, 0.34, 0.3, 180, 540)],
    7: [[(0.08, 0.02), (0.92, 0.02), (0.4, 1.0)]],
    8: [_arc(0.5, 0.26, 0.27, 0.25, 0, 360, 24), _arc(0.5, 0.74, 0.33, 0.26, 0, 360, 24)],
    9: [_arc(0.48, 0.3, 0.33, 0.3, 0, 360, 24), [(0.81, 0.3), (0.74, 1.0)]],
}


def pen_digit(label, rng):
    """A clean pen-stroke picture of `label` (PNG bytes): random canvas, pen width, slant,
    size, position and polarity; a quarter of them tightly cropped."""
    canvas = int(rng.integers(28, 400))
    size = canvas * rng.uniform(0.4, 0.7)
    pen = max(1, int(round(size * rng.uniform(0.06, 0.14))))
    slant, squeeze = rng.uniform(-0.3, 0.3), rng.uniform(0.6, 0.95)
    strokes = [[((x * squeeze + slant * (1 - y)) * size * 0.75, y * size) for x, y in stroke]
               for stroke in TEMPLATES[label]]
    xs, ys = zip(*[point for stroke in strokes for point in stroke])
    # Anywhere on the canvas, pen included: off-centre as often as not.
    left = rng.uniform(pen - min(xs), canvas - pen - max(xs))
    top = rng.uniform(pen - min(ys), canvas - pen - max(ys))
    dark_on_light = rng.random() < 0.5
    picture = Image.new("L", (canvas, canvas), 255 if dark_on_light else 0)
    draw = ImageDraw.Draw(picture)
    ink = 0 if dark_on_light else 255
    for stroke in strokes:
        points = [(left + x, top + y) for x, y in stroke]
        draw.line(points, fill=ink, width=pen, joint="curve")
        for x, y in (points[0], points[-1]):  # round pen ends
            draw.ellipse([x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2], fill=ink)
    if rng.random() < 0.25:
        box = (Image.eval(picture, lambda v: 255 - v) if dark_on_light else picture).getbbox()
        picture = picture.crop(box)
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


# --- The sets --------------------------------------------------------------------------


def build(out_dir, limit=None, photo_limit=300):
    """Write every set's files under out_dir; return {set: [(path, label)]}.

    Photo-like sets are made from each real source separately ("photos (pyclustering)",
    ...), from at most `photo_limit` of its digits. `limit` takes only the first
    `limit` pictures of every set (spread over pyclustering's labels), for fast tests."""
    out_dir = Path(out_dir)
    pyclustering = pyclustering_files()
    coarse, coarse_labels = sklearn_digits()
    if limit:
        pyclustering = pyclustering[::max(1, len(pyclustering) // limit)][:limit]
        coarse, coarse_labels = coarse[:limit], coarse_labels[:limit]
    sets = {"pyclustering": pyclustering}
    sets["sklearn-8x8"] = _write(out_dir / "sklearn-8x8", (
        (f"{i:04d}.png", _png(255 - image), label)
        for i, (image, label) in enumerate(zip(coarse, coarse_labels))))
    sources = {"pyclustering": [(ink_of(path), label) for path, label in pyclustering],
               "sklearn-8x8": [(image / 255.0, label)
                               for image, label in zip(coarse, coarse_labels)]}
    for seed, (kind, options) in enumerate(PHOTO_SETS.items()):
        for source, digits in sources.items():
            rng = np.random.default_rng([seed, len(source)])
            sets[f"{kind} ({source})"] = _write(out_dir / f"{kind}-{source}", (
                (f"{i:04d}.jpg", photo(ink, rng, **options), label)
                for i, (ink, label) in enumerate(digits[:photo_limit])))
    rng = np.random.default_rng(12)
    labels = [i % 10 for i in range(limit or 300)]
    sets["pen-strokes"] = _write(out_dir / "pen-strokes", (
        (f"{i:04d}.png", pen_digit(label, rng), label) for i, label in enumerate(labels)))
    with open(out_dir / "labels.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["set", "path", "label"])
        writer.writerows((name, str(path), label)
                         for name, rows in sets.items() for path, label in rows)
    return sets


PHOTO_SETS = {
    "photos": {},
    "photos-exif-rotated": {"exif_rotate": True},
    "photos-thin": {"stroke": "thin"},
    "photos-thick": {"stroke": "thick"},
    "photos-dark-board": {"dark": True},
}


def read_sets(out_dir):
    """{set: [(path, label)]} as `build` listed them in out_dir/labels.csv."""
    sets = {}
    with open(Path(out_dir) / "labels.csv", newline="") as file:
        for row in csv.DictReader(file):
            sets.setdefault(row["set"], []).append((Path(row["path"]), int(row["label"])))
    return sets


def _png(pixels):
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def _write(folder, items):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, data, label in items:
        (folder / name).write_bytes(data)
        rows.append((folder / name, int(label)))
    return rows


# --- Measuring -------------------------------------------------------------------------


def numbers_for(count):
    """The number added to each picture: all of 0-9, spread over the labels."""
    return np.array([(i * 7 + 3) % 10 for i in range(count)], np.int32)


def predict_set(rows, model):
    """Run the predict command on one set's pictures: (digit accuracy, sum accuracy,
    unsure fraction, refused fraction). Pictures that predict refuses (blank, several
    digits) count as wrong; the others go through it in one call."""
    from keras_adder import predict
    from keras_adder.data import pictures as prep

    accepted = [(path, label) for path, label in rows
                if prep.digit_problem(prep.prepare_digit(prep.load_image(path))) is None]
    labels = np.array([label for _, label in accepted])
    numbers = numbers_for(len(accepted))
    answers = predict.main([*(str(path) for path, _ in accepted),
                            "--number", *map(str, numbers), "--model", str(model)])
    digits = np.array([answer["digit"] for answer in answers])
    sums = np.array([answer["sum"] for answer in answers])
    return (float(np.sum(digits == labels)) / len(rows),
            float(np.sum(sums == labels + numbers)) / len(rows),
            float(np.mean([answer["unsure"] for answer in answers])),
            1 - len(accepted) / len(rows))


def measure(sets, model):
    """Print, per set, the accuracies the predict command gives."""
    results = {name: predict_set(rows, model) for name, rows in sets.items()}
    print(f"model: {model}")
    print(f"{'set':36s} {'n':>5s}  {'digit':>9s} {'sum':>8s} {'unsure':>7s} {'refused':>7s}")
    for name, (digit, total, unsure, refused) in results.items():
        print(f"{name:36s} {len(sets[name]):5d}  {digit:9.2%} {total:8.2%} {unsure:7.2%} "
              f"{refused:7.2%}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--measure", metavar="MODEL", help="a SavedModel to measure")
    parser.add_argument("--limit", type=int, help="at most this many pictures per set")
    parser.add_argument("--reuse", action="store_true",
                        help="measure the pictures listed in OUT_DIR/labels.csv, not new ones")
    args = parser.parse_args(argv)
    sets = read_sets(args.out_dir) if args.reuse else build(args.out_dir, args.limit)
    for name, rows in sets.items():
        print(f"{name}: {len(rows)} pictures")
    if args.measure:
        measure(sets, args.measure)


if __name__ == "__main__":
    main()
