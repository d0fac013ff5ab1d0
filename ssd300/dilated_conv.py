"""``DilatedConv2D``: a ``Conv2D`` whose dilated convolution is fast on every CPU.

SSD's ``fc6`` is a 3x3 convolution, 512 -> 1024 channels, dilation 6, on a
19x19 map (8x8 at 128x128). TensorFlow's CPU kernels compute the gradient
of a dilated convolution on a slow path (30x slower than the same
convolution undilated without oneDNN, 2-5x with it), and XLA's CPU
convolution is slow for it too. A dilated convolution is also a sum of one
matrix product per kernel tap, each on the part of the map where that tap
lands inside the input::

    y[i, j] = sum_{a, b} x[i + a * d - p, j + b * d - p] @ W[a, b]

Computed so (``"taps"``), the products skip the taps that fall into the
zero padding — on an 8x8 map with dilation 6 a quarter of the nominal
work — and their gradients are matrix products too, which every backend runs
near the machine's matmul rate. The layer is a ``keras.layers.Conv2D``
with the same weights (``kernel`` ``(kh, kw, in, out)``, ``bias``), the same
config plus ``method``, and the same outputs to float32 rounding.
"""

import keras
from keras import ops

#: How ``DilatedConv2D`` computes the convolution.
METHODS = ("auto", "taps", "native")


def conv_output_length(length, kernel, dilation, padding):
    """Output length along one axis of a stride-1 convolution, and the padding before it.

    Args:
        length: input length.
        kernel: kernel size.
        dilation: dilation rate.
        padding: ``"same"`` or ``"valid"``.

    Returns:
        ``(output length, padding before)``; Keras's (TensorFlow's) ``"same"``
        puts the odd pixel of the padding after.
    """
    span = (kernel - 1) * dilation
    if padding == "same":
        return length, span // 2
    return length - span, 0


def tap_convolution(x, kernel, dilation_rate, padding):
    """A stride-1 2-D convolution as one matrix product per kernel tap.

    Args:
        x: ``(batch, rows, cols, in)`` input (channels last).
        kernel: ``(kh, kw, in, out)``.
        dilation_rate: ``(dh, dw)``.
        padding: ``"same"`` or ``"valid"`` (case-insensitive).

    Returns:
        ``(batch, out_rows, out_cols, out)``, equal to
        ``keras.ops.conv(x, kernel, padding=padding, dilation_rate=dilation_rate)``
        up to float rounding. A tap that lands only on padding is skipped.
    """
    padding = padding.lower()
    kh, kw = kernel.shape[:2]
    rows, cols = x.shape[1], x.shape[2]
    out_rows, top = conv_output_length(rows, kh, dilation_rate[0], padding)
    out_cols, left = conv_output_length(cols, kw, dilation_rate[1], padding)
    if out_rows < 1 or out_cols < 1:
        raise ValueError(f"input {rows}x{cols} is smaller than the dilated kernel")
    outputs = []
    for a in range(kh):
        dy = a * dilation_rate[0] - top
        # Output rows whose tap lands inside the input.
        r0, r1 = max(0, -dy), min(out_rows, rows - dy)
        for b in range(kw):
            dx = b * dilation_rate[1] - left
            c0, c1 = max(0, -dx), min(out_cols, cols - dx)
            if r0 >= r1 or c0 >= c1:
                continue
            y = ops.matmul(x[:, r0 + dy:r1 + dy, c0 + dx:c1 + dx, :], kernel[a, b])
            if (r0, r1, c0, c1) != (0, out_rows, 0, out_cols):
                y = ops.pad(y, [[0, 0], [r0, out_rows - r1], [c0, out_cols - c1], [0, 0]])
            outputs.append(y)
    if not outputs:
        # Every tap on padding (an even kernel on a tiny map): zeros, still
        # connected to the kernel so that its gradient is a zero tensor.
        return ops.zeros_like(x[..., :1]) * kernel[0, 0, :1, :]
    total = outputs[0]
    for y in outputs[1:]:
        total = total + y
    return total


def taps_are_faster():
    """Whether :func:`tap_convolution` beats the backend's dilated convolution here.

    On the CPU, TensorFlow's and JAX's (XLA's) dilated convolutions are
    several times slower than the tap products; PyTorch's (oneDNN) is not.
    GPU libraries (cuDNN) handle dilation well.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.config.list_logical_devices("GPU")
    if backend == "jax":
        import jax

        return jax.default_backend() == "cpu"
    return False


@keras.saving.register_keras_serializable(package="ssd300")
class DilatedConv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` computing a dilated convolution as per-tap matrix products.

    Same arguments, weights (``kernel``, ``bias``) and outputs as
    ``Conv2D``; Keras 2 and Keras 3 weight files load into it by layer
    name.

    Args:
        *args, **kwargs: ``keras.layers.Conv2D``'s.
        method: ``"taps"`` (the per-tap products), ``"native"`` (the
            backend's convolution, as ``Conv2D``) or ``"auto"``
            (``"taps"`` where :func:`taps_are_faster`). ``"taps"`` needs
            one group, channels last and a dilation above 1 (so strides
            1); other settings use the native convolution.

    Input shape:
        ``(batch, rows, cols, channels)``.

    Output shape:
        ``(batch, out_rows, out_cols, filters)``, as ``Conv2D``.
    """

    def __init__(self, *args, method="auto", **kwargs):
        super().__init__(*args, **kwargs)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method

    def uses_taps(self):
        """Whether ``call`` computes the per-tap products (else the native convolution)."""
        if self.method == "native" or self.method == "auto" and not taps_are_faster():
            return False
        # Keras allows a dilation above 1 only with strides 1.
        return (self.groups == 1 and self.data_format == "channels_last"
                and max(self.dilation_rate) > 1)

    def convolution_op(self, inputs, kernel):
        if self.uses_taps():
            return tap_convolution(inputs, kernel, self.dilation_rate, self.padding)
        return super().convolution_op(inputs, kernel)

    def get_config(self):
        config = super().get_config()
        config["method"] = self.method
        return config
