"""``BBoxUtility``: matching ground truth to priors, box coding, and decoding detections.

All in NumPy. Boxes are normalised ``xmin, ymin, xmax, ymax`` (fractions of
the image width and height). A prior array is ``(num_priors, 8)``: a box
followed by its four variances.
"""

import math
import os

import numpy as np

from .box_ops import batched_nms, box_area, iou
from .checks import check_unit_interval, is_integer, is_number
from .layout import check_num_classes, num_columns, split_predictions, split_targets
from .priors import PriorFileError, check_priors


def encode_boxes(boxes, priors):
    """Encode ground-truth boxes against their matched priors (SSD's box coder).

    Args:
        boxes: ``(N, 4)`` ground-truth boxes.
        priors: ``(N, 8)`` the prior each box is matched to, with variances.

    Returns:
        ``(N, 4)``: centre offsets divided by the prior's size and the
        ``x, y`` variances, and log size ratios divided by the ``w, h``
        variances.
    """
    prior_wh = priors[:, 2:4] - priors[:, :2]
    prior_center = 0.5 * (priors[:, :2] + priors[:, 2:4])
    box_wh = boxes[:, 2:4] - boxes[:, :2]
    box_center = 0.5 * (boxes[:, :2] + boxes[:, 2:4])
    with np.errstate(divide="ignore"):
        return np.concatenate([
            (box_center - prior_center) / prior_wh / priors[:, 4:6],
            np.log(box_wh / prior_wh) / priors[:, 6:8],
        ], axis=1)


def decode_boxes(mbox_loc, mbox_priorbox, variances):
    """Invert :func:`encode_boxes`: shifted and scaled priors, clipped to ``[0, 1]``.

    Args:
        mbox_loc: ``(..., 4)`` predicted offsets.
        mbox_priorbox: ``(..., 4)`` prior boxes.
        variances: ``(..., 4)`` prior variances.

    Returns:
        ``(..., 4)`` boxes.
    """
    prior_wh = mbox_priorbox[..., 2:4] - mbox_priorbox[..., :2]
    prior_center = 0.5 * (mbox_priorbox[..., :2] + mbox_priorbox[..., 2:4])
    # The centre-y offset is scaled by the prior's height (the original
    # used its width).
    center = mbox_loc[..., :2] * prior_wh * variances[..., :2] + prior_center
    half_wh = 0.5 * np.exp(mbox_loc[..., 2:4] * variances[..., 2:4]) * prior_wh
    boxes = np.concatenate([center - half_wh, center + half_wh], axis=-1)
    return np.clip(boxes, 0.0, 1.0)


def check_detection_options(*, nms_thresh=0.45, top_k=400, keep_top_k=200, confidence_threshold=0.01,
                            background_label_id=0):
    """Refuse detection settings that would fail deep inside, or quietly change the detections.

    The one home of these rules, for :class:`BBoxUtility` (``detection_out``),
    :class:`~ssd300.decode_detections.DecodeDetections` and
    :class:`~ssd300.detect.Detector`; pass the settings to check, the others
    default to valid values.

    Args:
        nms_thresh: a number in ``[0, 1]``.
        top_k, keep_top_k: positive integers (``keep_top_k=None``: all).
        confidence_threshold: a finite number.
        background_label_id: an integer or ``None`` (a float was truncated).

    Raises:
        ValueError: naming the setting and the value (``keep_top_k=-1``
            dropped the last detection, a NaN threshold kept nothing).
    """
    check_unit_interval("nms_thresh", nms_thresh)
    if not is_integer(top_k) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if keep_top_k is not None and (not is_integer(keep_top_k) or keep_top_k < 1):
        raise ValueError(f"keep_top_k must be a positive integer or None, got {keep_top_k!r}")
    if not is_number(confidence_threshold) or not math.isfinite(confidence_threshold):
        raise ValueError(f"confidence_threshold must be a finite number, got {confidence_threshold!r}")
    if background_label_id is not None and not is_integer(background_label_id):
        raise ValueError(f"background_label_id must be an integer or None, got {background_label_id!r}")


