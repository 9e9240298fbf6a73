"""IDX reading (on small generated files) and the tf.data pipelines."""

import gzip
import struct

import numpy as np
import pytest

from keras_adder.core.errors import KerasAdderError
from keras_adder.data.idx import MNIST_FILES, load_mnist_dir, read_idx
from keras_adder.data.pipeline import (
    TEST_STREAM,
    VALIDATION_STREAM,
    eval_dataset,
    load_mnist,
    paired_numbers,
    resolve_data_dir,
    split_validation,
    steps_per_epoch,
    train_dataset,
    validation_dataset,
)


def idx_bytes(array, type_byte=0x08):
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, type_byte, array.ndim]) + b"".join(
        struct.pack(">I", n) for n in array.shape
    )
    return header + array.tobytes()


def write_mnist(folder, *, train=60_000, test=10_000, gz=True, overrides=None):
    """Write a fake but well-formed MNIST folder; `overrides` maps file name → bytes."""
    # Blank images compress fast; the loader checks structure, not content.
    contents = {
        "train-images-idx3-ubyte": idx_bytes(np.zeros((train, 28, 28))),
        "train-labels-idx1-ubyte": idx_bytes(np.arange(train) % 10),
        "t10k-images-idx3-ubyte": idx_bytes(np.zeros((test, 28, 28))),
        "t10k-labels-idx1-ubyte": idx_bytes(np.arange(test) % 10),
    }
    contents.update(overrides or {})
    for name, data in contents.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
        else:
            (folder / name).write_bytes(data)
    return folder


# --- IDX reader --------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x.idx"
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x00", "too short"),
        (bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 1) + b"\x00" * 4, "not an unsigned-byte"),
        (bytes([1, 2, 8, 1]) + struct.pack(">I", 1) + b"\x00", "not an unsigned-byte"),
        (bytes([0, 0, 8, 3]) + struct.pack(">I", 2), "truncated IDX header"),
        (idx_bytes(np.zeros((5, 28, 28)))[:-10], "does not match its header"),
        (idx_bytes(np.zeros((5, 28, 28))) + b"extra", "does not match its header"),
    ],
)
def test_read_idx_rejects_malformed_files(tmp_path, content, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(content)
    with pytest.raises(KerasAdderError, match=message) as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_read_idx_rejects_wrong_magic(tmp_path):
    path = tmp_path / "labels.idx"
    path.write_bytes(idx_bytes(np.zeros(3)))  # magic 2049
    with pytest.raises(KerasAdderError, match="wrong IDX magic number 2049 .expected 2051"):
        read_idx(path, expected_magic=2051)


def test_read_idx_rejects_truncated_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((100, 28, 28))))[:-30])
    with pytest.raises(KerasAdderError, match="corrupt or truncated gzip"):
        read_idx(path)


def test_read_idx_rejects_corrupt_gzip(tmp_path):
    data = bytearray(gzip.compress(idx_bytes(np.arange(5000) % 256)))
    data[20:40] = b"\xff" * 20
    path = tmp_path / "x.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(KerasAdderError, match="corrupt or truncated gzip"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(KerasAdderError, match="cannot read"):
        read_idx(tmp_path / "nope")


# --- MNIST folder validation -------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_dir_accepts_wellformed_folder(tmp_path, gz):
    (x, y), (xt, yt) = load_mnist_dir(write_mnist(tmp_path, gz=gz))
    assert x.shape == (60_000, 28, 28) and y.shape == (60_000,)
    assert xt.shape == (10_000, 28, 28) and yt.shape == (10_000,)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train-labels-idx1-ubyte": idx_bytes(np.full(60_000, 10))}, "label 10 is out of range"),
        ({"t10k-labels-idx1-ubyte": idx_bytes(np.zeros(9_999))},
         r"IDX header declares shape \(9999,\), MNIST's is \(10000,\)"),
        ({"t10k-images-idx3-ubyte": idx_bytes(np.zeros((10_000, 28, 27)))},
         r"declares shape \(10000, 28, 27\), MNIST's is \(10000, 28, 28\)"),
        ({"train-images-idx3-ubyte": idx_bytes(np.zeros(60_000))}, "wrong IDX magic number 2049"),
    ],
)
def test_load_mnist_dir_rejects_bad_contents(tmp_path, overrides, message):
    with pytest.raises(KerasAdderError, match=message):
        load_mnist_dir(write_mnist(tmp_path, overrides=overrides))


def test_load_mnist_dir_names_missing_file(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").rename(tmp_path / "t10k-labels.gz")
    with pytest.raises(KerasAdderError, match="missing MNIST file t10k-labels-idx1-ubyte"):
        load_mnist_dir(tmp_path)


def test_load_mnist_dir_missing_folder(tmp_path):
    with pytest.raises(KerasAdderError, match="does not exist"):
        load_mnist_dir(tmp_path / "nowhere")


def test_data_dir_flag_beats_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_ADDER_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("KERAS_ADDER_DATA")
    assert resolve_data_dir(None) is None


def test_real_mnist_matches_published_facts(mnist):
    (x, y), (xt, yt) = mnist
    assert np.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(yt).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert x.mean() == pytest.approx(33.318, abs=1e-3)
    assert xt.mean() == pytest.approx(33.791, abs=1e-3)
    assert len(MNIST_FILES) == 4


def test_real_mnist_via_environment(mnist, data_dir, monkeypatch):
    monkeypatch.setenv("KERAS_ADDER_DATA", str(data_dir))
    (x, _), _ = load_mnist()
    np.testing.assert_array_equal(x, mnist[0][0])


# --- Pipelines ---------------------------------------------------------------------


def small_set(count=300):
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), rng.integers(0, 10, count).astype(np.uint8)


