"""DecodeDetections (keras.ops NMS layer) against BBoxUtility.detection_out, on every backend."""

import keras
import numpy as np
import pytest

from ssd300.decode_detections import DecodeDetections, decode_boxes
from ssd300.layout import num_columns, split_predictions
from ssd300.ssd_utils import BBoxUtility
from ssd300.ssd_utils import decode_boxes as decode_boxes_numpy
from tests.conftest import random_boxes
from tests.test_box_utils import fake_predictions

VARIANCES = [0.1, 0.1, 0.2, 0.2]
# One shape for the small cases (priors, classes with the background, batch):
# JAX compiles each op once per shape.
P, C, B = 120, 4, 2


def detections(out):
    """The layer's dict of outputs as detection_out's list of ``(n, 6)`` float64 arrays."""
    out = {k: keras.ops.convert_to_numpy(v) for k, v in out.items()}
    rows = []
    for i, n in enumerate(out["num_detections"]):
        det = np.empty((n, 6))
        det[:, 0] = out["classes"][i, :n]
        det[:, 1] = out["scores"][i, :n]
        det[:, 2:] = out["boxes"][i, :n]
        rows.append(det)
    return rows


def reference(predictions, top_k=400, nms_thresh=0.45, **kwargs):
    num_classes = predictions.shape[-1] - 12
    return BBoxUtility(num_classes, nms_thresh=nms_thresh, top_k=top_k).detection_out(predictions, **kwargs)


