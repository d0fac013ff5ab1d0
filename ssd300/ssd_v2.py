"""The SSD300 network (VGG16 base), layer for layer as in the originals.

Layer names are those of rykov8/ssd_keras and wikke/SSD_Keras, so their
Keras 2 HDF5 weight files load by layer name (see :mod:`ssd300.weights`).
"""

import keras
from keras import layers

from .checks import is_integer
from .layout import check_num_classes
from .ssd_layers import DilatedConv2D, Normalize, PriorBox

#: ``(source layer, min_size, max_size, aspect_ratios)`` of each prediction
#: head, in the order their outputs are concatenated.
HEADS = (
    ("conv4_3_norm", 30.0, None, (2,)),
    ("fc7", 60.0, 114.0, (2, 3)),
    ("conv6_2", 114.0, 168.0, (2, 3)),
    ("conv7_2", 168.0, 222.0, (2, 3)),
    ("conv8_2", 222.0, 276.0, (2, 3)),
    ("pool6", 276.0, 330.0, (2, 3)),
)
VARIANCES = (0.1, 0.1, 0.2, 0.2)
#: ``(filters, convolutions)`` of VGG16's five blocks: layers ``conv{block}_{i}``.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def vgg16_conv_names():
    """``conv1_1`` ... ``conv5_3``: the VGG16 base's convolutions, in order."""
    return [f"conv{b}_{i}" for b, (_, n) in enumerate(VGG16_BLOCKS, start=1) for i in range(1, n + 1)]


def prior_layer_name(source):
    """The name of the PriorBox layer on feature map ``source``."""
    return f"{source}_mbox_priorbox"


def prior_layer_names():
    """The PriorBox layers' names, in the order ``mbox_priorbox`` concatenates them."""
    return [prior_layer_name(source) for source, *_ in HEADS]


def _conv(filters, kernel, name, initializer, layer=layers.Conv2D, **kwargs):
    kwargs.setdefault("padding", "same")
    kwargs.setdefault("activation", "relu")
    if initializer is None:
        # He's scale is 2, which keeps the activations of Caffe-scaled input
        # (values up to +-128) at that size through 20 ReLU layers, and the
        # first losses of a run from scratch in the hundreds; Glorot's makes
        # them vanish. 1.3 brings them to order 1 at the top.
        initializer = keras.initializers.VarianceScaling(1.3, "fan_in", "truncated_normal")
    return layer(filters, kernel, name=name, kernel_initializer=initializer, **kwargs)


def _vgg16_base(x, initializer):
    """VGG16 conv1_1 ... conv5_3 with the original's names; returns conv4_3, conv5_3."""
    conv4_3 = None
    for b, (filters, n) in enumerate(VGG16_BLOCKS, start=1):
        for i in range(1, n + 1):
            x = _conv(filters, 3, f"conv{b}_{i}", initializer)(x)
        if b == 4:
            conv4_3 = x
        if b < 5:
            x = layers.MaxPooling2D(2, 2, padding="same", name=f"pool{b}")(x)
    return conv4_3, x


def _class_head_name(name, num_classes):
    # The original renames the class heads for other class counts, so that
    # by-name weight loading leaves them at their initial values.
    return name if num_classes == 21 else f"{name}_{num_classes}"


