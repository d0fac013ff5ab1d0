"""SSD300 model and its layers, on every backend."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.backend

keras = pytest.importorskip("keras")
from keras import ops  # noqa: E402

from ssd300.priors import priors_from_model  # noqa: E402
from ssd300.ssd_layers import Normalize, PriorBox, generate_prior_boxes  # noqa: E402
from ssd300.ssd_v2 import SSD300, SSD300v2  # noqa: E402
from tests.conftest import ROOT, shared_path  # noqa: E402

ORIGINAL_LAYER_NAMES = (
    [f"conv{b}_{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)]
    + [f"pool{i}" for i in range(1, 7)]
    + ["fc6", "fc7", "conv6_1", "conv6_2", "conv7_1", "conv7_1z", "conv7_2", "conv8_1",
       "conv8_2", "conv4_3_norm", "pool6_mbox_loc_flat", "pool6_mbox_conf_flat", "pool6_reshaped",
       "mbox_loc", "mbox_conf", "mbox_priorbox", "mbox_loc_final", "mbox_conf_logits",
       "mbox_conf_final", "predictions"]
    + [f"{s}_mbox_{k}" for s in ("conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2")
       for k in ("loc", "conf", "loc_flat", "conf_flat", "priorbox")]
    + ["pool6_mbox_priorbox"]
)


@pytest.fixture(scope="module")
def model():
    return SSD300v2((300, 300, 3), num_classes=21)


def test_architecture(model):
    assert SSD300 is SSD300v2
    names = {layer.name for layer in model.layers}
    assert set(ORIGINAL_LAYER_NAMES) <= names
    assert model.count_params() == 25_765_497
    assert model.output_shape == (None, 7308, 33)
    assert model.get_layer("fc6").dilation_rate == (6, 6)
    assert model.get_layer("conv7_2").output.shape[1:3] == (5, 5)


def test_forward_pass(model):
    x = np.random.default_rng(0).normal(0, 50, (2, 300, 300, 3)).astype("float32")
    out = ops.convert_to_numpy(model(x))
    assert out.shape == (2, 7308, 33)
    np.testing.assert_allclose(out[..., 4:25].sum(-1), 1.0, rtol=1e-5)
    reference = priors_from_model(model)
    np.testing.assert_array_equal(out[0, :, -8:], reference)
    np.testing.assert_array_equal(out[1, :, -8:], reference)


def test_priors_equal_original_file(model):
    from ssd300.priors import load_priors

    original = load_priors(shared_path("reference", "prior_boxes_ssd300_original.pkl"))
    np.testing.assert_allclose(priors_from_model(model), original, atol=1e-6)
    np.testing.assert_allclose(load_priors(ROOT / "prior_boxes_ssd300.pkl"), original, atol=1e-6)


def test_other_class_count_renames_class_heads():
    m = SSD300v2((300, 300, 3), num_classes=5)
    names = {layer.name for layer in m.layers}
    assert "conv4_3_norm_mbox_conf_5" in names and "pool6_mbox_conf_flat_5" in names
    assert "conv4_3_norm_mbox_conf" not in names
    assert "conv4_3_norm_mbox_loc" in names
    assert m.output_shape == (None, 7308, 4 + 5 + 8)


def test_other_input_size_builds():
    m = SSD300v2((256, 320, 3), num_classes=3)
    priors = priors_from_model(m)
    assert m.output_shape == (None, len(priors), 3 + 12)
    assert np.all((priors[:, :4] >= 0) & (priors[:, :4] <= 1))


def test_builder_refuses_shapes_and_class_counts_keras_would_fail_on_deep_inside():
    for shape in ((64.0, 64.0, 3), (0, 64, 3), (-64, 64, 3)):
        with pytest.raises(ValueError, match=r"height and width must be positive integers"):
            SSD300v2(shape)
    for shape in (300, "300", (64, 64, 1), (64, 64)):
        with pytest.raises(ValueError, match=r"input_shape must be \(height, width, 3\)"):
            SSD300v2(shape)
    for num_classes in (1, 2.5, "21", None):
        with pytest.raises(ValueError, match=r"an integer >= 2"):
            SSD300v2((64, 64, 3), num_classes=num_classes)


def test_normalize_matches_numpy():
    x = np.random.default_rng(1).normal(size=(2, 4, 5, 7)).astype("float32")
    layer = Normalize(20)
    out = ops.convert_to_numpy(layer(x))
    expected = 20 * x / np.linalg.norm(x, axis=-1, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert len(layer.trainable_weights) == 1 and layer.trainable_weights[0].shape == (7,)


def l2_normalize_reference(x):
    """Keras 2's ``K.l2_normalize``: ``tf.nn.l2_normalize``, restated in float64 NumPy."""
    x = np.asarray(x, np.float64)
    return x / np.sqrt(np.maximum((x * x).sum(-1, keepdims=True), 1e-12))


