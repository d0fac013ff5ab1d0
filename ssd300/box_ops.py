"""Box geometry in NumPy: pairwise IoU and greedy non-maximum suppression.

Boxes are ``xmin, ymin, xmax, ymax`` arrays of shape ``(..., 4)``.
"""

import numpy as np


def box_area(boxes, offset=0.0):
    """Area of ``(..., 4)`` boxes; ``offset=1`` for inclusive pixel coordinates."""
    return (boxes[..., 2] - boxes[..., 0] + offset) * (boxes[..., 3] - boxes[..., 1] + offset)


def pairwise_iou(boxes_a, boxes_b, offset=0.0):
    """Intersection over union of every box of ``boxes_a`` with every box of ``boxes_b``.

    Args:
        boxes_a: ``(N, 4)``.
        boxes_b: ``(M, 4)``.
        offset: added to widths and heights: 0 for continuous coordinates,
            1 for the VOC devkit's inclusive pixel coordinates.

    Returns:
        ``(N, M)`` array.
    """
    boxes_a = np.asarray(boxes_a)
    boxes_b = np.asarray(boxes_b)
    upleft = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    botright = np.minimum(boxes_a[:, None, 2:4], boxes_b[None, :, 2:4])
    inter_wh = np.maximum(botright - upleft + offset, 0.0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = box_area(boxes_a, offset)[:, None] + box_area(boxes_b, offset)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def _nms_iou(boxes_a, boxes_b):
    """``(Na, Nb)`` overlaps as ``tf.image.non_max_suppression`` computes them.

    Coordinates may come in either order, and a box with no area overlaps
    nothing. Computed per coordinate on ``(Na, Nb)`` planes, the fastest
    layout for NumPy.
    """
    def corners(boxes):
        x1 = np.minimum(boxes[:, 0], boxes[:, 2])
        y1 = np.minimum(boxes[:, 1], boxes[:, 3])
        x2 = np.maximum(boxes[:, 0], boxes[:, 2])
        y2 = np.maximum(boxes[:, 1], boxes[:, 3])
        return x1, y1, x2, y2, (x2 - x1) * (y2 - y1)

    ax1, ay1, ax2, ay2, area_a = corners(boxes_a)
    bx1, by1, bx2, by2, area_b = corners(boxes_b)
    iw = np.minimum.outer(ax2, bx2) - np.maximum.outer(ax1, bx1)
    ih = np.minimum.outer(ay2, by2) - np.maximum.outer(ay1, by1)
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (np.add.outer(area_a, area_b) - inter)
    return np.where(np.logical_and.outer(area_a > 0, area_b > 0), iou, 0.0)


def nms(boxes, scores, iou_threshold=0.45, max_output_size=400):
    """Greedy non-maximum suppression, as ``tf.image.non_max_suppression``.

    Boxes are visited by decreasing score (the lower index first among
    equal scores); a box is dropped when its IoU with an already selected
    box is greater than ``iou_threshold``.

    Args:
        boxes: ``(N, 4)``.
        scores: ``(N,)``.
        iou_threshold: overlap above which a box is suppressed.
        max_output_size: at most this many indices are returned.

    Returns:
        int64 indices into ``boxes`` of the selected boxes, by decreasing score.
    """
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    boxes = boxes[order]
    n = len(order)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) >= max_output_size:
            break
        if i + 1 < n:
            suppressed[i + 1:] |= _nms_iou(boxes[i:i + 1], boxes[i + 1:])[0] > iou_threshold
    return order[np.asarray(keep, dtype=np.int64)]


def nms_matrix(boxes, scores, iou_threshold=0.45, max_output_size=400):
    """The same selection as :func:`nms`, computed from the full IoU matrix.

    Greedy NMS keeps a box exactly when no kept box of higher rank
    overlaps it. That fixed point is reached by iterating "kept = not
    suppressed by any kept box" from "all kept": after ``t`` rounds the
    boxes at suppression depth ``< t`` are settled, so a few matrix-vector
    products replace the per-box Python loop. Memory is ``O(N^2)``: use it
    for at most a few thousand boxes.
    """
    boxes = np.asarray(boxes)
    order = np.argsort(-np.asarray(scores), kind="stable")
    boxes = boxes[order]
    n = len(order)
    if n <= 1:
        return order
    # suppresses[i, j]: i ranks above j and overlaps it too much.
    suppresses = np.triu(_nms_iou(boxes, boxes) > iou_threshold, k=1).astype(np.float32)
    keep = np.ones(n, dtype=np.float32)
    while True:
        new_keep = (keep @ suppresses == 0).astype(np.float32)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return order[np.flatnonzero(keep)[:max_output_size]]


def batched_nms(boxes, scores, labels, iou_threshold=0.45, max_output_size=400):
    """Class-wise NMS: boxes of different labels never suppress each other.

    Args:
        boxes: ``(N, 4)``; scores: ``(N,)``; labels: ``(N,)`` ints.
        iou_threshold, max_output_size: as for :func:`nms`, per label.

    Returns:
        indices of the kept boxes, ascending.
    """
    labels = np.asarray(labels)
    if len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    by_label = np.argsort(labels, kind="stable")
    sorted_labels = labels[by_label]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    ends = np.r_[starts[1:], len(labels)]
    # A label with one box keeps it: only larger groups need NMS.
    keep = np.zeros(len(labels), dtype=bool)
    keep[by_label[starts[ends - starts == 1]]] = True
    for start, end in zip(starts, ends):
        if end - start == 1:
            continue
        idx = by_label[start:end]
        select = nms_matrix if end - start <= _MATRIX_NMS_MAX else nms
        keep[idx[select(boxes[idx], scores[idx], iou_threshold, max_output_size)]] = True
    return np.flatnonzero(keep)


# Above this many boxes of one label the O(N^2) matrix costs more than the loop.
_MATRIX_NMS_MAX = 2000
