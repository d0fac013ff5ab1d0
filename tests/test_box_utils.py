"""BBoxUtility against one-box-at-a-time / per-class restatements of the original."""

import re

import numpy as np
import pytest

from ssd300.box_ops import batched_nms, nms, pairwise_iou
from ssd300.ssd_utils import BBoxUtility, encode_boxes
from tests.conftest import random_boxes
from tests.reference import (assign_boxes_one_at_a_time, detection_out_per_class,
                             greedy_nms, iou_one)

NUM_CLASSES = 21


def with_classes(rng, boxes, num_classes=NUM_CLASSES):
    onehot = np.eye(num_classes - 1)[rng.integers(0, num_classes - 1, len(boxes))]
    return np.concatenate([boxes, onehot], axis=1)


def test_iou_known_values():
    a = np.array([[0.0, 0.0, 0.5, 0.5]])
    b = np.array([[0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5], [0.5, 0.5, 1.0, 1.0]])
    np.testing.assert_allclose(pairwise_iou(a, b)[0], [1.0, 1 / 3, 0.0])
    np.testing.assert_allclose(pairwise_iou(a, b, offset=1)[0, 1], (1.25 * 1.5) / (2 * 2.25 - 1.25 * 1.5))


@pytest.mark.parametrize("case", ["none", "one_tiny", "many_overlapping", "random"])
def test_assign_boxes_equals_one_box_at_a_time(priors, rng, case):
    util = BBoxUtility(NUM_CLASSES, priors)
    if case == "none":
        boxes = np.zeros((0, 4 + NUM_CLASSES - 1))
    elif case == "one_tiny":
        boxes = with_classes(rng, np.array([[0.50, 0.50, 0.505, 0.503]]))
    elif case == "many_overlapping":
        base = np.array([0.3, 0.3, 0.6, 0.7])
        jitter = rng.uniform(-0.03, 0.03, size=(12, 4))
        boxes = with_classes(rng, np.clip(base + jitter, 0, 1))
    else:
        boxes = with_classes(rng, random_boxes(rng, 8, 0.01, 0.9))
    expected = assign_boxes_one_at_a_time(boxes, priors, NUM_CLASSES)
    got = util.assign_boxes(boxes)
    assert got.shape == (7308, 4 + NUM_CLASSES + 8)
    np.testing.assert_array_equal(got[:, 4:], expected[:, 4:])
    np.testing.assert_allclose(got[:, :4], expected[:, :4], rtol=1e-12, atol=1e-12)
    if case != "none":
        assert got[:, -8].sum() >= 1


def test_assign_boxes_many_random_sets(priors):
    util = BBoxUtility(NUM_CLASSES, priors)
    rng = np.random.default_rng(1)
    for _ in range(20):
        boxes = with_classes(rng, random_boxes(rng, rng.integers(1, 6), 0.005, 1.0))
        expected = assign_boxes_one_at_a_time(boxes, priors, NUM_CLASSES)
        np.testing.assert_allclose(util.assign_boxes(boxes), expected, atol=1e-12)


def test_encode_box_matches_original(priors, rng):
    util = BBoxUtility(NUM_CLASSES, priors)
    from tests.reference import encode_box_one

    for box in random_boxes(rng, 5):
        np.testing.assert_allclose(util.encode_box(box), encode_box_one(box, priors).ravel(),
                                   atol=1e-12)
        assert util.encode_box(box, return_iou=False).shape == (7308 * 4,)
        np.testing.assert_allclose(util.iou(box), iou_one(box, priors))


def test_assign_boxes_checks_the_class_columns(priors):
    util = BBoxUtility(NUM_CLASSES, priors)
    with pytest.raises(ValueError, match=r"shape \(num_boxes, 24\).*got \(1, 4\)"):
        util.assign_boxes(np.array([[0.1, 0.1, 0.5, 0.5]]))
    assert util.assign_boxes(np.zeros((0, 4))).shape == (7308, 33)


@pytest.mark.parametrize("empty", [np.array([]), [], np.zeros((0,)), np.zeros((0, 4)), np.zeros((0, 24)),
                                   np.zeros((1, 0)), np.zeros((0, 3, 5))])
