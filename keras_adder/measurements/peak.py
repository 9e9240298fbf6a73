"""What the machine and a model allow: the fp32 matmul peak, a model's FLOPs per image,
and wall-clock timing of calls."""

import time

import keras
import numpy as np
import tensorflow as tf


def _leaf_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):  # a nested model
            yield from _leaf_layers(layer)
        else:
            yield layer


def model_flops_per_image(model):
    """FLOPs of one (image, number) pair: 2 x the multiply-adds of every Conv2D and
    Dense layer. Pooling, BatchNorm, activations and softmax are elementwise and left
    out (under 2 % of the compact model's work)."""
    flops = 0
    for layer in _leaf_layers(model):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            # Each output value costs one multiply-add per kernel entry feeding it;
            # the kernel's last axis is the output channels.
            outputs = int(np.prod(layer.output.shape[1:]))
            flops += 2 * outputs * int(np.prod(layer.kernel.shape[:-1]))
    return flops


def matmul_gflops(size=1024, calls=16):
    """One timing of TensorFlow's fp32 matmul: GFLOP/s of `calls` products of two
    [size, size] matrices (2 size^3 FLOPs each)."""
    a = tf.random.stateless_normal([size, size], seed=[1, 2])
    b = tf.random.stateless_normal([size, size], seed=[3, 4])
    start = time.perf_counter()
    for _ in range(calls):
        tf.linalg.matmul(a, b).numpy()
    return 2 * size ** 3 * calls / (time.perf_counter() - start) / 1e9


def durations(call, count):
    """Wall seconds of `count` calls of `call`, one by one."""
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds
