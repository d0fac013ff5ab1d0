"""``MultiboxLoss``: the SSD training objective, in ``keras.ops``.

Runs on every Keras backend and under XLA/``jit``: every shape is static,
so hard-negative mining selects by rank instead of a data-sized ``top_k``.
"""

import keras
from keras import ops

from .checks import check_non_negative
from .layout import check_num_classes, num_columns, split_predictions, split_targets


def _descending_rank(x):
    """Rank of each entry along axis 1 by decreasing value, ties by index.

    ``top_k`` keeps equal values in index order on TensorFlow and JAX;
    Keras's torch ``argsort`` is stable. Ranks of a permutation need no
    stability.
    """
    if keras.backend.backend() == "torch":
        order = ops.argsort(-x, axis=1)
    else:
        order = ops.top_k(x, k=x.shape[1], sorted=True)[1]
    return ops.argsort(order, axis=1)


class MultiboxLoss:
    """Multibox loss: softmax confidence loss plus smooth-L1 location loss.

    The original's semantics (rykov8/ssd_keras): cross-entropy on the
    predicted probabilities clipped to ``[1e-15, 1 - 1e-15]``; smooth L1 on the
    positive priors; hard negatives ranked by their highest non-background
    probability among the non-positive priors; one negative count for the
    whole batch, the smallest ``min(neg_pos_ratio * num_pos, num_priors -
    num_pos)`` over the images where it is positive (rounded down), or
    ``negatives_for_hard`` where there is none. The confidence loss is divided
    by ``num_pos + negatives`` and the location loss by ``max(num_pos, 1)``.

    Args:
        num_classes: number of classes including the background.
        alpha: weight of the location loss.
        neg_pos_ratio: at most this many negatives per positive.
        background_label_id: must be 0, as in the original.
        negatives_for_hard: negatives to mine when no image of the batch has
            a positive prior.
        per_image_mining: mine ``min(neg_pos_ratio * num_pos, num_priors -
            num_pos)`` negatives in each image separately, as the paper does,
            instead of one count for the whole batch (``negatives_for_hard``
            for an image without positives).

    References:
        Liu et al., "SSD: Single Shot MultiBox Detector", arXiv:1512.02325.
    """

    def __init__(self, num_classes, alpha=1.0, neg_pos_ratio=3.0,
                 background_label_id=0, negatives_for_hard=100.0,
                 per_image_mining=False):
        if background_label_id != 0:
            raise ValueError("Only 0 as background label id is supported.")
        check_num_classes(num_classes)
        for name, value in (("alpha", alpha), ("neg_pos_ratio", neg_pos_ratio),
                            ("negatives_for_hard", negatives_for_hard)):
            # A negative or NaN ratio fell back to negatives_for_hard without a word.
            check_non_negative(name, value)
        self.num_classes = num_classes
        self.alpha = alpha
        self.neg_pos_ratio = neg_pos_ratio
        self.background_label_id = background_label_id
        self.negatives_for_hard = negatives_for_hard
        self.per_image_mining = per_image_mining

    def _check_shapes(self, true_shape, pred_shape):
        """Refuse static shapes that do not fit, which would fail deep inside the backend (or broadcast)."""
        columns = num_columns(self.num_classes)
        for name, shape in (("y_true", true_shape), ("y_pred", pred_shape)):
            if len(shape) != 3 or shape[-1] not in (None, columns):
                raise ValueError(f"MultiboxLoss({self.num_classes}): {name} must have shape (batch, num_priors, "
                                 f"{columns}) (4 + {self.num_classes} classes + 8), got {shape}")
        if any(a is not None and b is not None and a != b for a, b in zip(true_shape, pred_shape)):
            raise ValueError(f"MultiboxLoss: y_true {true_shape} and y_pred {pred_shape} differ in shape")

    def _l1_smooth_loss(self, y_true, y_pred):
        """Smooth L1 summed over the last axis: ``(..., 4) -> (...)``."""
        diff = ops.abs(y_true - y_pred)
        return ops.sum(ops.where(diff < 1.0, 0.5 * diff * diff, diff - 0.5), axis=-1)

    def _softmax_loss(self, y_true, y_pred):
        """Cross-entropy of probabilities: ``(..., C) -> (...)``."""
        y_pred = ops.clip(y_pred, 1e-15, 1.0 - 1e-15)
        return -ops.sum(y_true * ops.log(y_pred), axis=-1)

    def compute_loss(self, y_true, y_pred):
        """Per-image loss.

        Args:
            y_true: ``(batch, num_priors, 4 + num_classes + 8)`` targets from
                ``BBoxUtility.assign_boxes``; ``y_true[..., -8]`` is 1 for
                positive priors.
            y_pred: the model's output, same shape.

        Returns:
            ``(batch,)`` float32 loss.
        """
        self._check_shapes(tuple(y_true.shape), tuple(y_pred.shape))
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        num_boxes = float(y_true.shape[1]) if y_true.shape[1] is not None else ops.cast(
            ops.shape(y_true)[1], "float32")

        true_offsets, true_classes, positive = split_targets(y_true)
        pred_offsets, pred_scores, _, _ = split_predictions(y_pred)
        conf_loss = self._softmax_loss(true_classes, pred_scores)
        loc_loss = self._l1_smooth_loss(true_offsets, pred_offsets)

        num_pos = ops.sum(positive, axis=1)
        pos_loc_loss = ops.sum(loc_loss * positive, axis=1)
        pos_conf_loss = ops.sum(conf_loss * positive, axis=1)

        num_neg = ops.minimum(self.neg_pos_ratio * num_pos, num_boxes - num_pos)
        has_neg = num_neg > 0
        if self.per_image_mining:
            num_neg = ops.where(has_neg, num_neg, self.negatives_for_hard)
        else:
            # Smallest positive count over the batch, or negatives_for_hard.
            smallest = ops.min(ops.where(has_neg, num_neg, float("inf")))
            num_neg = ops.where(ops.any(has_neg), smallest, self.negatives_for_hard)
            num_neg = ops.broadcast_to(num_neg, ops.shape(num_pos))
        num_neg = ops.floor(num_neg)

        # Rank the non-positive priors by their best non-background
        # probability; a stable sort breaks ties by index, as top_k does.
        max_confs = ops.max(pred_scores[:, :, 1:], axis=2)
        hardness = max_confs * (1.0 - positive)
        rank = _descending_rank(hardness)
        negative = ops.cast(ops.cast(rank, "float32") < num_neg[:, None], "float32")
        neg_conf_loss = ops.sum(conf_loss * negative, axis=1)

        denominator = num_pos + num_neg
        total = (pos_conf_loss + neg_conf_loss) / ops.where(denominator > 0, denominator, 1.0)
        num_pos = ops.where(num_pos != 0, num_pos, 1.0)
        return total + self.alpha * pos_loc_loss / num_pos

    def __call__(self, y_true, y_pred):
        return self.compute_loss(y_true, y_pred)