def assert_same(got, expected):
    """Same rows in the same order: labels and scores exactly, boxes to float32 rounding."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_array_equal(g[:, :2], e[:, :2])
        np.testing.assert_allclose(g[:, 2:], e[:, 2:], rtol=0, atol=1e-6)


def check(predictions, top_k=400, nms_thresh=0.45, keep_top_k=200, confidence_threshold=0.01,
          background_label_id=0, **layer_kwargs):
    predictions = np.asarray(predictions, dtype=np.float32)
    layer = DecodeDetections(confidence_threshold=confidence_threshold, nms_thresh=nms_thresh,
                             top_k=top_k, keep_top_k=keep_top_k,
                             background_label_id=background_label_id, **layer_kwargs)
    got = detections(layer(predictions))
    expected = reference(predictions, top_k=top_k, nms_thresh=nms_thresh, keep_top_k=keep_top_k,
                         confidence_threshold=confidence_threshold,
                         background_label_id=background_label_id)
    assert_same(got, expected)
    return expected


def make_predictions(rng, batch, priors, scores, loc_scale=0.5):
    """``(batch, P, 4 + C + 8)`` float32 from ``(P, 8)`` priors and ``(batch, P, C)`` scores."""
    num_priors = len(priors)
    loc = rng.normal(0, loc_scale, (batch, num_priors, 4))
    return np.concatenate([loc, scores, np.broadcast_to(priors, (batch, num_priors, 8))],
                          axis=-1).astype(np.float32)


def with_variances(boxes):
    return np.concatenate([boxes, np.broadcast_to(VARIANCES, (len(boxes), 4))], axis=1)


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.backend
def test_trained_like_predictions(priors, rng):
    predictions = fake_predictions(rng, priors, 3).astype(np.float32)
    expected = check(predictions)
    assert all(len(e) > 100 for e in expected)


@pytest.mark.backend
def test_random_predictions(rng):
    for _ in range(4):
        priors = with_variances(random_boxes(rng, P, 0.05, 0.5))
        scores = softmax(rng.normal(0, 2, (B, P, C)) + [2.0, 0, 0, 0])
        check(make_predictions(rng, B, priors, scores))


@pytest.mark.backend
def test_ties_in_scores_and_boxes(rng):
    # Few distinct boxes and scores: equal scores across priors and classes,
    # identical boxes (IoU 1) of equal score; the order of equal scores
    # (class, then prior) and NMS's (lower prior first) decide.
    boxes = with_variances(random_boxes(rng, 6, 0.1, 0.4))
    priors = boxes[rng.integers(0, 6, P)]
    scores = rng.choice(np.float32([0.0, 0.005, 0.01, 0.02, 0.25, 0.5]), size=(B, P, C))
    predictions = make_predictions(rng, B, priors, scores)
    predictions[:, ::2, :4] = 0.0  # half the boxes are their prior exactly
    expected = check(predictions)
    assert any(len(np.unique(e[:, 1])) < len(e) for e in expected)  # ties reach the output
    check(predictions, keep_top_k=7)  # the cut falls among equal scores


@pytest.mark.backend
def test_many_overlapping_boxes(rng):
    base = np.array([0.3, 0.3, 0.6, 0.7])
    priors = with_variances(np.clip(base + rng.uniform(-0.05, 0.05, (P, 4)), 0, 1))
    scores = rng.uniform(0, 0.2, (B, P, C))
    expected = check(make_predictions(rng, B, priors, scores, loc_scale=0.2))
    candidates = (scores[..., 1:] > 0.01).sum(axis=(1, 2))
    assert all(0 < len(e) < n / 4 for e, n in zip(expected, candidates))  # NMS dropped most


@pytest.mark.backend
def test_a_chain_of_suppressions_across_tiles(rng):
    # 100 boxes of one class in a row, each shifted by a quarter of its width:
    # a box overlaps the next (IoU 0.6) but not the one after (0.33), so the
    # greedy result alternates, each decision waiting for the previous one,
    # across the 32-candidate tiles the layer settles in rounds.
    n = 100
    x = 0.005 * np.arange(n)
    boxes = np.stack([x, np.full(n, 0.4), x + 0.02, np.full(n, 0.42)], axis=1)
    priors = with_variances(np.concatenate([boxes, random_boxes(rng, P - n, 0.05, 0.3)]))
    scores = np.zeros((B, P, C))
    scores[..., 0] = 1.0
    scores[:, :n, 0] = 0.0
    scores[:, :n, 2] = 0.9 - 0.005 * np.arange(n)
    predictions = make_predictions(rng, B, priors, scores)
    predictions[:, :, :4] = 0.0  # each box is its prior
    for e in check(predictions, top_k=400):
        np.testing.assert_allclose(e[:, 2], x[::2], atol=1e-6)


@pytest.mark.backend
def test_an_image_with_nothing(rng):
    priors = with_variances(random_boxes(rng, P))
    scores = np.zeros((B, P, C))
    scores[..., 0] = 1.0
    scores[1, 7, 2] = 0.3
    scores[1, 8, 3] = 0.01  # not above the threshold
    expected = check(make_predictions(rng, B, priors, scores))
    assert [len(e) for e in expected] == [0, 1]


@pytest.mark.backend
def test_more_candidates_than_top_k(rng):
    # Small boxes spread out overlap nothing, so NMS would keep them all:
    # top_k caps each class, keep_top_k the image.
    centres = rng.uniform(0.05, 0.95, (P, 2))
    priors = with_variances(np.concatenate([centres - 0.005, centres + 0.005], axis=1))
    scores = rng.uniform(0.02, 1.0, (B, P, C))
    predictions = make_predictions(rng, B, priors, scores, loc_scale=0.01)
    for e in check(predictions, top_k=40):
        assert np.bincount(e[:, 0].astype(int)).tolist() == [0, 40, 40, 40]
    assert [len(e) for e in check(predictions, top_k=40, keep_top_k=70)] == [70, 70]


@pytest.mark.backend
def test_boxes_of_zero_area(rng):
    boxes = random_boxes(rng, P, 0.05, 0.3)
    boxes[:20, 2] = boxes[:20, 0]  # zero width
    boxes[20:30, :2] = boxes[20:30, 2:] = 1.2  # outside, clipped to the corner (1, 1)
    priors = with_variances(boxes)
    scores = rng.uniform(0, 0.6, (B, P, C))
    predictions = make_predictions(rng, B, priors, scores, loc_scale=0.1)
    predictions[:, 30:40, 2:4] = -1e3  # exp underflows: a box of no size
    expected = check(predictions)
    area = [(e[:, 4] - e[:, 2]) * (e[:, 5] - e[:, 3]) for e in expected]
    assert sum((a == 0).sum() for a in area) > 10


@pytest.mark.backend
def test_other_parameters(rng):
    priors = with_variances(random_boxes(rng, P, 0.05, 0.6))
    scores = softmax(rng.normal(0, 2, (B, P, C)))
    predictions = make_predictions(rng, B, priors, scores)
    check(predictions, background_label_id=2, confidence_threshold=0.1, nms_thresh=0.3)
    check(predictions, background_label_id=-1, nms_thresh=0.0)  # no background
    check(predictions, nms_thresh=1.0, keep_top_k=1)
    check(predictions[:, :40])  # fewer (prior, class) pairs than keep_top_k rows


@pytest.mark.backend
def test_only_the_best_max_candidates_are_seen(rng):
    """Past ``max_candidates``, the result is detection_out's on the best candidates."""
    priors = with_variances(random_boxes(rng, P, 0.05, 0.4))
    scores = rng.uniform(0, 0.5, (B, P, C))
    predictions = make_predictions(rng, B, priors, scores)
    m = 100
    layer = DecodeDetections(max_candidates=m, keep_top_k=200)
    got = detections(layer(predictions))
    # Zero every score but the m best (by score, then class, then prior).
    seen = predictions.copy()
    conf = split_predictions(seen)[1]
    for b in range(B):
        prior, label = np.nonzero(conf[b, :, 1:] > 0.01)
        label += 1
        order = np.lexsort((prior, label, -conf[b, prior, label]))
        conf[b, prior[order[m:]], label[order[m:]]] = 0.0
    assert_same(got, reference(seen))
    assert got[0].shape != reference(predictions)[0].shape  # some boxes were not seen
    # The same boxes when the image's rows fill up from the seen candidates.
    got = detections(DecodeDetections(max_candidates=m, keep_top_k=10)(predictions))
    assert_same(got, reference(predictions, keep_top_k=10))


