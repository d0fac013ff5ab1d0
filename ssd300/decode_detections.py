"""``DecodeDetections``: box decoding and per-class NMS as a Keras layer (``keras.ops`` only).

The layer gives exactly :meth:`ssd300.ssd_utils.BBoxUtility.detection_out`'s
detections, as fixed-size tensors, so that a model ending in it runs on every
backend and exports to ONNX, TensorFlow SavedModel and LiteRT (see
:mod:`ssd300.export`).

The algorithm, per image:

1. The ``max_candidates`` best ``(class, prior)`` scores above
   ``confidence_threshold`` (background excluded), by one ``top_k`` over the
   flat index ``class * num_priors + prior``: by decreasing score, equal
   scores by class then prior (``top_k`` puts the lower index first), which
   is the output's order.
2. Only those candidates' boxes are decoded, with
   :func:`ssd300.ssd_utils.decode_boxes`'s formula.
3. Greedy NMS for all classes and images at once, as
   :func:`ssd300.box_ops.batched_nms` does it: the candidates are grouped by
   class (keeping their order), and in each round every class keeps its best
   undecided candidate and drops the undecided candidates of its class that
   it overlaps by more than ``nms_thresh``. The loop runs as many rounds as
   the largest number of boxes one class keeps, at most ``top_k``; a round is
   a few dozen ops on ``(batch, max_candidates)`` tensors.
4. The first ``keep_top_k`` kept candidates, in the order of step 1.

The one bound ``detection_out`` does not have is ``max_candidates``. With at
most that many candidates in an image the result is exact. With more, NMS sees
the ``max_candidates`` best: every decision it takes is still
``detection_out``'s (a candidate is only suppressed by better ones of its
class, all of which are seen), so the result is still exact whenever the
image's ``keep_top_k`` rows fill up with scores above the best unseen one; it
can only miss boxes scoring at most as high as the unseen ones.
"""

import keras
import numpy as np
from keras import ops

from .layout import num_classes_of, split_predictions

# Sorts non-kept candidates after every kept one.
_BIG = 2**31 - 1


def decode_boxes(mbox_loc, mbox_priorbox, variances):
    """:func:`ssd300.ssd_utils.decode_boxes` on Keras tensors: the same formula, op for op.

    Args:
        mbox_loc: ``(..., 4)`` predicted offsets.
        mbox_priorbox: ``(..., 4)`` prior boxes, normalised ``xmin, ymin, xmax, ymax``.
        variances: ``(..., 4)`` prior variances.

    Returns:
        ``(..., 4)`` normalised ``xmin, ymin, xmax, ymax``, clipped to ``[0, 1]``.
    """
    prior_wh = mbox_priorbox[..., 2:4] - mbox_priorbox[..., :2]
    prior_center = 0.5 * (mbox_priorbox[..., :2] + mbox_priorbox[..., 2:4])
    # The centre-y offset is scaled by the prior's height, as in ssd_utils.
    center = mbox_loc[..., :2] * prior_wh * variances[..., :2] + prior_center
    half_wh = 0.5 * ops.exp(mbox_loc[..., 2:4] * variances[..., 2:4]) * prior_wh
    return ops.clip(ops.concatenate([center - half_wh, center + half_wh], axis=-1), 0.0, 1.0)


def _gather_rows(x, index):
    """``x[b, index[b, j]]`` for ``x (B, N, ...)`` and ``index (B, M)``: ``(B, M, ...)``.

    One gather on the flattened batch (``take_along_axis`` costs many ops on
    TensorFlow).
    """
    flat = ops.reshape(x, (-1,) + tuple(x.shape[2:]))
    offset = ops.arange(ops.shape(x)[0], dtype="int32")[:, None] * x.shape[1]
    return ops.take(flat, index + offset, axis=0)


