"""The inversion rule of image files: MNIST digits are light on dark, so a picture is
inverted when the mean of its outermost ring of pixels is above 127 of 255 (a light
background), whatever the digit looks like.

Each picture is 28x28 (so no resizing blurs the comparison) and saved as PNG.
"""

import numpy as np
from PIL import Image

from keras_adder.images import load_image_file

SIZE = 28


def picture(background, digit, thickness=2):
    """A grayscale 28x28 picture: a square ring of `digit` (a zero, roughly) drawn
    `thickness` pixels wide on `background`; `background` may be an array."""
    pixels = np.empty((SIZE, SIZE), np.uint8)
    pixels[...] = background
    inner = slice(4, SIZE - 4)
    strokes = np.zeros((SIZE, SIZE), bool)
    strokes[inner, inner] = True
    hole = slice(4 + thickness, SIZE - 4 - thickness)
    strokes[hole, hole] = False
    pixels[strokes] = digit
    return pixels, strokes


def load(tmp_path, pixels):
    path = tmp_path / "digit.png"
    Image.fromarray(pixels).save(path)
    return load_image_file(path)


def border_mean(pixels):
    return np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).mean()


def test_a_bold_dark_digit_on_light_paper_is_inverted(tmp_path):
    # So bold that most of the picture is dark: only the border says "light paper".
    pixels, strokes = picture(background=230, digit=10, thickness=9)
    assert pixels.mean() < 127 < border_mean(pixels)
    loaded = load(tmp_path, pixels)
    np.testing.assert_array_equal(loaded, 255 - pixels)
    assert loaded[strokes].min() == 245 and loaded[~strokes].max() == 25


def test_a_light_digit_on_dark_paper_is_kept(tmp_path):
    # Not black: scanned dark paper. Used as it is, not stretched.
    pixels, strokes = picture(background=60, digit=220)
    loaded = load(tmp_path, pixels)
    np.testing.assert_array_equal(loaded, pixels)


def test_a_border_mean_of_exactly_127_is_not_light(tmp_path):
    pixels, strokes = picture(background=127, digit=255)
    assert border_mean(pixels) == 127
    np.testing.assert_array_equal(load(tmp_path, pixels), pixels)


def test_a_border_mean_just_above_127_is_light(tmp_path):
    pixels, strokes = picture(background=127, digit=0)
    pixels[0, SIZE // 2] = 128  # one border pixel brighter: the mean is 127 + 1/112
    assert 127 < border_mean(pixels) < 127.01
    loaded = load(tmp_path, pixels)
    np.testing.assert_array_equal(loaded, 255 - pixels)
    assert loaded[strokes].min() == 255


def test_a_border_mean_just_below_127_is_dark(tmp_path):
    pixels, strokes = picture(background=127, digit=255)
    pixels[0, SIZE // 2] = 126
    assert 126.99 < border_mean(pixels) < 127
    np.testing.assert_array_equal(load(tmp_path, pixels), pixels)
