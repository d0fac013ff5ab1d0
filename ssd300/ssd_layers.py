"""The layers SSD adds to Keras: ``Normalize`` and ``PriorBox`` (and ``fc6``'s ``DilatedConv2D``).

They use ``keras`` and ``keras.ops`` only, so they run on the TensorFlow,
JAX and PyTorch backends, and they are registered and config-complete, so a
model saved with ``model.save("x.keras")`` loads back after ``import ssd300``.
``DilatedConv2D`` lives in :mod:`ssd300.dilated_conv`; importing it here
registers it with the others.
"""

import keras
import numpy as np
from keras import ops

from .dilated_conv import DilatedConv2D  # noqa: F401  (registered on import)


#: The floor of the squared norm in :class:`Normalize` (``tf.nn.l2_normalize``'s epsilon).
L2_EPSILON = 1e-12


@keras.saving.register_keras_serializable(package="ssd300")
class Normalize(keras.layers.Layer):
    """L2 normalisation over channels with a learned per-channel scale.

    As in ParseNet (Liu et al., 2015): ``y = gamma * x / ||x||_2`` where the
    norm is taken over the channel axis and ``gamma`` starts at ``scale``.
    Exactly Keras 2's ``K.l2_normalize`` (``tf.nn.l2_normalize``):
    ``x * rsqrt(max(sum(x ** 2), 1e-12))``, so a vector of norm below 1e-6
    is divided by 1e-6.

    Args:
        scale: initial value of every entry of ``gamma``.

    Input shape:
        ``(batch, rows, cols, channels)`` (channels last).

    Output shape:
        Same as the input.
    """

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.axis = -1

    def build(self, input_shape):
        channels = input_shape[self.axis]
        # Named like the original's variable so by-name loading lines up.
        self.gamma = self.add_weight(
            name=f"{self.name}_gamma",
            shape=(channels,),
            initializer=keras.initializers.Constant(self.scale),
            trainable=True,
        )

    def call(self, x):
        # Keras 2's K.l2_normalize was tf.nn.l2_normalize: x * rsqrt(max(sum(x**2), 1e-12)),
        # the same operations here (keras.ops.normalize floors the norm at 1e-7 instead, which
        # differs for norms below 1e-6). Under mixed precision the sum is taken in float32:
        # float16 would overflow on conv4_3's activations and flush 1e-12 to 0.
        dtype = keras.backend.standardize_dtype(x.dtype)
        wide = ops.cast(x, "float32") if dtype in ("float16", "bfloat16") else x
        square_sum = ops.sum(ops.square(wide), axis=self.axis, keepdims=True)
        inverse_norm = ops.rsqrt(ops.maximum(square_sum, L2_EPSILON))
        return ops.cast(wide * inverse_norm, dtype) * ops.cast(self.gamma, dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale})
        return config


def prior_box_aspect_ratios(max_size, aspect_ratios, flip):
    """The original's ordered list of aspect ratios for one feature map.

    ``1`` first, a second ``1`` (the ``sqrt(min_size * max_size)`` box) when
    ``max_size`` is given, then each new ratio followed by its reciprocal when
    ``flip`` is set.
    """
    ratios = [1.0]
    if max_size:
        ratios.append(1.0)
    for ar in aspect_ratios or []:
        if ar in ratios:
            continue
        ratios.append(float(ar))
        if flip:
            ratios.append(1.0 / ar)
    return ratios