def test_normalize_is_keras2_l2_normalize():
    # Channel vectors of norm 5e-7, 1e-7, 3e-7 (a 3-4-5 pair), 2e-6 and 0 (divided by 1e-6 below a norm
    # of 1e-6, as tf.nn.l2_normalize does), then ordinary and large ones.
    x = np.zeros((2, 3, 2, 4), np.float32)
    x[0, 0, 0, 0] = 5e-7
    x[0, 0, 1, 1] = -1e-7
    x[0, 1, 0, :2] = [3e-7, 4e-7]
    x[0, 1, 1, 3] = 2e-6
    x[1] = np.random.default_rng(3).normal(0, [[[1]], [[100]], [[1e4]]], (3, 2, 4))
    out = ops.convert_to_numpy(Normalize(20)(x))
    np.testing.assert_allclose(out[0, 0, 0], [10, 0, 0, 0], rtol=1e-6)  # 20 * 5e-7 / 1e-6
    np.testing.assert_allclose(out[0, 0, 1], [0, -2, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(out[0, 1, 0], [6, 8, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(out[0, 1, 1], [0, 0, 0, 20], rtol=1e-6)
    np.testing.assert_array_equal(out[0, 2], 0)
    np.testing.assert_allclose(out, 20 * l2_normalize_reference(x), rtol=1e-6, atol=1e-6)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # The same operations as TensorFlow's (square, sum, maximum, rsqrt, multiply): the same bits.
        np.testing.assert_array_equal(out, tf.nn.l2_normalize(x, axis=-1).numpy() * np.float32(20))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_normalize_under_mixed_precision(policy):
    # conv4_3's activations reach hundreds over 512 channels: their squared sum overflows float16,
    # and 1e-12 is 0 in float16 (a zero vector gave NaN); the norm is taken in float32.
    x = np.zeros((1, 3, 1, 512), np.float32)
    x[0, 0] = 300.0
    x[0, 1] = np.random.default_rng(4).uniform(0, 800, 512)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = Normalize(20)
        out = ops.convert_to_numpy(ops.cast(layer(x), "float32"))
        assert keras.backend.standardize_dtype(layer(x).dtype) == policy.split("_")[1]
    finally:
        keras.mixed_precision.set_global_policy(previous)
    np.testing.assert_allclose(out, 20 * l2_normalize_reference(x), rtol=1e-2, atol=1e-3)
    np.testing.assert_array_equal(out[0, 2], 0)


def test_normalize_config_and_weight_names_are_unchanged():
    # Files written before and after this layer's arithmetic changed load both ways: the same
    # config keys and the same weight name.
    layer = Normalize.from_config({"name": "conv4_3_norm", "trainable": True, "dtype": "float32", "scale": 20.0})
    layer.build((None, 4, 4, 8))
    assert set(layer.get_config()) == {"name", "trainable", "dtype", "scale"}
    assert [w.path for w in layer.weights] == ["conv4_3_norm/conv4_3_norm_gamma"]
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.gamma), np.full(8, 20.0))


def test_priorbox_boxes_and_clip():
    # One 2x2 map on a 100x100 image, min 30, max 60, ratio 2 with flip.
    layer = PriorBox((100, 100), 30.0, max_size=60.0, aspect_ratios=[2], variances=[0.1, 0.1, 0.2, 0.2])
    out = ops.convert_to_numpy(layer(np.zeros((3, 2, 2, 8), "float32")))
    assert out.shape == (3, 2 * 2 * 4, 8)
    assert layer.aspect_ratios == [1.0, 1.0, 2.0, 0.5]
    first = out[0, :4, :4] * 100  # centre (25, 25)
    s = np.sqrt(30 * 60) / 2
    w2, h2 = 15 * np.sqrt(2), 15 / np.sqrt(2)
    np.testing.assert_allclose(first, [[10, 10, 40, 40], [25 - s, 25 - s, 25 + s, 25 + s],
                                       [25 - w2, 25 - h2, 25 + w2, 25 + h2],
                                       [25 - h2, 25 - w2, 25 + h2, 25 + w2]], rtol=1e-5)
    np.testing.assert_allclose(out[0, :, 4:], np.tile([0.1, 0.1, 0.2, 0.2], (16, 1)), rtol=1e-6)
    unclipped = generate_prior_boxes((100, 100), (1, 1), 150.0, clip=False)
    np.testing.assert_allclose(unclipped[0, :4], [-0.25, -0.25, 1.25, 1.25])
    clipped = generate_prior_boxes((100, 100), (1, 1), 150.0, clip=True)
    np.testing.assert_allclose(clipped[0, :4], [0, 0, 1, 1])
    assert PriorBox.from_config(PriorBox((100, 100), 150.0, clip=False).get_config()).clip is False


def test_layer_arguments_are_checked():
    with pytest.raises(ValueError):
        PriorBox((300, 300), 0)
    with pytest.raises(ValueError):
        PriorBox((300, 300), 60, max_size=30)
    with pytest.raises(ValueError):
        PriorBox((300, 300), 60, variances=[0.1, 0.2])
    with pytest.raises(ValueError):
        SSD300v2((300, 300))


def test_configs_round_trip():
    for layer in (Normalize(7.5, name="n"), PriorBox((300, 300), 60.0, max_size=114.0,
                                                     aspect_ratios=[2, 3], flip=False,
                                                     variances=[0.1, 0.1, 0.2, 0.2], clip=False)):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


@pytest.mark.slow
def test_saved_model_loads_in_new_process(model, tmp_path):
    path = tmp_path / "ssd.keras"
    x = np.random.default_rng(2).normal(0, 50, (1, 300, 300, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", ops.convert_to_numpy(model(x)))
    model.save(path)
    script = textwrap.dedent(f"""
        import numpy as np, keras, ssd300
        m = keras.saving.load_model({str(path)!r}, compile=False)
        y = keras.ops.convert_to_numpy(m(np.load({str(tmp_path / 'x.npy')!r})))
        np.testing.assert_array_equal(y, np.load({str(tmp_path / 'y.npy')!r}))
        assert m.get_layer('conv4_3_norm').scale == 20.0
        print('RELOADED', keras.backend.backend())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert "RELOADED" in result.stdout, result.stderr[-3000:]
