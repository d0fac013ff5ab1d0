"""Plain restatements of the originals, one box or one class at a time.

These are the independent references the vectorised code is compared with
(in the tests) and timed against (in bench/).
"""

import numpy as np


def iou_one(box, priors):
    inter_upleft = np.maximum(priors[:, :2], box[:2])
    inter_botright = np.minimum(priors[:, 2:4], box[2:])
    inter_wh = np.maximum(inter_botright - inter_upleft, 0)
    inter = inter_wh[:, 0] * inter_wh[:, 1]
    area_pred = (box[2] - box[0]) * (box[3] - box[1])
    area_gt = (priors[:, 2] - priors[:, 0]) * (priors[:, 3] - priors[:, 1])
    return inter / (area_pred + area_gt - inter)


def encode_box_one(box, priors, overlap_threshold=0.5):
    """The original encode_box: (num_priors, 5) encoded box and IoU."""
    num_priors = len(priors)
    iou = iou_one(box, priors)
    encoded_box = np.zeros((num_priors, 5))
    assign_mask = iou > overlap_threshold
    if not assign_mask.any():
        assign_mask[iou.argmax()] = True
    encoded_box[:, -1][assign_mask] = iou[assign_mask]
    assigned_priors = priors[assign_mask]
    box_center = 0.5 * (box[:2] + box[2:])
    box_wh = box[2:] - box[:2]
    assigned_priors_center = 0.5 * (assigned_priors[:, :2] + assigned_priors[:, 2:4])
    assigned_priors_wh = assigned_priors[:, 2:4] - assigned_priors[:, :2]
    encoded_box[:, :2][assign_mask] = box_center - assigned_priors_center
    encoded_box[:, :2][assign_mask] /= assigned_priors_wh
    encoded_box[:, :2][assign_mask] /= assigned_priors[:, -4:-2]
    encoded_box[:, 2:4][assign_mask] = np.log(box_wh / assigned_priors_wh)
    encoded_box[:, 2:4][assign_mask] /= assigned_priors[:, -2:]
    return encoded_box


def assign_boxes_one_at_a_time(boxes, priors, num_classes, overlap_threshold=0.5):
    """The original assign_boxes, with a Python loop instead of apply_along_axis."""
    num_priors = len(priors)
    assignment = np.zeros((num_priors, 4 + num_classes + 8))
    assignment[:, 4] = 1.0
    if len(boxes) == 0:
        return assignment
    encoded_boxes = np.stack([encode_box_one(b[:4], priors, overlap_threshold) for b in boxes])
    best_iou = encoded_boxes[:, :, -1].max(axis=0)
    best_iou_idx = encoded_boxes[:, :, -1].argmax(axis=0)
    best_iou_mask = best_iou > 0
    best_iou_idx = best_iou_idx[best_iou_mask]
    assign_num = len(best_iou_idx)
    encoded_boxes = encoded_boxes[:, best_iou_mask, :]
    assignment[:, :4][best_iou_mask] = encoded_boxes[best_iou_idx, np.arange(assign_num), :4]
    assignment[:, 4][best_iou_mask] = 0
    assignment[:, 5:-8][best_iou_mask] = boxes[best_iou_idx, 4:]
    assignment[:, -8][best_iou_mask] = 1
    return assignment


def greedy_nms(boxes, scores, iou_threshold, top_k):
    """One box at a time: keep a box unless it overlaps a kept one by more than the threshold.

    Corners may come in either order, as in ``tf.image.non_max_suppression``.
    """
    def corners(b):
        return min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])

    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept = []
    for i in order:
        bi = corners(boxes[i])
        ok = True
        for j in kept:
            bj = corners(boxes[j])
            iw = max(0.0, min(bi[2], bj[2]) - max(bi[0], bj[0]))
            ih = max(0.0, min(bi[3], bj[3]) - max(bi[1], bj[1]))
            inter = iw * ih
            area_i = (bi[2] - bi[0]) * (bi[3] - bi[1])
            area_j = (bj[2] - bj[0]) * (bj[3] - bj[1])
            union = area_i + area_j - inter
            if area_i > 0 and area_j > 0 and inter / union > iou_threshold:
                ok = False
                break
        if ok:
            kept.append(i)
            if len(kept) == top_k:
                break
    return kept


