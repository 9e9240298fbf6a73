"""The exported serving signature under load: a bounded batch, and a soak test.

The SavedModel is the short training run's export (the `trained_run` fixture), loaded
once with plain `tf.saved_model.load`, as TF Serving loads it.
"""

import random
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from keras_adder.core.constants import MAX_SERVING_BATCH, SIGNATURE
from keras_adder.serving import saved_model

THREADS = 8
WARM_UP_S = 4
SOAK_S = 26  # with the warm-up, 30 s of calls
MAX_CALLS_PER_THREAD = 5000  # a bound on calls too, should calls be very fast
GOOD_SIZES = (1, 2, 7, 64, 255, 512)
TOO_MANY = f"a request may hold at most {MAX_SERVING_BATCH} images"


@pytest.fixture(scope="module")
def loaded(trained_run):
    """The exported SavedModel, kept for the module: a signature must not outlive the
    object it was loaded with."""
    import tensorflow as tf

    return tf.saved_model.load(trained_run["export_path"])


def call(serve, images, numbers):
    import tensorflow as tf

    outputs = serve(image=tf.constant(images, tf.uint8), number=tf.constant(numbers, tf.int32))
    return {name: value.numpy() for name, value in outputs.items()}


def test_one_call_above_the_batch_limit_is_refused_naming_it(loaded):
    import tensorflow as tf

    serve = loaded.signatures[SIGNATURE]
    count = MAX_SERVING_BATCH + 1
    with pytest.raises(tf.errors.InvalidArgumentError, match=TOO_MANY):
        call(serve, np.zeros((count, 28, 28), np.uint8), np.zeros(count, np.int32))
    assert len(call(serve, np.zeros((MAX_SERVING_BATCH, 28, 28), np.uint8),
                    np.zeros(MAX_SERVING_BATCH, np.int32))["digit"]) == MAX_SERVING_BATCH


def test_readers_split_large_inputs_into_calls_the_signature_accepts(loaded, mnist):
    serve = loaded.signatures[SIGNATURE]
    _, (test_images, _) = mnist
    images = test_images[:2 * MAX_SERVING_BATCH + 5]
    numbers = np.arange(len(images), dtype=np.int32) % 10
    outputs = saved_model.run_signature(serve, images, numbers)
    parts = [call(serve, images[i:i + MAX_SERVING_BATCH], numbers[i:i + MAX_SERVING_BATCH])
             for i in range(0, len(images), MAX_SERVING_BATCH)]
    for name, value in outputs.items():
        np.testing.assert_array_equal(value, np.concatenate([part[name] for part in parts]))


def resident_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def requests(test_images):
    """(good requests with their single-threaded answers, bad requests with their message)."""
    rng = np.random.default_rng(13)
    good = []
    for size in GOOD_SIZES:
        images = test_images[rng.integers(0, len(test_images), size)]
        good.append((images, rng.integers(0, 10, size).astype(np.int32)))
    one = np.zeros((1, 28, 28), np.uint8)
    bad = [
        (one, np.array([10], np.int32), "number must be an integer from 0 to 9"),
        (np.zeros((3, 28, 28), np.uint8), np.array([1, 2], np.int32),
         "image and number must have the same batch size"),
        (np.zeros((MAX_SERVING_BATCH + 1, 28, 28), np.uint8),
         np.zeros(MAX_SERVING_BATCH + 1, np.int32), TOO_MANY),
    ]
    return good, bad


def hammer(serve, good, answers, bad, seconds, thread):
    """Call `serve` until `seconds` have passed: a quarter bad requests. Returns
    (good calls, refused calls, problems)."""
    import tensorflow as tf

    choose, deadline = random.Random(thread), time.monotonic() + seconds
    calls = refusals = 0
    problems = []
    while time.monotonic() < deadline and calls + refusals < MAX_CALLS_PER_THREAD:
        if choose.random() < 0.25:
            images, numbers, message = choose.choice(bad)
            try:
                call(serve, images, numbers)
                problems.append(f"not refused: {message}")
            except tf.errors.InvalidArgumentError as error:
                refusals += 1
                if message not in str(error):
                    problems.append(f"refused with {error.message!r}, not {message!r}")
        else:
            index = choose.randrange(len(good))
            got = call(serve, *good[index])
            calls += 1
            if any(not np.array_equal(got[name], answers[index][name]) for name in got):
                problems.append(f"a batch of {len(good[index][1])} answered differently")
    return calls, refusals, problems


def run_threads(serve, good, answers, bad, seconds):
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda thread: hammer(serve, good, answers, bad, seconds, thread),
                                range(THREADS)))
    calls, refusals = (sum(result[i] for result in results) for i in (0, 1))
    return calls, refusals, [problem for result in results for problem in result[2]]


def test_soak_8_threads_good_and_bad_requests(loaded, mnist):
    serve = loaded.signatures[SIGNATURE]
    _, (test_images, _) = mnist
    good, bad = requests(test_images)
    answers = [call(serve, images, numbers) for images, numbers in good]  # single-threaded
    run_threads(serve, good, answers, bad, WARM_UP_S)
    warm = resident_bytes()
    started = time.monotonic()
    calls, refusals, problems = run_threads(serve, good, answers, bad, SOAK_S)
    elapsed = time.monotonic() - started
    after = resident_bytes()
    print(f"\nsoak: {THREADS} threads, {elapsed:.1f} s, {calls} answered, {refusals} refused, "
          f"{len(problems)} problems; VmRSS {warm / 2**20:.0f} MiB after warm-up, "
          f"{after / 2**20:.0f} MiB after ({after / warm - 1:+.1%})")
    assert not problems, problems[:5]
    assert calls > 0 and refusals > 0
    assert after <= 1.10 * warm