def test_assign_boxes_takes_any_empty_array_as_no_boxes(priors, empty):
    # The originals' get_data_from_XML gave np.array([]) (shape (0,)) for an image without
    # objects, and assign_boxes returned the all-background target for it.
    got = BBoxUtility(NUM_CLASSES, priors).assign_boxes(empty, dtype=np.float32)
    expected = np.zeros((7308, 4 + NUM_CLASSES + 8), np.float32)
    expected[:, 4] = 1.0
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_zero_wide_boxes_match_no_prior(priors, rng):
    # A one-pixel VOC box (xmin == xmax) normalised by the image width is zero-wide: IoU 0 with
    # every prior, so it adds nothing to the target and nothing becomes NaN or infinite.
    util = BBoxUtility(NUM_CLASSES, priors)
    ordinary = with_classes(rng, np.array([[0.2, 0.3, 0.6, 0.8]]))
    degenerate = with_classes(rng, np.array([[0.055, 0.11, 0.055, 0.4], [0.1, 0.5, 0.7, 0.5],
                                             [0.3, 0.3, 0.3, 0.3]]))
    alone = util.assign_boxes(degenerate)
    assert np.isfinite(alone).all() and alone[:, -8].sum() == 0
    np.testing.assert_array_equal(alone, util.assign_boxes(np.zeros((0, 24))))
    mixed = util.assign_boxes(np.concatenate([degenerate[:1], ordinary, degenerate[1:]]))
    assert np.isfinite(mixed).all()
    np.testing.assert_array_equal(mixed, util.assign_boxes(ordinary))
    with np.errstate(divide="ignore"):  # the original encodes log(0) for the void claim, then drops it
        reference = assign_boxes_one_at_a_time(np.concatenate([degenerate[:1], ordinary, degenerate[1:]]),
                                               priors, NUM_CLASSES)
    np.testing.assert_array_equal(mixed, reference)


def test_decode_inverts_encode(priors, rng):
    util = BBoxUtility(NUM_CLASSES, priors)
    boxes = random_boxes(rng, 50, 0.05, 0.5)
    chosen = priors[rng.integers(0, len(priors), 50)].astype(np.float64)
    encoded = encode_boxes(boxes, chosen)
    decoded = util.decode_boxes(encoded, chosen[:, :4], chosen[:, 4:])
    np.testing.assert_allclose(decoded, boxes, atol=1e-12)


def test_decode_scales_y_by_prior_height():
    prior = np.array([[0.4, 0.2, 0.6, 0.8]])  # width 0.2, height 0.6
    var = np.array([[0.1, 0.1, 0.2, 0.2]])
    loc = np.array([[0.0, 1.0, 0.0, 0.0]])  # dy = 1 * 0.6 * 0.1 = 0.06
    out = BBoxUtility(2).decode_boxes(loc, prior, var)
    np.testing.assert_allclose(out, [[0.4, 0.26, 0.6, 0.86]])


def test_nms_equals_greedy_reference(rng):
    for n in (1, 5, 60, 300):
        boxes = random_boxes(rng, n, 0.05, 0.4)
        scores = rng.uniform(0, 1, n)
        scores[: n // 3] = np.round(scores[: n // 3], 1)  # ties
        expected = greedy_nms(boxes, scores, 0.45, 400)
        assert nms(boxes, scores, 0.45, 400).tolist() == expected
        assert nms(boxes, scores, 0.45, 3).tolist() == expected[:3]


def test_nms_matches_tensorflow(rng):
    tf = pytest.importorskip("tensorflow")
    boxes = random_boxes(rng, 200, 0.05, 0.4).astype(np.float32)
    scores = rng.uniform(0, 1, 200).astype(np.float32)
    for thr in (0.3, 0.45, 0.7):
        expected = tf.image.non_max_suppression(boxes, scores, 400, iou_threshold=thr).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, thr, 400), expected)
    # An exact-threshold overlap is kept by TensorFlow too (strictly greater suppresses).
    two = np.array([[0, 0, 1, 1], [0, 0, 1, 0.5]], np.float32)
    s = np.array([0.9, 0.8], np.float32)
    expected = tf.image.non_max_suppression(two, s, 10, iou_threshold=0.5).numpy()
    np.testing.assert_array_equal(nms(two, s, 0.5, 10), expected)


def test_batched_nms_keeps_classes_apart():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1.0]])
    keep = batched_nms(boxes, np.array([0.9, 0.8, 0.7]), np.array([1, 2, 1]), 0.45, 10)
    assert keep.tolist() == [0, 1]


