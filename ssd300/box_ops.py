"""Box geometry in NumPy: pairwise IoU and greedy non-maximum suppression.

Boxes are ``xmin, ymin, xmax, ymax`` arrays of shape ``(..., 4)``.
"""

import numpy as np

from .checks import check_unit_interval


def box_area(boxes, offset=0.0):
    """Area of ``(..., 4)`` boxes; ``offset=1`` for inclusive pixel coordinates."""
    return (boxes[..., 2] - boxes[..., 0] + offset) * (boxes[..., 3] - boxes[..., 1] + offset)


def iou(boxes_a, boxes_b, offset=0.0, area_b=None):
    """Intersection over union of boxes paired by broadcasting: the one IoU rule.

    Args:
        boxes_a: ``(..., 4)`` ``xmin, ymin, xmax, ymax``.
        boxes_b: ``(..., 4)``, broadcastable against ``boxes_a``.
        offset: added to widths and heights: 0 for continuous coordinates,
            1 for the VOC devkit's inclusive pixel coordinates.
        area_b: ``box_area(boxes_b, offset)`` when the caller has it already
            (the priors' areas, computed once).

    Returns:
        the broadcast shape without the last axis. A pair with no
        intersection has IoU 0; two boxes of no area give NaN.

    Example:

    >>> float(iou(np.array([0.0, 0.0, 2.0, 2.0]), np.array([1.0, 0.0, 3.0, 2.0])))
    0.3333333333333333
    """
    boxes_a = np.asarray(boxes_a)
    boxes_b = np.asarray(boxes_b)
    iw = np.minimum(boxes_a[..., 2], boxes_b[..., 2]) - np.maximum(boxes_a[..., 0], boxes_b[..., 0])
    ih = np.minimum(boxes_a[..., 3], boxes_b[..., 3]) - np.maximum(boxes_a[..., 1], boxes_b[..., 1])
    inter = np.maximum(iw + offset, 0.0) * np.maximum(ih + offset, 0.0)
    if area_b is None:
        area_b = box_area(boxes_b, offset)
    union = box_area(boxes_a, offset) + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def pairwise_iou(boxes_a, boxes_b, offset=0.0):
    """IoU of every box of ``boxes_a`` with every box of ``boxes_b``.

    Args:
        boxes_a: ``(N, 4)``.
        boxes_b: ``(M, 4)``.
        offset: as for :func:`iou`.

    Returns:
        ``(N, M)`` array.
    """
    return iou(np.asarray(boxes_a)[:, None, :4], np.asarray(boxes_b)[None, :, :4], offset)


def nms(boxes, scores, iou_threshold=0.45, max_output_size=400):
    """Greedy non-maximum suppression, as ``tf.image.non_max_suppression``.

    Boxes are visited by decreasing score (the lower index first among
    equal scores); a box is dropped when its IoU with an already selected
    box is greater than ``iou_threshold``. Corners may come in either
    order, and a box with no area overlaps nothing.

    Args:
        boxes: ``(N, 4)``.
        scores: ``(N,)``.
        iou_threshold: overlap above which a box is suppressed.
        max_output_size: at most this many indices are returned.

    Returns:
        int64 indices into ``boxes`` of the selected boxes, by decreasing score.
    """
    return batched_nms(boxes, scores, np.zeros(len(scores), dtype=np.int64),
                       iou_threshold, max_output_size)


def batched_nms(boxes, scores, groups, iou_threshold=0.45, max_output_size=400):
    """:func:`nms` within each group: boxes of different groups never suppress each other.

    All groups advance together. In each round every group keeps its best
    undecided box, and that box drops the undecided boxes of its group that
    it overlaps by more than ``iou_threshold``; that is greedy NMS, one kept
    box per group per round. The Python loop thus runs as many times as the
    largest number of boxes one group keeps, and each round is vectorised
    over all groups.

    Args:
        boxes: ``(N, 4)``.
        scores: ``(N,)``.
        groups: ``(N,)`` group of each box, e.g. ``image * num_classes + label``.
        iou_threshold: overlap above which a box is suppressed.
        max_output_size: at most this many indices are returned per group.

    Returns:
        int64 indices of the kept boxes, by increasing group and, within a
        group, by decreasing score.
    """
    boxes = np.asarray(boxes)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"batched_nms expects boxes of shape (N, 4), got {boxes.shape}")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if not len(boxes) == len(scores) == len(groups):
        raise ValueError(f"batched_nms needs as many boxes, scores and groups; got "
                         f"{len(boxes)}, {len(scores)} and {len(groups)}")
    check_unit_interval("iou_threshold", iou_threshold)
    # By group, then by decreasing score; the lower index first among equals.
    order = np.argsort(-scores, kind="stable")
    order = order[np.argsort(groups[order], kind="stable")]
    boxes = boxes[order]
    if not np.issubdtype(boxes.dtype, np.floating):
        boxes = boxes.astype(np.float64)
    # Rows x1, y1, x2, y2, area of the undecided boxes, so that one boolean
    # index drops boxes from all of them at once.
    x1 = np.minimum(boxes[:, 0], boxes[:, 2])
    y1 = np.minimum(boxes[:, 1], boxes[:, 3])
    x2 = np.maximum(boxes[:, 0], boxes[:, 2])
    y2 = np.maximum(boxes[:, 1], boxes[:, 3])
    live = np.stack([x1, y1, x2, y2, (x2 - x1) * (y2 - y1)])
    sorted_groups = groups[order]
    first = np.empty(len(order), dtype=bool)
    first[:1] = True
    np.not_equal(sorted_groups[1:], sorted_groups[:-1], out=first[1:])
    # Rows: group number, position in ``order``.
    ids = np.stack([np.cumsum(first), np.arange(len(order))])
    kept = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(max_output_size):
            n = ids.shape[1]
            if n == 0:
                break
            # The best undecided box of each group (reusing a buffer).
            head = first[:n]
            np.not_equal(ids[0, 1:], ids[0, :-1], out=head[1:])
            heads = np.flatnonzero(head)
            kept.append(ids[1, heads])
            # The head of its group beside each box (repeat beats a gather).
            group_size = np.empty_like(heads)
            np.subtract(heads[1:], heads[:-1], out=group_size[:-1])
            group_size[-1] = n - heads[-1]
            h = np.repeat(live[:, heads], group_size, axis=1)
            inter = np.minimum(live[2], h[2])
            inter -= np.maximum(live[0], h[0])
            ih = np.minimum(live[3], h[3])
            ih -= np.maximum(live[1], h[1])
            np.maximum(inter, 0, out=inter)
            np.maximum(ih, 0, out=ih)
            inter *= ih
            union = live[4] + h[4]
            union -= inter
            # A box of no area has IoU 0 or NaN with any box: never above.
            drop = inter / union > iou_threshold
            drop |= head
            undecided = ~drop
            live = live[:, undecided]
            ids = ids[:, undecided]
    # Positions in ``order`` sort by group, then by score.
    return order[np.sort(np.concatenate(kept))] if kept else np.zeros(0, dtype=np.int64)