def collect(dataset):
    images, numbers, digits, sums = [], [], [], []
    for inputs, targets in dataset:
        images.append(inputs["image"].numpy())
        numbers.append(inputs["number"].numpy())
        digits.append(targets["digit"].numpy())
        sums.append(targets["sum"].numpy())
    return tuple(np.concatenate(a) for a in (images, numbers, digits, sums))


def test_train_dataset_shapes_dtypes_and_sums():
    images, labels = small_set()
    dataset = train_dataset(images, labels, batch_size=64, seed=3, epochs=1)
    inputs, targets = next(iter(dataset))
    assert inputs["image"].shape == (64, 28, 28, 1) and inputs["image"].dtype.name == "float32"
    assert inputs["number"].shape == (64, 10) and inputs["number"].dtype.name == "float32"
    assert targets["digit"].dtype.name == "int32" and targets["sum"].dtype.name == "int32"
    x, n, d, s = collect(dataset)
    assert len(d) == len(labels)  # one epoch = every image once, last batch partial
    assert ((0 <= x) & (x <= 1)).all()
    assert (n.sum(axis=1) == 1).all() and set(np.unique(n)) == {0.0, 1.0}
    number = n.argmax(axis=1)
    np.testing.assert_array_equal(s, d + number)
    assert set(number) == set(range(10))
    assert sorted(d) == sorted(labels)


def test_train_dataset_is_seeded_and_fresh_each_epoch():
    images, labels = small_set()
    run = lambda seed: collect(train_dataset(images, labels, batch_size=50, seed=seed, epochs=2))
    first, again, other = run(7), run(7), run(8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])
    epoch0, epoch1 = slice(0, 300), slice(300, 600)
    assert not np.array_equal(first[1][epoch0], first[1][epoch1])  # fresh numbers
    assert not np.array_equal(first[2][epoch0], first[2][epoch1])  # fresh order


def test_resumed_pipeline_repeats_the_same_later_epochs():
    images, labels = small_set()
    whole = collect(train_dataset(images, labels, batch_size=64, seed=5, epochs=3))
    resumed = collect(train_dataset(images, labels, batch_size=64, seed=5, epochs=3, start_epoch=2))
    for a, b in zip(whole, resumed):
        np.testing.assert_array_equal(a[600:], b)


def test_augmentation_moves_pixels_but_keeps_them_in_range():
    images, labels = small_set(64)
    plain = collect(train_dataset(images, labels, batch_size=64, seed=1, epochs=1, augment=False))
    augmented = collect(train_dataset(images, labels, batch_size=64, seed=1, epochs=1))
    np.testing.assert_array_equal(plain[2], augmented[2])
    assert not np.allclose(plain[0], augmented[0])
    assert augmented[0].min() >= 0 and augmented[0].max() <= 1.0 + 1e-6
    # Shifts and small rotations keep most of the ink: the total stays close.
    ink_ratio = augmented[0].sum(axis=(1, 2, 3)) / plain[0].sum(axis=(1, 2, 3))
    assert np.median(ink_ratio) == pytest.approx(1.0, abs=0.2)


def test_eval_dataset_pairing_is_fixed_by_seed():
    images, labels = small_set()
    first = collect(eval_dataset(images, labels, batch_size=128, seed=11))
    again = collect(eval_dataset(images, labels, batch_size=32, seed=11))
    other = collect(eval_dataset(images, labels, batch_size=128, seed=12))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])
    np.testing.assert_array_equal(first[2], labels)  # evaluation keeps the file order
    np.testing.assert_array_equal(first[0][..., 0], images / np.float32(255))


def test_validation_numbers_come_from_their_own_stream_not_the_tests():
    # Model selection (ModelCheckpoint, promotion) must not see the test set's pairing.
    images, labels = small_set()
    _, numbers, digits, sums = collect(validation_dataset(images, labels, batch_size=64, seed=11))
    drawn = numbers.argmax(axis=1)
    np.testing.assert_array_equal(drawn, paired_numbers(len(labels), 11, VALIDATION_STREAM))
    assert not np.array_equal(drawn, paired_numbers(len(labels), 11, TEST_STREAM))
    np.testing.assert_array_equal(digits, labels)
    np.testing.assert_array_equal(sums, labels + drawn)


def test_validation_split_is_the_last_5000(mnist):
    (x, y), _ = mnist
    (fit_x, fit_y), (val_x, val_y) = split_validation(x, y)
    assert len(fit_y) == 55_000 and len(val_y) == 5_000
    np.testing.assert_array_equal(val_x, x[-5000:])
    assert steps_per_epoch(len(fit_y), 128) == 430