@pytest.mark.parametrize("top_k", [1, 4, 400])
def test_batched_nms_equals_greedy_per_group(rng, top_k):
    n = 500
    boxes = random_boxes(rng, n, 0.02, 0.5)
    boxes[:40] = boxes[:40, [2, 3, 0, 1]]  # corners in the other order
    boxes[40:50, 2] = boxes[40:50, 0]  # no area
    scores = np.round(rng.uniform(0, 1, n), 2)  # many ties
    groups = rng.choice([7, -3, 12, 40], n)
    expected = []
    for g in np.unique(groups):  # by increasing group
        idx = np.flatnonzero(groups == g)
        expected += idx[greedy_nms(boxes[idx], scores[idx], 0.45, top_k)].tolist()
    assert batched_nms(boxes, scores, groups, 0.45, top_k).tolist() == expected


def test_batched_nms_empty_and_mismatched():
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0)).shape == (0,)
    with pytest.raises(ValueError, match="as many boxes, scores and groups"):
        batched_nms(np.zeros((3, 4)), np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match=r"shape \(N, 4\), got \(3, 5\)"):
        nms(np.zeros((3, 5)), np.zeros(3))
    with pytest.raises(ValueError, match="iou_threshold"):
        nms(np.zeros((3, 4)), np.zeros(3), -0.1)


def fake_predictions(rng, priors, batch, num_classes=NUM_CLASSES, objects=4):
    """Predictions shaped like a trained model's: mostly background, a few clusters."""
    n = len(priors)
    logits = rng.normal(0, 1, (batch, n, num_classes))
    logits[..., 0] += 9.5
    for b in range(batch):
        for _ in range(objects):
            centre = rng.uniform(0.2, 0.8, 2)
            cx = 0.5 * (priors[:, 0] + priors[:, 2])
            cy = 0.5 * (priors[:, 1] + priors[:, 3])
            near = np.flatnonzero(np.hypot(cx - centre[0], cy - centre[1]) < 0.08)
            logits[b, near, rng.integers(1, num_classes)] += rng.uniform(6, 11, len(near))
    conf = np.exp(logits - logits.max(-1, keepdims=True))
    conf /= conf.sum(-1, keepdims=True)
    loc = rng.normal(0, 0.5, (batch, n, 4))
    return np.concatenate([loc, conf, np.broadcast_to(priors, (batch, n, 8))], axis=-1)


def test_detection_out_equals_per_class_loop(priors, rng):
    util = BBoxUtility(NUM_CLASSES, priors)
    preds = fake_predictions(rng, priors, 3)
    got = util.detection_out(preds)
    expected = detection_out_per_class(preds, NUM_CLASSES)
    assert len(got) == 3
    for g, e in zip(got, expected):
        assert len(g) > 0
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, atol=1e-12)
        assert np.all(np.diff(g[:, 1]) <= 0)


def test_detection_out_limits_and_empty(priors, rng):
    util = BBoxUtility(NUM_CLASSES, priors, top_k=2)
    preds = fake_predictions(rng, priors, 2)
    res = util.detection_out(preds, keep_top_k=5)
    expected = detection_out_per_class(preds, NUM_CLASSES, top_k=2, keep_top_k=5)
    for g, e in zip(res, expected):
        np.testing.assert_allclose(g, e, atol=1e-12)
        assert len(g) <= 5
        for c in np.unique(g[:, 0]):
            assert (g[:, 0] == c).sum() <= 2
    empty = util.detection_out(preds, confidence_threshold=1.0)
    assert [e.shape for e in empty] == [(0, 6), (0, 6)]
    util.nms_thresh = 0.9
    util.top_k = 400
    assert util.nms_thresh == 0.9 and util.top_k == 400
    with pytest.raises(ValueError):
        util.nms_thresh = 1.5
    with pytest.raises(ValueError):
        util.top_k = 0
    loose = BBoxUtility(NUM_CLASSES, priors, nms_thresh=0.9).detection_out(preds)
    strict = BBoxUtility(NUM_CLASSES, priors, nms_thresh=0.3).detection_out(preds)
    assert all(len(a) > len(b) for a, b in zip(loose, strict))  # a looser threshold keeps more