def test_trained_like_images_stay_within_max_candidates(priors):
    """The candidate bound is not reached by predictions shaped like a trained model's.

    ``fake_predictions`` (mostly background, clusters of boosted priors around
    objects; the bench's predictions) gives ~150 candidates above 0.01 per
    object.
    """
    bound = DecodeDetections().max_candidates
    rng = np.random.default_rng(7)
    counts = []
    for objects in (1, 4, 6):
        conf = split_predictions(fake_predictions(rng, priors, 8, objects=objects))[1]
        counts.append((conf[..., 1:] > 0.01).sum(axis=(1, 2)))
    counts = np.concatenate(counts)
    assert counts.min() > 50
    assert counts.max() < bound


@pytest.mark.backend
def test_decode_boxes_matches_ssd_utils(priors, rng):
    loc = rng.normal(0, 1, (len(priors), 4)).astype(np.float32)
    expected = decode_boxes_numpy(loc, priors[:, :4], priors[:, 4:])
    got = keras.ops.convert_to_numpy(decode_boxes(keras.ops.convert_to_tensor(loc),
                                                  keras.ops.convert_to_tensor(priors[:, :4]),
                                                  keras.ops.convert_to_tensor(priors[:, 4:])))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.backend
def test_in_a_model_saved_and_loaded(tmp_path, rng):
    priors = with_variances(random_boxes(rng, P, 0.05, 0.5))
    predictions = make_predictions(rng, B, priors, softmax(rng.normal(0, 2, (B, P, C))))
    inputs = keras.Input((P, num_columns(C)))
    layer = DecodeDetections(confidence_threshold=0.05, nms_thresh=0.4, top_k=7, keep_top_k=9,
                             max_candidates=50)
    model = keras.Model(inputs, layer(inputs))
    assert model.output["boxes"].shape == (None, 9, 4)
    assert model.output["classes"].dtype == "int32"
    assert model.output["num_detections"].shape == (None,)
    expected = reference(predictions, top_k=7, nms_thresh=0.4, keep_top_k=9, confidence_threshold=0.05)
    assert_same(detections(model.predict_on_batch(predictions)), expected)
    model.save(tmp_path / "decoder.keras")
    loaded = keras.saving.load_model(tmp_path / "decoder.keras")
    assert loaded.layers[-1].get_config() == layer.get_config()
    assert_same(detections(loaded.predict_on_batch(predictions)), expected)


def test_config_round_trip_and_validation():
    layer = DecodeDetections(0.2, 0.3, 10, 20, background_label_id=None, max_candidates=64)
    clone = DecodeDetections.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert (clone.confidence_threshold, clone.nms_thresh, clone.top_k, clone.keep_top_k,
            clone.background_label_id, clone.max_candidates) == (0.2, 0.3, 10, 20, None, 64)
    with pytest.raises(ValueError, match="nms_thresh"):
        DecodeDetections(nms_thresh=1.5)
    with pytest.raises(ValueError, match="top_k"):
        DecodeDetections(top_k=0)
    # The rules of BBoxUtility.detection_out (ssd_utils.check_detection_options), except keep_top_k=None.
    for kwargs, message in [({"keep_top_k": 2.5}, "keep_top_k must be a positive integer or None, got 2.5"),
                            ({"keep_top_k": None}, "keep_top_k must be a positive integer, got None"),
                            ({"background_label_id": 1.5}, "background_label_id must be an integer or None, got 1.5"),
                            ({"confidence_threshold": float("nan")}, "confidence_threshold must be a finite number"),
                            ({"max_candidates": 0}, "max_candidates must be a positive integer, got 0")]:
        with pytest.raises(ValueError, match=f"^{message}"):
            DecodeDetections(**kwargs)
    with pytest.raises(ValueError, match=r"\(batch, num_priors"):
        DecodeDetections()(keras.Input((10, 4, 17)))
    with pytest.raises(ValueError, match="too short"):
        DecodeDetections()(keras.Input((10, 12)))
