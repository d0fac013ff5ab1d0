"""MultiboxLoss against a NumPy restatement of the original formula, on every backend."""

import numpy as np
import pytest

pytestmark = pytest.mark.backend

keras = pytest.importorskip("keras")
from keras import ops  # noqa: E402

from ssd300.ssd_training import MultiboxLoss  # noqa: E402
from tests.reference import multibox_loss  # noqa: E402

NUM_CLASSES = 6
NUM_PRIORS = 300


def make_batch(rng, positives_per_image, num_priors=NUM_PRIORS, num_classes=NUM_CLASSES):
    batch = len(positives_per_image)
    y_true = np.zeros((batch, num_priors, 4 + num_classes + 8), np.float32)
    y_true[:, :, 4] = 1
    for i, n in enumerate(positives_per_image):
        idx = rng.choice(num_priors, n, replace=False)
        y_true[i, idx, :4] = rng.normal(0, 1.5, (n, 4))
        y_true[i, idx, 4] = 0
        y_true[i, idx, 4 + rng.integers(1, num_classes, n)] = 1
        y_true[i, idx, -8] = 1
    logits = rng.normal(0, 2, (batch, num_priors, num_classes))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    y_pred = np.concatenate([rng.normal(0, 1.5, (batch, num_priors, 4)), probs,
                             rng.uniform(0, 1, (batch, num_priors, 8))], axis=-1).astype(np.float32)
    return y_true, y_pred


def loss_value(loss, y_true, y_pred):
    return ops.convert_to_numpy(loss.compute_loss(ops.convert_to_tensor(y_true),
                                                  ops.convert_to_tensor(y_pred)))


@pytest.mark.parametrize("ratio", [3.0, 2.0])
@pytest.mark.parametrize("positives", [[5, 0, 17, 2], [0, 0, 0], [1], [40, 40], [299, 3]])
def test_loss_equals_numpy_formula(ratio, positives):
    rng = np.random.default_rng(sum(positives) + int(ratio))
    y_true, y_pred = make_batch(rng, positives)
    loss = MultiboxLoss(NUM_CLASSES, neg_pos_ratio=ratio)
    got = loss_value(loss, y_true, y_pred)
    expected = multibox_loss(y_true, y_pred, NUM_CLASSES, neg_pos_ratio=ratio)
    assert got.shape == (len(positives),)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_loss_per_image_mining_and_alpha():
    rng = np.random.default_rng(7)
    y_true, y_pred = make_batch(rng, [3, 0, 20])
    loss = MultiboxLoss(NUM_CLASSES, alpha=0.5, neg_pos_ratio=3.0, per_image_mining=True)
    expected = multibox_loss(y_true, y_pred, NUM_CLASSES, alpha=0.5, per_image=True)
    np.testing.assert_allclose(loss_value(loss, y_true, y_pred), expected, rtol=1e-5)
    # The batch-wide count differs from per-image mining here.
    batch = multibox_loss(y_true, y_pred, NUM_CLASSES, alpha=0.5)
    assert not np.allclose(batch, expected)


def test_loss_known_value_single_prior():
    # One positive prior of 4: conf loss -log(0.5); loc diff 0.5 -> 0.125; one
    # negative (ratio 1) picked by max non-background prob: prior 2.
    y_true = np.zeros((1, 4, 4 + 3 + 8), np.float32)
    y_true[0, :, 4] = 1
    y_true[0, 0, 4], y_true[0, 0, 5], y_true[0, 0, -8] = 0, 1, 1
    y_true[0, 0, :4] = [0.5, 0, 0, 0]
    y_pred = np.zeros_like(y_true)
    y_pred[0, :, 4:7] = [[0.5, 0.5, 0.0], [0.9, 0.05, 0.05], [0.2, 0.1, 0.7], [0.8, 0.1, 0.1]]
    got = loss_value(MultiboxLoss(3, neg_pos_ratio=1.0), y_true, y_pred)
    expected = (-np.log(0.5) - np.log(0.2)) / 2 + 0.125
    np.testing.assert_allclose(got, [expected], rtol=1e-6)


def test_loss_gradient_finite_without_positives():
    rng = np.random.default_rng(3)
    y_true, y_pred = make_batch(rng, [0, 0])
    backend = keras.backend.backend()
    loss = MultiboxLoss(NUM_CLASSES)
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.Variable(y_pred)
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(loss.compute_loss(y_true, x))
        grad = tape.gradient(value, x).numpy()
        compiled = tf.function(loss.compute_loss, jit_compile=True)(y_true, y_pred).numpy()
    elif backend == "jax":
        import jax

        grad = np.asarray(jax.grad(lambda p: loss.compute_loss(y_true, p).sum())(y_pred))
        compiled = np.asarray(jax.jit(loss.compute_loss)(y_true, y_pred))
    else:
        import torch

        x = torch.tensor(y_pred, requires_grad=True)
        loss.compute_loss(torch.tensor(y_true), x).sum().backward()
        grad = x.grad.numpy()
        compiled = loss_value(loss, y_true, y_pred)
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0
    np.testing.assert_allclose(compiled, multibox_loss(y_true, y_pred, NUM_CLASSES), rtol=1e-5)


def test_background_label_must_be_zero():
    with pytest.raises(ValueError):
        MultiboxLoss(21, background_label_id=1)


def test_loss_refuses_settings_and_shapes_that_do_not_fit():
    for num_classes in (0, 1, 2.5, "4"):  # num_classes used to be ignored
        with pytest.raises(ValueError, match="an integer >= 2"):
            MultiboxLoss(num_classes)
    for name in ("alpha", "neg_pos_ratio", "negatives_for_hard"):
        for value in (-1.0, float("nan"), float("inf")):  # -3 or NaN quietly mined negatives_for_hard
            with pytest.raises(ValueError, match=rf"^{name} must be a finite number >= 0"):
                MultiboxLoss(NUM_CLASSES, **{name: value})
    y_true, y_pred = make_batch(np.random.default_rng(0), [3, 1])
    loss = MultiboxLoss(NUM_CLASSES)
    with pytest.raises(ValueError, match=r"^MultiboxLoss\(21\): y_true must have shape \(batch, num_priors, 33\)"):
        loss_value(MultiboxLoss(21), y_true, y_pred)
    with pytest.raises(ValueError, match=r"differ in shape"):
        loss_value(loss, y_true, y_pred[:, :200])
    with pytest.raises(ValueError, match=r"y_pred must have shape .*got \(300, 18\)"):
        loss_value(loss, y_true, y_pred[0])
    np.testing.assert_allclose(loss_value(loss, y_true, y_pred), multibox_loss(y_true, y_pred, NUM_CLASSES),
                               rtol=1e-5)