@keras.saving.register_keras_serializable(package="ssd300")
class DecodeDetections(keras.layers.Layer):
    """Decode SSD predictions into per-image detections: ``detection_out`` as a layer.

    Decodes the boxes of the best candidates, applies greedy per-class
    non-maximum suppression and keeps the best detections of each image, with
    the parameters and results of
    :meth:`ssd300.ssd_utils.BBoxUtility.detection_out` (see the module
    docstring for the algorithm and the one bound, ``max_candidates``).

    Args:
        confidence_threshold: a class score must exceed this to be a candidate.
        nms_thresh: IoU above which a box suppresses a lower-scored box of its
            class, in ``[0, 1]``.
        top_k: boxes kept per class and image by NMS.
        keep_top_k: detections kept per image (``K``, the outputs' size).
        background_label_id: the class that is never detected (``None``: none).
        max_candidates: ``(class, prior)`` candidates per image that NMS
            considers, the best by score (see the module docstring).

    Input shape:
        ``(batch, num_priors, 4 + num_classes + 8)``: the SSD model's
        predictions (offsets, class probabilities, priors, variances; see
        :mod:`ssd300.layout`).

    Output:
        A dict of fixed-size tensors, rows by decreasing score (equal scores
        by class, then prior), rows past ``num_detections`` padded:

        * ``"boxes"``: ``(batch, K, 4)`` float32, normalised
          ``xmin, ymin, xmax, ymax`` (padding 0);
        * ``"scores"``: ``(batch, K)`` float32 (padding 0);
        * ``"classes"``: ``(batch, K)`` int32 labels, the background counted
          as class 0 as in ``detection_out`` (padding -1);
        * ``"num_detections"``: ``(batch,)`` int32, the valid rows.

    Example:

    >>> import numpy as np
    >>> from ssd300.layout import num_columns
    >>> priors = np.array([[0.1, 0.1, 0.5, 0.5, 0.1, 0.1, 0.2, 0.2],
    ...                    [0.12, 0.1, 0.52, 0.5, 0.1, 0.1, 0.2, 0.2]], "float32")
    >>> predictions = np.zeros((1, 2, num_columns(3)), "float32")
    >>> predictions[0, :, 4:7] = [[0.1, 0.8, 0.1], [0.3, 0.6, 0.1]]
    >>> predictions[0, :, -8:] = priors
    >>> out = DecodeDetections(keep_top_k=3)(predictions)
    >>> int(out["num_detections"][0])   # the second class-1 box overlaps the first
    2
    >>> [int(c) for c in out["classes"][0]], [round(float(s), 2) for s in out["scores"][0]]
    ([1, 2, -1], [0.8, 0.1, 0.0])
    """

    def __init__(self, confidence_threshold=0.01, nms_thresh=0.45, top_k=400, keep_top_k=200,
                 background_label_id=0, max_candidates=1024, **kwargs):
        # float32 whatever the global policy: scores and IoUs compared exactly.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not 0.0 <= nms_thresh <= 1.0:
            raise ValueError(f"nms_thresh must be in [0, 1], got {nms_thresh}")
        for name, value in (("top_k", top_k), ("keep_top_k", keep_top_k),
                            ("max_candidates", max_candidates)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if not np.isfinite(confidence_threshold):
            raise ValueError(f"confidence_threshold must be a finite number, got {confidence_threshold}")
        self.confidence_threshold = float(confidence_threshold)
        self.nms_thresh = float(nms_thresh)
        self.top_k = int(top_k)
        self.keep_top_k = int(keep_top_k)
        self.background_label_id = None if background_label_id is None else int(background_label_id)
        self.max_candidates = int(max_candidates)

    def _sizes(self, input_shape):
        """``(num_priors, num_classes, candidates)`` of predictions shaped ``input_shape``."""
        if len(input_shape) != 3 or input_shape[1] is None or input_shape[2] is None:
            raise ValueError(f"{self.name}: expects predictions of shape (batch, num_priors, "
                             f"4 + num_classes + 8) with static sizes; got {input_shape}")
        num_priors, num_classes = input_shape[1], num_classes_of(input_shape[2])
        if num_classes < 1:
            raise ValueError(f"{self.name}: predictions' last axis ({input_shape[2]}) is too "
                             f"short for 4 + num_classes + 8 columns")
        candidates = min(self.max_candidates, num_priors * num_classes)
        if max(num_priors, candidates) * (num_classes + 1) >= _BIG:
            raise ValueError(f"{self.name}: {num_priors} priors, {num_classes} classes and "
                             f"max_candidates={self.max_candidates} overflow int32 indices")
        return num_priors, num_classes, candidates

    def call(self, predictions):
        predictions = ops.convert_to_tensor(predictions, dtype="float32")
        num_priors, num_classes, m = self._sizes(predictions.shape)
        batch = ops.shape(predictions)[0]

        # 1. The best candidates: one top_k over (class, prior) pairs, flat
        # index class * P + prior, so equal scores come by class, then prior:
        # the order of the output, and by prior within a class as NMS needs.
        scores = ops.transpose(split_predictions(predictions)[1], (0, 2, 1))
        candidate = scores > self.confidence_threshold
        if self.background_label_id is not None and 0 <= self.background_label_id < num_classes:
            not_background = np.arange(num_classes) != self.background_label_id
            candidate = ops.logical_and(candidate, not_background[:, None])
        flat = ops.reshape(ops.where(candidate, scores, -np.inf), (-1, num_classes * num_priors))
        values, index = ops.top_k(flat, m)
        if keras.config.backend() == "torch":
            # torch.topk leaves the order of equal values unspecified: restore
            # lower index first with stable sorts.
            order = ops.argsort(index, axis=1)
            values, index = ops.take_along_axis(values, order, 1), ops.take_along_axis(index, order, 1)
            order = ops.argsort(-values, axis=1)
            values, index = ops.take_along_axis(values, order, 1), ops.take_along_axis(index, order, 1)
        index = ops.cast(index, "int32")
        valid = values > -np.inf
        label = index // num_priors
        prior = index % num_priors

        # 2. Decode the candidates' boxes.
        offsets, _, prior_boxes, variances = split_predictions(_gather_rows(predictions, prior))
        boxes = decode_boxes(offsets, prior_boxes, variances)

        # 3. Greedy NMS, one kept box per (image, class) per round, on the
        # candidates grouped by class (the same order within a class).
        rank = ops.broadcast_to(ops.arange(m, dtype="int32")[None], (batch, m))
        group = ops.where(valid, label, num_classes)  # no class: a last group, never kept
        order = ops.argsort(group * m + rank, axis=1)
        group, rank = ops.take_along_axis(group, order, 1), ops.take_along_axis(rank, order, 1)
        boxes = _gather_rows(boxes, order)
        kept = self._nms(boxes, group, batch, num_classes, m)

        # 4. The first keep_top_k kept candidates by rank: the output's order.
        k = self.keep_top_k
        if m < k:  # fewer candidates than output rows: pad to k
            pad = [[0, 0], [0, k - m]]
            kept, rank = ops.pad(kept, pad), ops.pad(rank, pad)
            boxes = ops.pad(boxes, pad + [[0, 0]])
            values, label = ops.pad(values, pad), ops.pad(label, pad)
        _, best = ops.top_k(ops.where(kept, -rank, -_BIG), k)
        num = ops.minimum(ops.sum(ops.cast(kept, "int32"), axis=1), k)
        filled = ops.arange(k, dtype="int32")[None] < num[:, None]
        best_rank = ops.take_along_axis(rank, best, 1)
        return {
            "boxes": ops.where(filled[..., None], _gather_rows(boxes, best), 0.0),
            "scores": ops.where(filled, ops.take_along_axis(values, best_rank, 1), 0.0),
            "classes": ops.where(filled, ops.take_along_axis(label, best_rank, 1), -1),
            "num_detections": num,
        }

    def _nms(self, boxes, group, batch, num_classes, m):
        """``(B, m)`` bool: the candidates greedy per-class NMS keeps.

        Args:
            boxes: ``(B, m, 4)`` the candidates' boxes.
            group: ``(B, m)`` their classes, ascending (``num_classes``: no
                candidate); within a class, by decreasing score.

        Each round, the first undecided candidate of every class block is kept
        and drops the undecided candidates of its block it overlaps by more
        than ``nms_thresh``. Cumulative sums over the row find the blocks'
        first undecided candidates, the same few cheap ops on every backend
        and exported runtime.
        """
        flat_boxes = ops.reshape(boxes, (-1, 4))
        lo = ops.minimum(flat_boxes[:, :2], flat_boxes[:, 2:])  # (B * m, 2): x1, y1
        hi = ops.maximum(flat_boxes[:, :2], flat_boxes[:, 2:])  # x2, y2
        area = (hi[:, 0] - lo[:, 0]) * (hi[:, 1] - lo[:, 1])
        # The flat index of each candidate's block start, and of its image's first candidate.
        groups = num_classes + 1
        counts = ops.sum(ops.cast(group[:, None, :] == ops.arange(groups, dtype="int32")[None, :, None],
                                  "int32"), axis=2)
        image = ops.arange(batch, dtype="int32")[:, None]
        starts = ops.reshape(ops.cumsum(counts, axis=1) - counts + image * m, (-1,))
        block_start = ops.take(starts, ops.reshape(group + image * groups, (-1,)), axis=0)
        image_start = ops.reshape(ops.broadcast_to(image * m, (batch, m)), (-1,))
        position = ops.broadcast_to(ops.arange(1, m + 1, dtype="int32")[None], (batch, m))
        threshold = self.nms_thresh
        max_rounds = self.top_k

        def before_block(running, value):
            """``running`` (a cumulative sum of ``value``) just before each candidate's block."""
            return ops.take(ops.reshape(running - value, (-1,)), block_start, axis=0)

        def one_round(undecided, kept, allowed):
            flat_undecided = ops.reshape(undecided, (-1,))
            count = ops.cast(undecided, "int32")
            running = ops.cumsum(count, axis=1)
            # The head: its block's first undecided candidate.
            head = ops.logical_and(
                flat_undecided, ops.reshape(running, (-1,)) - before_block(running, count) == 1)
            if allowed is not None:
                head = ops.logical_and(head, allowed)
            # Its position + 1 beside each candidate after it in the block.
            value = ops.reshape(ops.where(head, ops.reshape(position, (-1,)), 0), (-1, m))
            running = ops.cumsum(value, axis=1)
            head_position = ops.reshape(running, (-1,)) - before_block(running, value)
            h = image_start + ops.maximum(head_position - 1, 0)
            # box_ops.batched_nms's IoU, op for op (no column slices: slow in
            # onnxruntime); a box of no area gives 0 or NaN, never above the
            # threshold.
            wh = ops.maximum(ops.minimum(hi, ops.take(hi, h, axis=0))
                             - ops.maximum(lo, ops.take(lo, h, axis=0)), 0.0)
            inter = ops.prod(wh, axis=1)
            drop = ops.logical_or(inter / (area + ops.take(area, h, axis=0) - inter) > threshold, head)
            undecided = ops.logical_and(flat_undecided, ops.logical_not(drop))
            return ops.reshape(undecided, (-1, m)), ops.logical_or(kept, ops.reshape(head, (-1, m)))

        def cond(i, undecided, kept):
            return ops.logical_and(i < max_rounds, ops.any(undecided))

        def body(i, undecided, kept):
            # Two rounds per iteration halve the loop's own cost; the second
            # is void past top_k rounds.
            undecided, kept = one_round(undecided, kept, None)
            undecided, kept = one_round(undecided, kept, i + 1 < max_rounds)
            return i + 2, undecided, kept

        valid = group < num_classes
        _, _, kept = ops.while_loop(cond, body, (ops.convert_to_tensor(0, "int32"), valid,
                                                 ops.zeros_like(valid)))
        return kept

    def compute_output_spec(self, predictions):
        self._sizes(predictions.shape)
        batch, k = predictions.shape[0], self.keep_top_k
        return {
            "boxes": keras.KerasTensor((batch, k, 4), dtype="float32"),
            "scores": keras.KerasTensor((batch, k), dtype="float32"),
            "classes": keras.KerasTensor((batch, k), dtype="int32"),
            "num_detections": keras.KerasTensor((batch,), dtype="int32"),
        }

    def get_config(self):
        config = super().get_config()
        config.update({
            "confidence_threshold": self.confidence_threshold,
            "nms_thresh": self.nms_thresh,
            "top_k": self.top_k,
            "keep_top_k": self.keep_top_k,
            "background_label_id": self.background_label_id,
            "max_candidates": self.max_candidates,
        })
        return config