def generate_prior_boxes(img_size, layer_size, min_size, max_size=None,
                         aspect_ratios=None, flip=True, variances=(0.1,),
                         clip=True):
    """Prior boxes of one feature map, in NumPy.

    Args:
        img_size: ``(width, height)`` of the network input, in pixels.
        layer_size: ``(width, height)`` of the feature map.
        min_size, max_size, aspect_ratios, flip, variances, clip: as for
            :class:`PriorBox`.

    Returns:
        float64 array ``(layer_h * layer_w * num_ratios, 8)``: normalised
        ``xmin, ymin, xmax, ymax`` then the four variances. Locations run
        row by row (y outer, x inner); at each location the boxes follow
        :func:`prior_box_aspect_ratios`.
    """
    img_w, img_h = img_size
    layer_w, layer_h = layer_size
    ratios = np.array(prior_box_aspect_ratios(max_size, aspect_ratios, flip))
    half_w = 0.5 * min_size * np.sqrt(ratios)
    half_h = 0.5 * min_size / np.sqrt(ratios)
    if max_size:
        half_w[1] = half_h[1] = 0.5 * np.sqrt(min_size * max_size)

    step_x = img_w / layer_w
    step_y = img_h / layer_h
    cx, cy = np.meshgrid(
        np.linspace(0.5 * step_x, img_w - 0.5 * step_x, layer_w),
        np.linspace(0.5 * step_y, img_h - 0.5 * step_y, layer_h),
    )
    cx = cx.reshape(-1, 1)
    cy = cy.reshape(-1, 1)
    boxes = np.stack(
        [(cx - half_w) / img_w, (cy - half_h) / img_h,
         (cx + half_w) / img_w, (cy + half_h) / img_h], axis=-1,
    ).reshape(-1, 4)
    if clip:
        boxes = np.clip(boxes, 0.0, 1.0)

    variances = np.asarray(variances, dtype=np.float64).ravel()
    if variances.size == 1:
        variances = np.repeat(variances, 4)
    elif variances.size != 4:
        raise ValueError(
            f"PriorBox needs one or four variances, got {variances.size}.")
    return np.concatenate(
        [boxes, np.broadcast_to(variances, (len(boxes), 4))], axis=1)


@keras.saving.register_keras_serializable(package="ssd300")
class PriorBox(keras.layers.Layer):
    """Prior (default) boxes of one feature map, for every image of a batch.

    The boxes depend only on the shapes, so they are computed once in NumPy
    when the layer is built and broadcast over the batch in ``call``.

    Args:
        img_size: ``(width, height)`` of the network input in pixels.
        min_size: side of the square aspect-ratio-1 box, in pixels.
        max_size: if given, adds a square box of side
            ``sqrt(min_size * max_size)``.
        aspect_ratios: further aspect ratios (``width / height``).
        flip: also add the reciprocal of each aspect ratio.
        variances: one value, or four for ``x, y, w, h``.
        clip: clip the boxes to ``[0, 1]``. Honoured (the original always
            clipped).

    Input shape:
        ``(batch, rows, cols, channels)``.

    Output shape:
        ``(batch, rows * cols * num_ratios, 8)``: normalised
        ``xmin, ymin, xmax, ymax`` followed by the variances.
    """

    def __init__(self, img_size, min_size, max_size=None, aspect_ratios=None,
                 flip=True, variances=[0.1], clip=True, **kwargs):
        super().__init__(**kwargs)
        if min_size <= 0:
            raise ValueError(f"min_size must be positive, got {min_size}.")
        if max_size and max_size < min_size:
            raise ValueError(
                f"max_size ({max_size}) must not be less than min_size ({min_size}).")
        if np.asarray(variances).size not in (1, 4):
            raise ValueError("PriorBox needs one or four variances.")
        self.img_size = tuple(img_size)
        self.min_size = float(min_size)
        self.max_size = float(max_size) if max_size else None
        self.flip = bool(flip)
        self.given_aspect_ratios = [float(a) for a in (aspect_ratios or [])]
        self.aspect_ratios = prior_box_aspect_ratios(
            self.max_size, self.given_aspect_ratios, self.flip)
        self.variances = [float(v) for v in np.asarray(variances).ravel()]
        self.clip = bool(clip)
        self.prior_boxes = None

    def build(self, input_shape):
        rows, cols = input_shape[1], input_shape[2]
        if rows is None or cols is None:
            raise ValueError(
                f"{self.name}: PriorBox needs a static feature-map size, got {input_shape}.")
        self.prior_boxes = generate_prior_boxes(
            self.img_size, (cols, rows), self.min_size, self.max_size,
            self.given_aspect_ratios, self.flip, self.variances, self.clip,
        ).astype("float32")

    def call(self, x):
        priors = ops.convert_to_tensor(self.prior_boxes, dtype=self.compute_dtype)
        priors = ops.expand_dims(priors, 0)
        return ops.broadcast_to(priors, (ops.shape(x)[0],) + tuple(self.prior_boxes.shape))

    def compute_output_shape(self, input_shape):
        num_boxes = len(self.aspect_ratios) * input_shape[1] * input_shape[2]
        return (input_shape[0], num_boxes, 8)

    def get_config(self):
        config = super().get_config()
        config.update({
            "img_size": list(self.img_size),
            "min_size": self.min_size,
            "max_size": self.max_size,
            "aspect_ratios": self.given_aspect_ratios,
            "flip": self.flip,
            "variances": self.variances,
            "clip": self.clip,
        })
        return config