def decode_one_image(loc, priors, variances):
    """decode_boxes with the centre-y offset scaled by the prior height (the fix)."""
    pw = priors[:, 2] - priors[:, 0]
    ph = priors[:, 3] - priors[:, 1]
    pcx = 0.5 * (priors[:, 2] + priors[:, 0])
    pcy = 0.5 * (priors[:, 3] + priors[:, 1])
    cx = loc[:, 0] * pw * variances[:, 0] + pcx
    cy = loc[:, 1] * ph * variances[:, 1] + pcy
    w = np.exp(loc[:, 2] * variances[:, 2]) * pw
    h = np.exp(loc[:, 3] * variances[:, 3]) * ph
    out = np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=1)
    return np.clip(out, 0.0, 1.0)


def detection_out_per_class(predictions, num_classes, nms_thresh=0.45, top_k=400,
                            background_label_id=0, keep_top_k=200, confidence_threshold=0.01):
    """The original detection_out: per image, per class, greedy NMS."""
    results = []
    for pred in predictions:
        boxes = decode_one_image(pred[:, :4], pred[:, -8:-4], pred[:, -4:])
        dets = []
        for c in range(num_classes):
            if c == background_label_id:
                continue
            confs = pred[:, 4 + c]
            mask = confs > confidence_threshold
            if not mask.any():
                continue
            idx = np.flatnonzero(mask)
            kept = greedy_nms(boxes[idx], confs[idx], nms_thresh, top_k)
            for k in kept:
                dets.append([c, confs[idx[k]], *boxes[idx[k]]])
        dets = np.array(dets).reshape(-1, 6)
        dets = dets[np.argsort(-dets[:, 1], kind="stable")][:keep_top_k]
        results.append(dets)
    return results


def multibox_loss(y_true, y_pred, num_classes, alpha=1.0, neg_pos_ratio=3.0,
                  negatives_for_hard=100.0, per_image=False):
    """The original MultiboxLoss formula in NumPy (float64)."""
    y_true = y_true.astype(np.float64)
    y_pred = y_pred.astype(np.float64)
    batch, num_boxes = y_true.shape[:2]
    p = np.clip(y_pred[:, :, 4:-8], 1e-15, 1 - 1e-15)
    conf_loss = -(y_true[:, :, 4:-8] * np.log(p)).sum(-1)
    d = np.abs(y_true[:, :, :4] - y_pred[:, :, :4])
    loc_loss = np.where(d < 1, 0.5 * d ** 2, d - 0.5).sum(-1)
    pos = y_true[:, :, -8]
    num_pos = pos.sum(1)
    num_neg = np.minimum(neg_pos_ratio * num_pos, num_boxes - num_pos)
    if per_image:
        ks = [int(np.floor(n)) if n > 0 else int(negatives_for_hard) for n in num_neg]
    else:
        positive = num_neg[num_neg > 0]
        k = int(np.floor(positive.min())) if len(positive) else int(negatives_for_hard)
        ks = [k] * batch
    max_confs = y_pred[:, :, 5:4 + num_classes].max(-1)
    losses = []
    for i in range(batch):
        score = max_confs[i] * (1 - pos[i])
        order = np.argsort(-score, kind="stable")[:ks[i]]
        neg_loss = conf_loss[i, order].sum()
        pos_conf = (conf_loss[i] * pos[i]).sum()
        denom = num_pos[i] + ks[i]
        total = (pos_conf + neg_loss) / (denom if denom > 0 else 1)
        npos = num_pos[i] if num_pos[i] != 0 else 1
        losses.append(total + alpha * (loc_loss[i] * pos[i]).sum() / npos)
    return np.array(losses)
