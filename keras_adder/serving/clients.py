"""What a client of the exported model sends it, one rule for `predict` and the demo.

A SavedModel with the `serving_image` signature gets each picture file as bytes
(`pictures.read_picture`: the file's own when TensorFlow's decoders read it as the file
means, else a PNG of the upright grey picture Pillow read) and prepares it in its graph,
exactly as TF Serving would for a client that sends the file. Everything else goes
through `serving_default` with raw pixels: .npy arrays and MNIST's images, pictures when
preparation is asked for or forbidden explicitly (the graph always prepares as `AUTO`),
and every picture for a model without the picture signature (LiteRT, ONNX, .keras, a
SavedModel exported before it existed), prepared here by `pictures.prepare_digit`.
"""

import numpy as np

from keras_adder.core.constants import IMAGE_SIZE, SIGNATURE
from keras_adder.core.errors import KerasAdderError
from keras_adder.data.pictures import Picture, digit_problem, prepare_digit, problem_of
from keras_adder.serving.formats import SIGNATURE_OUTPUTS
from keras_adder.serving.image_signature import IMAGE_SIGNATURE
from keras_adder.serving.saved_model import PictureRefused


def prepared_here(source, item, prepare=None):
    """An item as uint8 [28, 28]: a picture prepared here as MNIST was (a blank one or
    one of several digits refused, naming `source`), an array as it is."""
    if not isinstance(item, Picture):
        return item
    prepared = prepare_digit(item.gray, prepare)
    problem = digit_problem(prepared)
    if problem:
        raise KerasAdderError(f"{source}: {problem}")
    return prepared.image


def through_picture_signature(call_pictures, sources, pictures, numbers):
    """The serving_image signature's outputs for these pictures; a picture it refuses,
    finds blank or of several digits is a KerasAdderError naming its source."""
    try:
        outputs = call_pictures([picture.encoded for picture in pictures], numbers)
    except PictureRefused as refusal:
        raise KerasAdderError(f"{sources[refusal.index]}: {refusal.reason} "
                              f"({IMAGE_SIGNATURE} refused it)") from None
    for source, ink, digits in zip(sources, outputs["ink_found"], outputs["digits_seen"]):
        problem = problem_of(not ink, int(digits))
        if problem:
            raise KerasAdderError(f"{source}: {problem}")
    return outputs


def answer_items(model, sources, items, numbers, prepare=None):
    """(the uint8 [N, 28, 28] images the model saw, its outputs, the signature that
    answered each item): pictures through serving_image when the model has it and
    preparation is left to it (prepare None), everything else through serving_default."""
    pictures = [i for i, item in enumerate(items) if isinstance(item, Picture)
                and model.call_pictures is not None and prepare is None]
    raw = [i for i in range(len(items)) if i not in set(pictures)]
    images = np.zeros((len(items), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for i in raw:
        images[i] = prepared_here(sources[i], items[i], prepare)
    answered = [(raw, SIGNATURE, model.call(images[raw], numbers[raw]))] if raw else []
    if pictures:
        outputs = through_picture_signature(
            model.call_pictures, [sources[i] for i in pictures],
            [items[i] for i in pictures], numbers[pictures])
        images[pictures] = outputs["image"]
        answered.append((pictures, IMAGE_SIGNATURE, outputs))
    merged, signatures = {}, [None] * len(items)
    for rows, signature, outputs in answered:
        for name in SIGNATURE_OUTPUTS:
            merged.setdefault(name, np.zeros((len(items), *outputs[name].shape[1:]),
                                             outputs[name].dtype))[rows] = outputs[name]
        for i in rows:
            signatures[i] = signature
    return images, merged, signatures
