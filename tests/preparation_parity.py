"""Issue 36's parity measurement: the numpy preparation against the TensorFlow one.

    python tests/preparation_parity.py HANDWRITING_DIR --model MODEL [--redrawn N]

HANDWRITING_DIR is what `python tests/handwriting.py HANDWRITING_DIR` wrote. Adds N MNIST
test digits redrawn as people send them (4x enlarged, dark on white paper, off-centre on a
canvas of 200-600 pixels a side) and MNIST's 10,000 test images as they are. For every set:
the share of pictures whose two prepared 28x28 images differ by at most one grey level, the
share whose facts (prepared, inverted, empty, digits) agree, and the digit accuracy through
the predict command with each preparation (pictures either refuses count as wrong).
Only meaningful while both preparations exist (it was run before the numpy one went).
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
import handwriting  # noqa: E402

from keras_adder import predict  # noqa: E402
from keras_adder.data import pictures, pipeline, preparation  # noqa: E402


def redrawn(out_dir, count, seed=36):
    """MNIST test digits as a person might photograph them: [(path, label)]."""
    (_, _), (images, labels) = pipeline.load_mnist()
    rng = np.random.default_rng(seed)
    folder = Path(out_dir) / "mnist-redrawn"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        big = Image.fromarray(images[i]).resize((112, 112), Image.Resampling.BICUBIC)
        height, width = rng.integers(200, 601, size=2)
        canvas = np.full((height, width), 255, np.uint8)
        top, left = rng.integers(0, height - 112), rng.integers(0, width - 112)
        canvas[top:top + 112, left:left + 112] = 255 - np.asarray(big)
        Image.fromarray(canvas).save(folder / f"{i:05d}.png")
        rows.append((folder / f"{i:05d}.png", int(labels[i])))
    return rows


def tensorflow_prepared(gray):
    facts = preparation.prepare(np.asarray(gray, np.float32), preparation.AUTO)
    return pictures.Prepared(facts["image"].numpy(), bool(facts["prepared"]),
                             bool(facts["inverted"]), bool(facts["empty"]),
                             int(facts["digits"]))


def answers(prepared, labels, model):
    """Digit accuracy through predict of the pictures neither refused... per path."""
    accepted = [i for i, one in enumerate(prepared) if pictures.digit_problem(one) is None]
    if not accepted:
        return 0.0
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "prepared.npy"
        np.save(path, np.stack([prepared[i].image for i in accepted]))
        numbers = handwriting.numbers_for(len(accepted))
        rows = predict.main([str(path), "--number", *map(str, numbers), "--model", model])
    digits = np.array([row["digit"] for row in rows])
    return float(np.sum(digits == np.asarray(labels)[accepted])) / len(labels)


def compare(name, grays, labels, model):
    numpy_side = [pictures.prepare_digit(gray) for gray in grays]
    tf_side = [tensorflow_prepared(gray) for gray in grays]
    close = np.mean([np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
                     for a, b in zip(numpy_side, tf_side)])
    same_facts = np.mean([tuple(a[1:]) == tuple(b[1:]) for a, b in zip(numpy_side, tf_side)])
    numpy_accuracy = answers(numpy_side, labels, model)
    tf_accuracy = answers(tf_side, labels, model)
    print(f"| {name} | {len(grays):,} | {close:.2%} | {same_facts:.2%} | "
          f"{numpy_accuracy:.2%} | {tf_accuracy:.2%} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("handwriting_dir")
    parser.add_argument("--model", required=True)
    parser.add_argument("--redrawn", type=int, default=1000)
    args = parser.parse_args(argv)
    sets = handwriting.read_sets(args.handwriting_dir)
    sets["MNIST test, redrawn"] = redrawn(args.handwriting_dir, args.redrawn)
    print("| set | pictures | prepared within 1 grey level | same facts | digit, numpy "
          "| digit, TensorFlow |\n|---|---|---|---|---|---|", flush=True)
    (_, _), (images, labels) = pipeline.load_mnist()
    compare("MNIST test, as they are", list(images.astype(np.float32)), labels, args.model)
    for name, rows in sets.items():
        grays = [pictures.load_image(path) for path, _ in rows]
        compare(name, grays, [label for _, label in rows], args.model)


if __name__ == "__main__":
    main()