def SSD300v2(input_shape, num_classes=21, kernel_initializer=None):
    """Build SSD300 as in wikke/SSD_Keras ``SSD300v2``.

    Args:
        input_shape: ``(height, width, 3)``; ``(300, 300, 3)`` reproduces the
            originals. Other sizes build too, with the priors that follow
            from the feature-map sizes.
        num_classes: number of classes including the background (class 0).
        kernel_initializer: of the ReLU convolutions; ``None`` for a
            fan-in-scaled normal (He-like, variance ``1.3 / fan_in``), under
            which training from scratch starts well. The original used
            Keras's default ``"glorot_uniform"``, under which the activations
            vanish through the 20 ReLU layers. Loaded weights replace it.

    Returns:
        A ``keras.Model`` mapping images ``(batch, h, w, 3)`` (Caffe
        preprocessing: BGR, ImageNet mean subtracted) to
        ``(batch, num_priors, 4 + num_classes + 8)``: the encoded box offsets,
        softmax class probabilities, and the prior boxes (normalised
        ``xmin, ymin, xmax, ymax``) with their four variances. For 300x300
        there are 7308 priors.

    References:
        Liu et al., "SSD: Single Shot MultiBox Detector", arXiv:1512.02325.
    """
    if isinstance(input_shape, (int, str)):
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape!r}.")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(
            f"input_shape must be (height, width, 3), got {input_shape}.")
    if any(size is not None and (not is_integer(size) or size < 1)
           for size in input_shape[:2]):
        raise ValueError(f"input_shape's height and width must be positive integers, got {input_shape}.")
    check_num_classes(num_classes)
    img_size = (input_shape[1], input_shape[0])
    inputs = keras.Input(shape=input_shape, name="input_1")

    init = kernel_initializer
    conv4_3, conv5_3 = _vgg16_base(inputs, init)
    pool5 = layers.MaxPooling2D(3, 1, padding="same", name="pool5")(conv5_3)
    # A Conv2D with the same weights and outputs, fast on every CPU (see
    # ssd300.dilated_conv).
    fc6 = _conv(1024, 3, "fc6", init, layer=DilatedConv2D, dilation_rate=6)(pool5)
    fc7 = _conv(1024, 1, "fc7", init)(fc6)
    conv6_1 = _conv(256, 1, "conv6_1", init)(fc7)
    conv6_2 = _conv(512, 3, "conv6_2", init, strides=2)(conv6_1)
    conv7_1 = _conv(128, 1, "conv7_1", init)(conv6_2)
    conv7_1z = layers.ZeroPadding2D(name="conv7_1z")(conv7_1)
    conv7_2 = _conv(256, 3, "conv7_2", init, strides=2, padding="valid")(conv7_1z)
    conv8_1 = _conv(128, 1, "conv8_1", init)(conv7_2)
    conv8_2 = _conv(256, 3, "conv8_2", init, strides=2)(conv8_1)
    pool6 = layers.GlobalAveragePooling2D(name="pool6")(conv8_2)
    conv4_3_norm = Normalize(20, name="conv4_3_norm")(conv4_3)

    sources = {"conv4_3_norm": conv4_3_norm, "fc7": fc7, "conv6_2": conv6_2,
               "conv7_2": conv7_2, "conv8_2": conv8_2, "pool6": pool6}
    locs, confs, priors = [], [], []
    for source_name, min_size, max_size, ratios in HEADS:
        source = sources[source_name]
        prior_layer = PriorBox(img_size, min_size, max_size=max_size,
                               aspect_ratios=list(ratios), variances=list(VARIANCES),
                               name=prior_layer_name(source_name), dtype="float32")
        num_priors = len(prior_layer.aspect_ratios)
        if source_name == "pool6":
            # The global-pooled map is 1x1: dense heads, and a reshape so
            # PriorBox sees a feature map.
            locs.append(layers.Dense(num_priors * 4, name="pool6_mbox_loc_flat")(source))
            confs.append(layers.Dense(
                num_priors * num_classes,
                name=_class_head_name("pool6_mbox_conf_flat", num_classes))(source))
            source = layers.Reshape((1, 1, 256), name="pool6_reshaped")(source)
        else:
            loc = layers.Conv2D(num_priors * 4, 3, padding="same",
                                name=f"{source_name}_mbox_loc")(source)
            conf = layers.Conv2D(
                num_priors * num_classes, 3, padding="same",
                name=_class_head_name(f"{source_name}_mbox_conf", num_classes))(source)
            locs.append(layers.Flatten(name=f"{source_name}_mbox_loc_flat")(loc))
            confs.append(layers.Flatten(name=f"{source_name}_mbox_conf_flat")(conf))
        priors.append(prior_layer(source))

    mbox_loc = layers.Concatenate(axis=1, name="mbox_loc")(locs)
    mbox_conf = layers.Concatenate(axis=1, name="mbox_conf")(confs)
    mbox_priorbox = layers.Concatenate(axis=1, name="mbox_priorbox", dtype="float32")(priors)
    num_boxes = mbox_loc.shape[-1] // 4
    mbox_loc = layers.Reshape((num_boxes, 4), name="mbox_loc_final")(mbox_loc)
    mbox_conf = layers.Reshape((num_boxes, num_classes), name="mbox_conf_logits")(mbox_conf)
    # float32 from here on, so mixed precision keeps the softmax and the
    # priors exact.
    mbox_conf = layers.Activation("softmax", name="mbox_conf_final", dtype="float32")(mbox_conf)
    predictions = layers.Concatenate(axis=2, name="predictions", dtype="float32")(
        [mbox_loc, mbox_conf, mbox_priorbox])
    return keras.Model(inputs=inputs, outputs=predictions, name="SSD300")


#: The name rykov8/ssd_keras users import.
SSD300 = SSD300v2