def test_detection_out_float32_ties_and_other_background(priors, rng):
    util = BBoxUtility(NUM_CLASSES, priors)
    preds = fake_predictions(rng, priors, 3).astype(np.float32)
    preds[..., 4:-8] = np.round(preds[..., 4:-8], 2)  # many equal scores
    preds[1, :, 4:-8] = 0.0  # an image with nothing above the threshold
    got = util.detection_out(preds, background_label_id=3, keep_top_k=150)
    expected = detection_out_per_class(preds, NUM_CLASSES, background_label_id=3, keep_top_k=150)
    assert [g.shape for g in got] == [e.shape for e in expected]
    assert got[1].shape == (0, 6) and len(got[0]) == 150
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_detection_out_refuses_options_that_change_its_result_quietly(priors, rng):
    util = BBoxUtility(NUM_CLASSES, priors)
    preds = fake_predictions(rng, priors, 1)
    every = util.detection_out(preds, keep_top_k=None)[0]
    assert len(every) > 3
    np.testing.assert_array_equal(util.detection_out(preds, keep_top_k=3)[0], every[:3])
    for keep in (-1, 0, 2.5, True):  # -1 used to drop the last detection
        with pytest.raises(ValueError, match=rf"^keep_top_k must be a positive integer or None, got {keep!r}$"):
            util.detection_out(preds, keep_top_k=keep)
    for threshold in (float("nan"), float("inf"), "0.5", None):  # NaN used to keep nothing
        with pytest.raises(ValueError, match="^confidence_threshold must be a finite number"):
            util.detection_out(preds, confidence_threshold=threshold)
    assert len(util.detection_out(preds, keep_top_k=np.int64(2), confidence_threshold=np.float32(0.01))[0]) == 2
    for background in (1.5, "0", True):  # 1.5 was truncated to class 1
        with pytest.raises(ValueError, match=rf"^background_label_id must be an integer or None, got "
                                             rf"{re.escape(repr(background))}$"):
            util.detection_out(preds, background_label_id=background)
    # None, like a label out of range: no class is skipped, so class 0 is detected too.
    everything = util.detection_out(preds, background_label_id=None, keep_top_k=None)[0]
    np.testing.assert_array_equal(everything, util.detection_out(preds, background_label_id=-1, keep_top_k=None)[0])
    assert 0 in everything[:, 0] and 0 not in every[:, 0]
    for name, value, message in [("nms_thresh", 1.5, r"nms_thresh must be in \[0, 1\], got 1.5"),
                                 ("nms_thresh", float("nan"), r"nms_thresh must be in \[0, 1\], got nan"),
                                 ("top_k", 0, "top_k must be a positive integer, got 0"),
                                 ("top_k", 400.5, "top_k must be a positive integer, got 400.5")]:
        with pytest.raises(ValueError, match=f"^{message}$"):
            BBoxUtility(NUM_CLASSES, priors, **{name: value})


def test_bbox_utility_refuses_what_it_would_misuse(priors):
    from ssd300.priors import PriorFileError

    for num_classes in (0, 1, 2.5, "21", True):
        with pytest.raises(ValueError, match=rf"an integer >= 2, got {re.escape(repr(num_classes))}$"):
            BBoxUtility(num_classes, priors)
    for threshold in (-1, 1.5, float("nan")):  # -1 matched every prior
        with pytest.raises(ValueError, match="overlap_threshold must be in"):
            BBoxUtility(NUM_CLASSES, priors, overlap_threshold=threshold)
    bad = [(priors[:, :4], r"expected shape \(N, 8\), got \(7308, 4\)"),
           (priors.T, r"got \(8, 7308\)"),  # read as 8 priors before
           (np.where(np.arange(8) == 2, np.nan, priors), "contains NaN or infinite values"),
           ("prior_boxes_ssd300.pkl", r"got the path 'prior_boxes_ssd300.pkl'; pass ssd300.load_priors")]
    for value, message in bad:
        with pytest.raises(PriorFileError, match=message):
            BBoxUtility(NUM_CLASSES, value)
    with pytest.raises(ValueError, match="^assign_boxes needs priors"):
        BBoxUtility(NUM_CLASSES).assign_boxes(np.zeros((0, 4 + NUM_CLASSES - 1)))
    np.testing.assert_array_equal(BBoxUtility(NUM_CLASSES, priors.tolist()).priors, priors)


def test_detection_out_rejects_a_wrong_shape(priors):
    util = BBoxUtility(NUM_CLASSES, priors)
    with pytest.raises(ValueError, match=r"\(batch, num_priors, 33\)"):
        util.detection_out(np.zeros((len(priors), 33)))
    with pytest.raises(ValueError, match="for 21 classes"):
        util.detection_out(np.zeros((1, len(priors), 30)))
