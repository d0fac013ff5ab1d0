"""``DecodeDetections``: box decoding and per-class NMS as a Keras layer (``keras.ops`` only).

The layer gives exactly :meth:`ssd300.ssd_utils.BBoxUtility.detection_out`'s
detections, as fixed-size tensors, so that a model ending in it runs on every
backend and exports to ONNX, TensorFlow SavedModel and LiteRT (see
:mod:`ssd300.export`).

The algorithm, per image:

1. The ``max_candidates`` best ``(class, prior)`` scores above
   ``confidence_threshold`` (background excluded): first the priors that hold
   a candidate, in prior order (a compaction; where an image has more than
   ``max_candidates`` of them, the ``max_candidates`` with the best
   foreground score, which hold every one of the best candidates), then one
   ``top_k`` over their pairs' flat index ``class * max_candidates + slot``:
   by decreasing score, equal scores by class then prior (``top_k`` puts the
   lower index first), which is the output's order.
2. Only those candidates' boxes are decoded, with
   :func:`ssd300.ssd_utils.decode_boxes`'s formula.
3. Greedy NMS for all classes and images at once, as
   :func:`ssd300.box_ops.batched_nms` decides it, in tiles: the candidates
   are grouped by class (keeping their order) and each class's block is cut
   into tiles of 32. Round ``r`` settles tile ``r`` of every block (greedy
   NMS inside it is the unique fixed point of "kept if alive and overlapped
   by no kept earlier member") and lets its kept boxes drop the later
   candidates of the block they overlap by more than ``nms_thresh``. The
   loop runs ``ceil(n / 32)`` rounds for the largest class block ``n`` (10
   for 300 candidates of one class) instead of one per kept box, and each
   round only visits the blocks and candidates it can change; each class
   then keeps its first ``top_k``.
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

from .checks import is_integer
from .layout import num_classes_of, split_predictions
from .ssd_utils import check_detection_options

# Flat int32 indices must stay below this.
_BIG = 2**31 - 1
# Candidates per NMS tile (DecodeDetections._nms): 32 was fastest on TF graph, XLA and onnxruntime.
_TILE = 32
# Blocks and candidates per chunk of a round (DecodeDetections._nms): the fastest on TF graph,
# XLA, onnxruntime and LiteRT of 16-64 and 512-4096.
_BLOCKS_CHUNK = 32
_ROWS_CHUNK = 1024


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


def _first_true(mask, size):
    """The positions of each row's first ``size`` true entries, in order: a compaction without a sort.

    Args:
        mask: ``(B, N)`` bool.
        size: the output's row length.

    Returns:
        ``(index, count)``: ``index`` ``(B, size)`` int32, row ``b``'s true
        positions in ascending order, then 0; ``count`` ``(B,)`` int32, the
        true entries of each row (it may exceed ``size``).
    """
    batch, n = ops.shape(mask)[0], mask.shape[1]
    count = ops.cast(mask, "int32")
    position = ops.cumsum(count, axis=1) - 1
    # True entries past the first `size`, and the false ones, go to a last
    # slot of each row that is dropped.
    slot = (ops.where(ops.logical_and(mask, position < size), position, size)
            + ops.arange(batch, dtype="int32")[:, None] * (size + 1))
    index = ops.broadcast_to(ops.arange(n, dtype="int32")[None], ops.shape(slot))
    out = ops.scatter_update(ops.zeros((batch * (size + 1),), "int32"), ops.reshape(slot, (-1, 1)),
                             ops.reshape(index, (-1,)))
    return ops.reshape(out, (batch, size + 1))[:, :size], ops.sum(count, axis=1)


def _inverse(permutation):
    """The inverse of a ``(N,)`` int32 permutation: ``result[permutation[i]] = i``."""
    return ops.scatter_update(ops.zeros_like(permutation), permutation[:, None],
                              ops.arange(ops.shape(permutation)[0], dtype="int32"))


def _pad(x, count):
    """``x`` ``(N, ...)`` followed by ``count`` rows of zeros (``False``)."""
    return ops.concatenate([x, ops.zeros((count,) + tuple(x.shape[1:]), x.dtype)], axis=0)


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
        if keep_top_k is None:  # detection_out's "all": the output here has keep_top_k rows
            raise ValueError("keep_top_k must be a positive integer, got None")
        check_detection_options(nms_thresh=nms_thresh, top_k=top_k, keep_top_k=keep_top_k,
                                confidence_threshold=confidence_threshold,
                                background_label_id=background_label_id)
        if not is_integer(max_candidates) or max_candidates < 1:
            raise ValueError(f"max_candidates must be a positive integer, got {max_candidates!r}")
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

    def _foreground_best(self, scores, num_classes):
        """``(B, P)``: each prior's best foreground score above the threshold, else ``-inf``."""
        threshold = self.confidence_threshold
        # Not-above-threshold scores (NaN included) become -inf before the max,
        # so a NaN column cannot hide a candidate of another class.
        scores = ops.where(scores > threshold, scores, -np.inf)
        background = self.background_label_id
        if background is None or not 0 <= background < num_classes:
            return ops.max(scores, axis=-1)
        parts = [scores[..., a:b] for a, b in ((0, background), (background + 1, num_classes)) if b > a]
        if not parts:
            return ops.full(ops.shape(scores)[:-1], -np.inf)
        best = ops.max(parts[0], axis=-1)
        for part in parts[1:]:
            best = ops.maximum(best, ops.max(part, axis=-1))
        return best

    def call(self, predictions):
        predictions = ops.convert_to_tensor(predictions, dtype="float32")
        num_priors, num_classes, m = self._sizes(predictions.shape)
        batch = ops.shape(predictions)[0]

        # 1. The best candidates. First the (at most) m priors with the best
        # foreground scores, in prior order: every prior that holds one of
        # the m best (class, prior) candidates is among them. Then one top_k
        # over their (class, prior) pairs, flat index class * mp + slot, so
        # equal scores come by class, then prior: the order of the output,
        # and by prior within a class as NMS needs.
        best = self._foreground_best(split_predictions(predictions)[1], num_classes)
        mp = min(m, num_priors)
        has_candidate = best > -np.inf

        def every_prior():
            # Few enough for all: a compaction, cheaper than top_k (much, with XLA).
            prior, count = _first_true(has_candidate, mp)
            return prior, ops.arange(mp, dtype="int32")[None] < count[:, None]

        def best_priors():
            _, prior = ops.top_k(best, mp)
            return ops.sort(ops.cast(prior, "int32"), axis=1), ops.ones((batch, mp), "bool")

        prior, seen = ops.cond(ops.max(ops.sum(ops.cast(has_candidate, "int32"), axis=1)) <= mp,
                               every_prior, best_priors)
        rows = _gather_rows(predictions, prior)  # (B, mp, 4 + C + 8)
        scores = ops.transpose(split_predictions(rows)[1], (0, 2, 1))  # (B, C, mp)
        candidate = ops.logical_and(scores > self.confidence_threshold, seen[:, None, :])
        if self.background_label_id is not None and 0 <= self.background_label_id < num_classes:
            not_background = np.arange(num_classes) != self.background_label_id
            candidate = ops.logical_and(candidate, not_background[:, None])
        flat = ops.reshape(ops.where(candidate, scores, -np.inf), (-1, num_classes * mp))
        m = min(m, num_classes * mp)
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
        label = index // mp

        # 2. Decode the candidates' boxes.
        offsets, _, prior_boxes, variances = split_predictions(_gather_rows(rows, index % mp))
        boxes = decode_boxes(offsets, prior_boxes, variances)

        # 3. Greedy NMS on the candidates grouped by class (the same order
        # within a class).
        rank = ops.broadcast_to(ops.arange(m, dtype="int32")[None], (batch, m))
        group = ops.where(valid, label, num_classes)  # no class: a last group, never kept
        order = ops.argsort(group * m + rank, axis=1)
        kept = self._nms(_gather_rows(boxes, order), ops.take_along_axis(group, order, 1),
                         batch, num_classes, m)
        # Back in rank order: kept[b, order[b, j]] is the j-th verdict.
        offset = ops.arange(batch, dtype="int32")[:, None] * m
        kept = ops.reshape(ops.take(ops.reshape(kept, (-1,)), _inverse(ops.reshape(order + offset, (-1,)))),
                           (batch, m))

        # 4. The first keep_top_k kept candidates by rank: the output's order.
        k = self.keep_top_k
        best, count = _first_true(kept, k)
        num = ops.minimum(count, k)
        filled = ops.arange(k, dtype="int32")[None] < num[:, None]
        return {
            "boxes": ops.where(filled[..., None], _gather_rows(boxes, best), 0.0),
            "scores": ops.where(filled, ops.take_along_axis(values, best, 1), 0.0),
            "classes": ops.where(filled, ops.take_along_axis(label, best, 1), -1),
            "num_detections": num,
        }

    def _nms(self, boxes, group, batch, num_classes, m):
        """``(B, m)`` bool: the candidates greedy per-class NMS keeps, at most ``top_k`` a class.

        Args:
            boxes: ``(B, m, 4)`` the candidates' boxes.
            group: ``(B, m)`` their classes, ascending (``num_classes``: no
                candidate); within a class, by decreasing score.

        The candidates of each class form a block; the blocks are cut into
        tiles of ``W`` consecutive candidates. Round ``r`` settles tile ``r``
        of every block of every image at once: greedy NMS inside the tile is
        the fixed point of "alive and not overlapped by a kept earlier
        member" (unique, because "earlier" is a strict order, and reached in
        as many steps as the longest chain of suppressions in the tile); then
        every candidate after the tile in its block is compared with the
        tile (IoU above ``nms_thresh``), and the kept members drop the alive
        ones they overlap. So the loop runs ``ceil(n / W)`` rounds for the
        largest block ``n``, instead of one per kept box.

        Only the blocks that have a tile ``r`` and the candidates at block
        positions from ``r * W`` on take part in round ``r``: with the blocks
        by decreasing size and the candidates by position in their block,
        they are a prefix and a suffix, taken in chunks of fixed size. The
        work then follows the sum of the squared block sizes rather than
        ``B * m`` times the largest.
        """
        tile = min(_TILE, m)
        groups = num_classes
        n = batch * m
        rows_chunk, blocks_chunk = _ROWS_CHUNK, _BLOCKS_CHUNK
        flat_boxes = ops.reshape(boxes, (-1, 4))
        # Coordinates as separate (B * m,) vectors: no pair tensor has a
        # short last axis (onnxruntime's broadcasting Min/Max are slow on
        # short spans).
        x1, y1, x2, y2 = (flat_boxes[:, i] for i in range(4))
        x1, x2 = ops.minimum(x1, x2), ops.maximum(x1, x2)
        y1, y2 = ops.minimum(y1, y2), ops.maximum(y1, y2)
        coordinates = (x1, y1, x2, y2, (x2 - x1) * (y2 - y1))
        counts = ops.sum(ops.cast(group[:, None, :] == ops.arange(groups, dtype="int32")[None, :, None],
                                  "int32"), axis=2)  # (B, G)
        starts = ops.cumsum(counts, axis=1) - counts  # each block's first position in its image
        image = ops.arange(batch, dtype="int32")[:, None]
        valid = ops.reshape(group < num_classes, (-1,))
        # Each candidate's block (the no-class candidates are never alive: any block).
        block = ops.reshape(ops.minimum(group, groups - 1) + image * groups, (-1,))  # (B * m,)
        # Each candidate's position in its block.
        in_block = ops.reshape(ops.arange(m, dtype="int32")[None] - ops.take_along_axis(
            starts, ops.minimum(group, groups - 1), axis=1), (-1,))

        # The blocks by decreasing size, `rank` each block's place, padded
        # with empty blocks so that a chunk never runs past the end.
        by_size = ops.argsort(-ops.reshape(counts, (-1,)))  # (B * G,)
        num_blocks = ops.shape(by_size)[0]
        rank = _inverse(by_size)
        size = _pad(ops.take(ops.reshape(counts, (-1,)), by_size), blocks_chunk)
        first = _pad(ops.take(ops.reshape(starts + image * m, (-1,)), by_size), blocks_chunk)
        # The candidates by position in their block (no-class ones last),
        # padded the same way.
        order = ops.argsort(ops.where(valid, in_block, m))  # (B * m,)
        place = _inverse(order)  # each candidate's place in that order
        row_coordinates = tuple(_pad(ops.take(c, order), rows_chunk) for c in coordinates)
        row_rank = _pad(ops.take(rank, ops.take(block, order)), rows_chunk)
        row_in_block = _pad(ops.take(in_block, order), rows_chunk)
        num_valid = ops.sum(ops.cast(valid, "int32"))
        slots = ops.arange(tile, dtype="int32")
        threshold = self.nms_thresh

        def overlap(a, b, before):
            """IoU above the threshold of boxes ``a`` with boxes ``b`` (broadcast), where ``before``.

            box_ops.batched_nms's IoU, op for op; a box of no area gives 0
            or NaN, never above the threshold.
            """
            w = ops.maximum(ops.minimum(a[2], b[2]) - ops.maximum(a[0], b[0]), 0.0)
            h = ops.maximum(ops.minimum(a[3], b[3]) - ops.maximum(a[1], b[1]), 0.0)
            inter = w * h
            iou = inter / (a[4] + b[4] - inter)
            return ops.logical_and(iou > threshold, before)

        def body(r, alive):
            offset = r * tile + slots  # (W,)
            # (B * G + pad, W): tile r of each block, by block size.
            in_tile = offset[None] < size[:, None]
            position = ops.minimum(first[:, None] + offset, n - 1)
            tiles = tuple(ops.take(c, position, axis=0) for c in coordinates)
            member_alive = ops.logical_and(ops.take(alive, ops.take(place, position, axis=0), axis=0), in_tile)

            def settle(c, keep):
                """Greedy NMS inside the tiles of blocks ``[c, c + chunk)``."""
                part = tuple(ops.slice(t, (c, 0), (blocks_chunk, tile)) for t in tiles)
                # (chunk, W member, W slot): the member overlaps the earlier slot.
                member_overlap = overlap(tuple(t[:, :, None] for t in part), tuple(t[:, None, :] for t in part),
                                         slots[None, :] < slots[:, None])
                alive_part = ops.slice(member_alive, (c, 0), (blocks_chunk, tile))

                def step(kept, changed):
                    suppressed = ops.any(ops.logical_and(member_overlap, kept[:, None, :]), axis=2)
                    new = ops.logical_and(alive_part, ops.logical_not(suppressed))
                    return new, ops.any(ops.not_equal(new, kept))

                kept, _ = ops.while_loop(lambda kept, changed: changed, step,
                                         (alive_part, ops.convert_to_tensor(True)))
                return c + blocks_chunk, ops.scatter_update(keep, (c + ops.arange(blocks_chunk, dtype="int32"))[:, None],
                                                            kept)

            # The blocks with a tile r are the first `active`.
            active = ops.sum(ops.cast(size > r * tile, "int32"))
            _, keep = ops.while_loop(lambda c, keep: c < active, settle,
                                     (ops.convert_to_tensor(0, "int32"), ops.zeros_like(in_tile)))

            def suppress(s, alive):
                """Drop the candidates ``[s, s + chunk)`` that a kept member of their tile overlaps."""
                part = tuple(ops.slice(c, (s,), (rows_chunk,))[:, None] for c in row_coordinates)
                part_rank = ops.slice(row_rank, (s,), (rows_chunk,))
                before = offset[None] < ops.slice(row_in_block, (s,), (rows_chunk,))[:, None]
                hit = overlap(part, tuple(ops.take(t, part_rank, axis=0) for t in tiles), before)
                suppressed = ops.any(ops.logical_and(hit, ops.take(keep, part_rank, axis=0)), axis=1)
                new = ops.logical_and(ops.slice(alive, (s,), (rows_chunk,)), ops.logical_not(suppressed))
                return s + rows_chunk, ops.scatter_update(alive, (s + ops.arange(rows_chunk, dtype="int32"))[:, None],
                                                          new)

            # The candidates at block positions from r * W on are the last
            # of the valid ones (a tile's own members keep its verdict).
            start = ops.sum(ops.cast(ops.logical_and(valid, in_block < r * tile), "int32"))
            _, alive = ops.while_loop(lambda s, alive: s < num_valid, suppress, (start, alive))
            return r + 1, alive

        rounds = (ops.max(counts) + tile - 1) // tile
        alive = _pad(ops.take(valid, order), rows_chunk)
        _, alive = ops.while_loop(lambda r, alive: r < rounds, body,
                                  (ops.convert_to_tensor(0, "int32"), alive))
        # top_k: each class keeps its first top_k survivors (greedy's first top_k).
        alive = ops.reshape(ops.take(alive, place), (batch, m))
        count = ops.cast(alive, "int32")
        running = ops.cumsum(count, axis=1)
        block_start = ops.take(ops.reshape(starts + image * m, (-1,)), block, axis=0)
        before_block = ops.reshape(ops.take(ops.reshape(running - count, (-1,)), block_start, axis=0),
                                   (batch, m))
        return ops.logical_and(alive, running - before_block <= self.top_k)

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