class BBoxUtility:
    """Utility class to do some stuff with bounding boxes and priors.

    Args:
        num_classes: number of classes including the background (class 0).
        priors: ``(num_priors, 8)`` prior boxes and variances, e.g. from
            :func:`ssd300.priors.load_priors` or
            :func:`ssd300.priors.priors_from_model`.
        overlap_threshold: IoU above which a prior is matched to a box.
        nms_thresh: IoU above which NMS suppresses a detection.
        top_k: detections kept per class by NMS.

    References:
        Liu et al., "SSD: Single Shot MultiBox Detector", arXiv:1512.02325.
    """

    def __init__(self, num_classes, priors=None, overlap_threshold=0.5,
                 nms_thresh=0.45, top_k=400):
        check_num_classes(num_classes)
        check_unit_interval("overlap_threshold", overlap_threshold)
        self.num_classes = num_classes
        self.overlap_threshold = overlap_threshold
        self.nms_thresh = nms_thresh
        self.top_k = top_k
        self.priors = priors

    @property
    def priors(self):
        return self._priors

    @priors.setter
    def priors(self, priors):
        if isinstance(priors, (str, bytes, os.PathLike)):
            raise PriorFileError(f"priors: got the path {os.fspath(priors)!r}; pass "
                                 "ssd300.load_priors(path) or ssd300.priors_from_model(model)")
        self._priors = None if priors is None else np.asarray(priors)
        self.num_priors = 0 if priors is None else len(self._priors)
        if priors is None:
            return
        check_priors(self._priors, "priors")
        # Matching reuses the priors' boxes and areas. Areas are taken in the
        # priors' own dtype first, as the original's arithmetic was.
        self._boxes = self._priors[:, :4].astype(np.float64)
        self._area = box_area(self._priors).astype(np.float64)

    @property
    def nms_thresh(self):
        """IoU above which NMS suppresses a detection, in ``[0, 1]``."""
        return self._nms_thresh

    @nms_thresh.setter
    def nms_thresh(self, value):
        check_detection_options(nms_thresh=value)
        self._nms_thresh = float(value)

    @property
    def top_k(self):
        """Detections kept per class by NMS."""
        return self._top_k

    @top_k.setter
    def top_k(self, value):
        check_detection_options(top_k=value)
        self._top_k = int(value)

    def iou(self, box):
        """IoU of one box ``(4,)`` with every prior; returns ``(num_priors,)``."""
        return self._iou_with_priors(np.asarray(box, dtype=np.float64)[None, :4])[0]

    def _iou_with_priors(self, boxes):
        """``(B, num_priors)`` IoU of ``(B, >=4)`` boxes with the priors."""
        return iou(np.asarray(boxes, dtype=np.float64)[:, None, :4], self._boxes, area_b=self._area)

    def encode_box(self, box, return_iou=True):
        """Encode one box for the priors it matches (the original's per-box step).

        A prior matches when its IoU with the box exceeds
        ``overlap_threshold``; when none does, the prior of highest IoU is
        used.

        Returns:
            flat array ``(num_priors * (4 + return_iou),)``: the encoded box on
            the matched priors (zeros elsewhere), then the IoU when
            ``return_iou``.
        """
        box = np.asarray(box, dtype=np.float64)[:4]
        iou = self.iou(box)
        mask = iou > self.overlap_threshold
        if not mask.any():
            mask[iou.argmax()] = True
        encoded = np.zeros((self.num_priors, 4 + int(return_iou)))
        if return_iou:
            encoded[mask, -1] = iou[mask]
        encoded[mask, :4] = encode_boxes(np.broadcast_to(box, (mask.sum(), 4)), self.priors[mask])
        return encoded.ravel()

    def match(self, boxes):
        """Match every prior to at most one ground-truth box.

        The original's rule, for all boxes at once: each box claims the priors
        whose IoU with it exceeds ``overlap_threshold``, or its single best
        prior if there is none; a prior claimed by several boxes goes to the one
        of highest IoU, and a claim with IoU 0 is void.

        Args:
            boxes: ``(num_boxes, 4)``.

        Returns:
            ``(num_priors,)`` int array: the matched box, or -1.
        """
        iou = self._iou_with_priors(boxes)
        claimed = iou > self.overlap_threshold
        unclaimed = ~claimed.any(axis=1)
        claimed[unclaimed, iou[unclaimed].argmax(axis=1)] = True
        iou = np.where(claimed, iou, 0.0)
        best_iou = iou.max(axis=0)
        # First box reaching the maximum (argmax's tie rule), with reductions
        # along axis 0, which NumPy vectorises over the priors.
        rank = np.arange(len(boxes), 0, -1, dtype=np.intp)[:, None]
        best = len(boxes) - ((iou == best_iou) * rank).max(axis=0)
        return np.where(best_iou > 0, best, -1)

    def assign_boxes(self, boxes, dtype=np.float64):
        """Build the training target for one image.

        Args:
            boxes: ``(num_boxes, 4 + num_classes - 1)``: normalised box and a
                one-hot class row without the background. Any empty array
                (``np.array([])`` of shape ``(0,)``, as the originals'
                ``get_data_from_XML`` gave for an image without objects, or
                ``(0, k)``) means no boxes. A zero-wide or zero-high box (a
                one-pixel VOC box normalised by the image size) overlaps no
                prior and leaves the target as it would be without it.
            dtype: of the result (the data pipeline asks for float32).

        Returns:
            ``(num_priors, 4 + num_classes + 8)``: the encoded box, the one-hot
            class (background for unmatched priors), and in column ``-8`` a 1
            for matched priors; the last 7 columns are 0. All background
            when there is no box, as the original's ``len(boxes) == 0`` case.
        """
        if self.priors is None:
            raise ValueError("assign_boxes needs priors: BBoxUtility(num_classes, priors) with "
                             "ssd300.load_priors(...) or ssd300.priors_from_model(model)")
        boxes = np.asarray(boxes, dtype=np.float64)
        assignment = np.zeros((self.num_priors, num_columns(self.num_classes)), dtype=dtype)
        offsets, one_hot, _ = split_targets(assignment)
        one_hot[:, 0] = 1.0
        if boxes.size == 0:
            return assignment
        if boxes.ndim != 2 or boxes.shape[1] != 4 + self.num_classes - 1:
            raise ValueError(
                f"assign_boxes expects boxes of shape (num_boxes, {4 + self.num_classes - 1}): a box "
                f"and a one-hot row of the {self.num_classes - 1} classes without the background; "
                f"got {boxes.shape}")
        matched = self.match(boxes)
        pos = np.flatnonzero(matched >= 0)
        owner = matched[pos]
        offsets[pos] = encode_boxes(boxes[owner, :4], self.priors[pos])
        one_hot[pos, 0] = 0.0
        one_hot[pos, 1:] = boxes[owner, 4:]
        assignment[pos, -8] = 1.0  # the positive flag (see ssd300.layout)
        return assignment

    def decode_boxes(self, mbox_loc, mbox_priorbox, variances):
        """Decode predicted offsets against priors; see :func:`decode_boxes`."""
        return decode_boxes(np.asarray(mbox_loc), np.asarray(mbox_priorbox), np.asarray(variances))

    def detection_out(self, predictions, background_label_id=0, keep_top_k=200,
                      confidence_threshold=0.01):
        """Decode a batch of predictions and apply per-class NMS.

        Args:
            predictions: ``(batch, num_priors, 4 + num_classes + 8)``, the
                model's output.
            background_label_id: the class to skip (``None``, or a label
                out of range: none).
            keep_top_k: detections kept per image after NMS (``None``: all).
            confidence_threshold: a class score must exceed this to be
                considered.

        Returns:
            a list with one ``(K, 6)`` array per image, rows
            ``[label, confidence, xmin, ymin, xmax, ymax]`` by decreasing
            confidence; ``(0, 6)`` when nothing is detected.
        """
        check_detection_options(keep_top_k=keep_top_k, confidence_threshold=confidence_threshold,
                                background_label_id=background_label_id)
        predictions = np.asarray(predictions)
        if predictions.ndim != 3 or predictions.shape[-1] != num_columns(self.num_classes):
            raise ValueError(
                f"detection_out expects predictions of shape (batch, num_priors, "
                f"{num_columns(self.num_classes)}) for {self.num_classes} classes; got {predictions.shape}")
        conf = split_predictions(predictions)[1]
        batch, num_priors, num_classes = conf.shape
        candidates = conf > confidence_threshold
        if background_label_id is not None and 0 <= background_label_id < num_classes:
            candidates[..., background_label_id] = False
        # flatnonzero on the flat mask is much faster than nonzero on 3 axes.
        row, label = np.divmod(np.flatnonzero(candidates), num_classes)
        image = row // num_priors
        scores = conf.reshape(-1, num_classes)[row, label]
        # Only the candidates' boxes are decoded.
        offsets, _, prior_boxes, variances = split_predictions(
            predictions.reshape(-1, predictions.shape[-1])[row])
        boxes = decode_boxes(offsets, prior_boxes, variances)
        keep = batched_nms(boxes, scores, image * num_classes + label, self.nms_thresh, self.top_k)
        # Per image by decreasing score; equal scores by class, then prior
        # (the order the per-class loop appends them in, sorted stably).
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        keep = keep[np.argsort(image[keep], kind="stable")]
        bounds = np.searchsorted(image[keep], np.arange(batch + 1))
        results = []
        for i in range(batch):
            k = keep[bounds[i]:bounds[i + 1]][:keep_top_k]
            det = np.empty((len(k), 6))
            det[:, 0] = label[k]
            det[:, 1] = scores[k]
            det[:, 2:] = boxes[k]
            results.append(det)
        return results
