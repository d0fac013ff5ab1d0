"""The packed prediction and target layout, named once.

The model's output and ``BBoxUtility.assign_boxes``'s targets share one
layout along the last axis, ``4 + num_classes + 8`` columns:

* ``[0:4]`` box offsets (encoded against the prior, see
  :func:`ssd300.ssd_utils.encode_boxes`);
* ``[4:4 + num_classes]`` class scores (probabilities, or a one-hot row in a
  target), the background first;
* ``[-8:-4]`` the prior box, normalised ``xmin, ymin, xmax, ymax``; in a
  target, column ``-8`` is instead 1 for a positive (matched) prior;
* ``[-4:]`` the prior's four variances.

Slicing works the same on NumPy arrays and on Keras tensors, so the loss,
``BBoxUtility`` and the decoding layer all call these.

Example:

>>> import numpy as np
>>> predictions = np.zeros((2, 7308, 4 + 21 + 8))
>>> offsets, scores, priors, variances = split_predictions(predictions)
>>> scores.shape
(2, 7308, 21)
"""

from .checks import is_integer

#: Columns before the class scores (the box offsets) and after them (prior box and variances).
NUM_OFFSETS = 4
NUM_PRIOR_COLUMNS = 8


def check_num_classes(num_classes):
    """Raise ``ValueError`` unless ``num_classes`` (the background included) is an integer >= 2."""
    if not is_integer(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes counts the background and one class at least: an integer >= 2, "
                         f"got {num_classes!r}")


def num_columns(num_classes):
    """Width of the last axis for ``num_classes`` classes, the background included."""
    return NUM_OFFSETS + num_classes + NUM_PRIOR_COLUMNS


def num_classes_of(num_columns_):
    """The class count (background included) that a last axis this wide holds."""
    return num_columns_ - NUM_OFFSETS - NUM_PRIOR_COLUMNS


def split_predictions(predictions):
    """Split ``(..., 4 + C + 8)`` model outputs.

    Returns:
        ``(offsets, scores, priors, variances)``: ``(..., 4)``, ``(..., C)``,
        ``(..., 4)`` and ``(..., 4)`` views.
    """
    return (predictions[..., :NUM_OFFSETS], predictions[..., NUM_OFFSETS:-NUM_PRIOR_COLUMNS],
            predictions[..., -NUM_PRIOR_COLUMNS:-4], predictions[..., -4:])


def split_targets(targets):
    """Split ``(..., 4 + C + 8)`` training targets from ``assign_boxes``.

    Returns:
        ``(offsets, one_hot, positive)``: ``(..., 4)``, ``(..., C)`` and the
        ``(...)`` positive-prior flag.
    """
    return (targets[..., :NUM_OFFSETS], targets[..., NUM_OFFSETS:-NUM_PRIOR_COLUMNS],
            targets[..., -NUM_PRIOR_COLUMNS])


def num_classes_with_background(classes):
    """The model's ``num_classes`` for a list of object class names: label 0 is the background.

    ``XML_preprocessor.num_classes`` keeps the original's meaning (object
    classes only); the model, ``BBoxUtility`` and ``MultiboxLoss`` count the
    background too. This is the one place that adds it.
    """
    return len(classes) + 1
