"""A deployable detector: image preprocessing, the SSD network and ``DecodeDetections`` in one model.

:func:`inference_model` wraps a trained SSD model (``SSD300v2``) so that it
takes a plain batch of RGB ``uint8`` images at the network's input size and
returns fixed-size detections (see :class:`ssd300.decode_detections.DecodeDetections`),
the same as ``BBoxUtility.detection_out`` after
:func:`ssd300.image_io.preprocess_input`. Such a model saves to ``.keras`` and
exports to ONNX, TensorFlow SavedModel and LiteRT (:mod:`ssd300.export`).
"""

import keras
from keras import ops

# The module, not its class: when ``import keras`` inside decode_detections registers
# ssd300's layers (ssd300/__init__.py), this module is imported while that one is half done.
from . import decode_detections
from .image_io import CAFFE_MEAN_BGR
from .layout import num_classes_of

__all__ = ["CaffePreprocess", "inference_model"]


@keras.saving.register_keras_serializable(package="ssd300")
class CaffePreprocess(keras.layers.Layer):
    """:func:`ssd300.image_io.preprocess_input` as a layer: RGB to BGR, minus the ImageNet mean.

    The same float32 arithmetic as the NumPy function, so a model with this
    layer in front sees exactly what ``preprocess_input`` would give it.

    Args:
        mean: the per-channel means in BGR order, subtracted after the swap.

    Input shape:
        ``(batch, height, width, 3)`` RGB values in ``[0, 255]`` of any
        numeric dtype (``uint8`` for a deployed model).

    Output shape:
        the same, float32.

    Example:

    >>> import numpy as np
    >>> x = np.array([[[[255, 0, 0]]]], dtype="uint8")   # one red pixel
    >>> [round(float(v), 3) for v in np.asarray(CaffePreprocess()(x)).ravel()]   # B, G, R
    [-103.939, -116.779, 131.32]
    """

    def __init__(self, mean=tuple(float(m) for m in CAFFE_MEAN_BGR), **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        if len(self.mean) != 3:
            raise ValueError(f"mean must have 3 values (B, G, R), got {self.mean}")

    def call(self, images):
        x = ops.cast(images, "float32")
        return ops.flip(x, axis=-1) - ops.convert_to_tensor(self.mean, dtype="float32")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mean": self.mean})
        return config


def inference_model(model, confidence_threshold=0.01, nms_thresh=0.45, top_k=400, keep_top_k=200,
                    preprocess=True, max_candidates=1024, background_label_id=0):
    """Wrap a trained SSD model into a detector: images in, detections out.

    Args:
        model: a Keras SSD model mapping ``(batch, h, w, 3)`` preprocessed
            images to ``(batch, num_priors, 4 + num_classes + 8)`` predictions
            (``SSD300v2``), with a static input size.
        confidence_threshold, nms_thresh, top_k, keep_top_k,
            background_label_id: as for ``BBoxUtility.detection_out``.
        preprocess: take RGB ``uint8`` images and apply
            :class:`CaffePreprocess` inside the model; ``False`` takes the
            model's own (already preprocessed, float32) input.
        max_candidates: see :class:`DecodeDetections`.

    Returns:
        A ``keras.Model`` named ``ssd300_detector`` with one input
        ``images`` ``(batch, h, w, 3)`` (``uint8`` RGB at the network's input
        size when ``preprocess``) and :class:`DecodeDetections`'s dict of
        outputs: ``boxes`` ``(batch, K, 4)`` normalised ``xmin, ymin, xmax,
        ymax``, ``scores`` ``(batch, K)``, ``classes`` ``(batch, K)`` int32,
        ``num_detections`` ``(batch,)`` int32, with ``K = keep_top_k``.

    Raises:
        TypeError: ``model`` is not a Keras model.
        ValueError: ``model`` does not look like an SSD model.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"inference_model needs a Keras SSD model, got {type(model).__name__} (build one with "
                        "ssd300.SSD300 and load weights with ssd300.load_weights_by_name)")
    input_shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if input_shape is None or len(input_shape) != 3 or None in input_shape or input_shape[-1] != 3:
        raise ValueError(f"inference_model needs a model with one input of static shape "
                         f"(height, width, 3); {model.name!r} has {model.input_shape}")
    output_shape = model.output_shape
    if not isinstance(output_shape, tuple) or len(output_shape) != 3 or num_classes_of(output_shape[-1]) < 2:
        raise ValueError(f"inference_model needs a model whose output is SSD predictions "
                         f"(batch, num_priors, 4 + num_classes + 8); {model.name!r} gives {output_shape}")
    if preprocess:
        images = keras.Input(input_shape, dtype="uint8", name="images")
        x = CaffePreprocess(name="caffe_preprocess")(images)
    else:
        images = keras.Input(input_shape, dtype="float32", name="images")
        x = images
    detections = decode_detections.DecodeDetections(
        confidence_threshold=confidence_threshold, nms_thresh=nms_thresh, top_k=top_k,
        keep_top_k=keep_top_k, background_label_id=background_label_id,
        max_candidates=max_candidates, name="decode_detections")(model(x))
    return keras.Model(images, detections, name="ssd300_detector")
