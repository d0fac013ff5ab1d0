"""DilatedConv2D (fc6) against keras.layers.Conv2D, forward and gradient, on every backend."""

import numpy as np
import pytest

pytestmark = pytest.mark.backend

keras = pytest.importorskip("keras")
from keras import ops  # noqa: E402

from ssd300.dilated_conv import DilatedConv2D, conv_output_length, taps_are_faster  # noqa: E402


def gradients(layer, x, upstream):
    """``(output, d/dx, d/dkernel, d/dbias)`` of ``sum(layer(x) * upstream)``, as NumPy."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt)
            value = tf.reduce_sum(y * upstream)
        grads = tape.gradient(value, [xt, layer.kernel.value, layer.bias.value])
        return [y.numpy()] + [g.numpy() for g in grads]
    if backend == "jax":
        import jax

        def value(weights, x):
            y, _ = layer.stateless_call(weights, [], x)
            return (y * upstream).sum(), y

        (_, y), (dw, dx) = jax.jit(jax.value_and_grad(value, argnums=(0, 1), has_aux=True))(
            [v.value for v in layer.trainable_variables], x)
        return [np.asarray(y), np.asarray(dx)] + [np.asarray(g) for g in dw]
    import torch

    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    (y * torch.tensor(upstream)).sum().backward()
    return [ops.convert_to_numpy(y), xt.grad.numpy(), ops.convert_to_numpy(layer.kernel.value.grad),
            ops.convert_to_numpy(layer.bias.value.grad)]


def pair(filters, kernel, dilation, padding, in_channels, rng, method="taps", **kwargs):
    """A Conv2D and a DilatedConv2D with the same random weights (set from NumPy)."""
    reference = keras.layers.Conv2D(filters, kernel, dilation_rate=dilation, padding=padding, **kwargs)
    layer = DilatedConv2D(filters, kernel, dilation_rate=dilation, padding=padding, method=method, **kwargs)
    shape = (None, None, None, in_channels)
    reference.build(shape)
    layer.build(shape)
    weights = [rng.normal(size=w.shape).astype("float32") for w in reference.weights]
    reference.set_weights(weights)
    layer.set_weights(weights)
    return reference, layer


@pytest.mark.parametrize("padding, kernel, dilation, shapes", [
    # fc6 at 300x300 (19x19) and 128x128 (8x8); a 1x1 map where only the
    # centre tap lands; odd, uneven and one-dilation-high maps.
    ("same", 3, 6, [(2, 19, 19), (3, 8, 8), (1, 1, 1), (2, 7, 5), (1, 6, 12)]),
    ("valid", 3, 6, [(2, 19, 14), (1, 13, 13)]),
    # Even kernel: the odd padding pixel goes after.
    ("same", (2, 3), (2, 3), [(1, 9, 8), (2, 3, 2)]),
    ("valid", (2, 3), (3, 1), [(2, 9, 8)]),
])
def test_matches_conv2d_forward_and_gradient(padding, kernel, dilation, shapes):
    rng = np.random.default_rng(len(shapes))
    reference, layer = pair(10, kernel, dilation, padding, 12, rng)
    assert layer.uses_taps()
    for shape in shapes:
        x = rng.normal(size=shape + (12,)).astype("float32")
        out_shape = reference.compute_output_shape(x.shape)
        upstream = rng.normal(size=out_shape).astype("float32")
        want = gradients(reference, x, upstream)
        got = gradients(layer, x, upstream)
        assert got[0].shape == out_shape == layer.compute_output_shape(x.shape)
        for name, g, w in zip(("output", "d/dx", "d/dkernel", "d/dbias"), got, want):
            scale = np.abs(w).max()
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{shape} {name}")
        # Not vacuous: the kernel taps that land on the input have a gradient.
        assert np.abs(got[2]).sum() > 0


def test_fc6_shapes_at_both_sizes():
    # fc6's map is 8x8 at 128x128 and 19x19 at 300x300; 512 -> 1024 like the model.
    rng = np.random.default_rng(0)
    reference, layer = pair(1024, 3, 6, "same", 512, rng)
    for rows in (8, 19):
        x = rng.normal(size=(1, rows, rows, 512)).astype("float32")
        want = ops.convert_to_numpy(reference(x))
        got = ops.convert_to_numpy(layer(x))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_other_settings_use_the_native_convolution():
    x = np.random.default_rng(1).normal(size=(2, 11, 11, 4)).astype("float32")
    for kwargs in ({"dilation_rate": 1, "strides": 2}, {"dilation_rate": 1}, {"dilation_rate": 2, "groups": 2}):
        reference = keras.layers.Conv2D(6, 3, padding="same", **kwargs)
        layer = DilatedConv2D(6, 3, padding="same", method="taps", **kwargs)
        want = ops.convert_to_numpy(reference(x))
        layer.build(x.shape)
        layer.set_weights(reference.get_weights())
        assert not layer.uses_taps()
        np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), want, rtol=1e-5, atol=1e-5)
    assert not DilatedConv2D(6, 3, dilation_rate=6, method="native").uses_taps()
    assert DilatedConv2D(6, 3, dilation_rate=6).uses_taps() == taps_are_faster()
    # TensorFlow and JAX on the CPU (this suite's machine) take the taps; torch its own conv.
    assert taps_are_faster() == (keras.backend.backend() in ("tensorflow", "jax"))


def test_config_round_trip_and_weights_like_conv2d():
    layer = DilatedConv2D(1024, 3, dilation_rate=6, padding="same", activation="relu", name="fc6",
                          method="native", kernel_initializer="zeros")
    layer.build((None, 19, 19, 512))
    config = layer.get_config()
    assert config["method"] == "native" and config["dilation_rate"] == (6, 6)
    clone = DilatedConv2D.from_config(config)
    assert clone.get_config() == config
    assert keras.saving.get_registered_name(DilatedConv2D) == "ssd300>DilatedConv2D"
    assert [w.path for w in layer.weights] == ["fc6/kernel", "fc6/bias"]
    assert [tuple(w.shape) for w in layer.weights] == [(3, 3, 512, 1024), (1024,)]
    assert isinstance(layer, keras.layers.Conv2D)
    with pytest.raises(ValueError, match="method"):
        DilatedConv2D(4, 3, method="fast")


def test_saved_model_round_trip(tmp_path):
    inputs = keras.Input((9, 7, 3))
    outputs = DilatedConv2D(5, 3, dilation_rate=4, padding="same", name="fc6")(inputs)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(2).normal(size=(2, 9, 7, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("fc6")) is DilatedConv2D
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)), rtol=1e-6)


def test_output_length():
    assert conv_output_length(19, 3, 6, "same") == (19, 6)
    assert conv_output_length(19, 3, 6, "valid") == (7, 0)
    assert conv_output_length(8, 2, 3, "same") == (8, 1)


@pytest.mark.slow  # building SSD300 on JAX compiles each initializer
def test_ssd300_fc6_outputs_unchanged():
    from ssd300.ssd_v2 import SSD300v2

    model = SSD300v2((128, 128, 3), num_classes=21)
    fc6 = model.get_layer("fc6")
    assert isinstance(fc6, DilatedConv2D) and fc6.dilation_rate == (6, 6)
    assert [tuple(w.shape) for w in fc6.weights] == [(3, 3, 512, 1024), (1024,)]
    probe = keras.Model(model.input, [fc6.input, fc6.output])
    x = np.random.default_rng(3).normal(0, 50, (2, 128, 128, 3)).astype("float32")
    pool5, got = probe.predict_on_batch(x)  # compiled: JAX's op-by-op calls are slow
    reference = keras.layers.Conv2D(1024, 3, dilation_rate=6, padding="same", activation="relu")
    reference.build(pool5.shape)
    reference.set_weights(fc6.get_weights())
    want = ops.convert_to_numpy(reference(pool5))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
