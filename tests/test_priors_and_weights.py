"""Safe prior loading, and by-name loading of Keras 2 HDF5 weights."""

import os
import pickle
import re
import warnings

import h5py
import numpy as np
import pytest

from ssd300.errors import UserError
from ssd300.priors import PriorFileError, load_priors, save_priors
from tests.conftest import ROOT, shared_path


def test_original_priors_file_loads():
    priors = load_priors(shared_path("reference", "prior_boxes_ssd300_original.pkl"))
    assert priors.shape == (7308, 8) and priors.dtype == np.float32
    np.testing.assert_allclose(priors[:, 4:], np.tile([0.1, 0.1, 0.2, 0.2], (7308, 1)), rtol=1e-6)


def test_top_level_file_loads_with_plain_pickle():
    with open(ROOT / "prior_boxes_ssd300.pkl", "rb") as f:
        priors = pickle.load(f)
    assert priors.shape == (7308, 8)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(PriorFileError, match="evil.pkl.*refusing to load"):
        load_priors(path)
    assert not (tmp_path / "pwned_by_pickle").exists()


@pytest.mark.parametrize("content, message", [
    (pickle.dumps(np.zeros((10, 4))), r"shape \(N, 8\)"),
    (pickle.dumps([1, 2, 3]), "NumPy array"),
    (pickle.dumps(np.array(["a"] * 8).reshape(1, 8)), "numeric"),
    (pickle.dumps(np.full((2, 8), np.nan)), "NaN"),
    (b"not a pickle at all", "not a readable pickle"),
    (pickle.dumps(np.zeros((5, 8)))[:20], "not a readable pickle"),
])
def test_bad_prior_files_name_file_and_problem(tmp_path, content, message):
    path = tmp_path / "priors.pkl"
    path.write_bytes(content)
    with pytest.raises(PriorFileError, match=message) as info:
        load_priors(path)
    assert "priors.pkl" in str(info.value)


def test_missing_prior_file(tmp_path):
    with pytest.raises(PriorFileError, match="nope.pkl.*cannot read"):
        load_priors(tmp_path / "nope.pkl")


def test_save_priors_round_trip(tmp_path):
    data = np.random.default_rng(0).uniform(size=(20, 8)).astype(np.float32)
    save_priors(data, tmp_path / "p.pkl")
    np.testing.assert_array_equal(load_priors(tmp_path / "p.pkl"), data)
    assert os.listdir(tmp_path) == ["p.pkl"]


def _numpy1_spelling(data):
    """A protocol-5 array pickle as NumPy 1 writes it: ``numpy.core.numeric`` for ``numpy._core.numeric``."""
    old, new = b"\x8c\x13numpy._core.numeric", b"\x8c\x12numpy.core.numeric"  # SHORT_BINUNICODE
    assert data[2:3] == b"\x95" and data.count(old) == 1  # one FRAME: its length shrinks by one byte
    frame = int.from_bytes(data[3:11], "little") - 1
    return data[:3] + frame.to_bytes(8, "little") + data[11:].replace(old, new)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_arrays_pickled_with_any_protocol_load(tmp_path, protocol):
    rng = np.random.default_rng(protocol)
    arrays = [rng.uniform(size=(6, 8)).astype(np.float32), np.asfortranarray(rng.uniform(size=(5, 8))),
              rng.uniform(size=(8, 14))[:, ::2].T, np.arange(16, dtype=np.int16).reshape(2, 8)]
    for array in arrays:
        (tmp_path / "p.pkl").write_bytes(pickle.dumps(array, protocol=protocol))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no deprecation or cast warning either
            np.testing.assert_array_equal(load_priors(tmp_path / "p.pkl"), array.astype(np.float32))


def test_protocol_5_under_numpy_1_module_names_loads(tmp_path):
    array = np.arange(24, dtype=np.float32).reshape(3, 8) / 7
    data = _numpy1_spelling(pickle.dumps(array, protocol=5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 resolves numpy.core with a warning
        np.testing.assert_array_equal(pickle.loads(data), array)  # the edited pickle is a valid one
    (tmp_path / "p.pkl").write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(load_priors(tmp_path / "p.pkl"), array)


@pytest.mark.parametrize("content", [
    pickle.dumps(_Exploit(), protocol=pickle.HIGHEST_PROTOCOL),
    # Another function of the module that holds _frombuffer: STACK_GLOBAL, then STOP.
    b"\x80\x05\x8c\x13numpy._core.numeric\x8c\x08fromfile\x93.",
    b"\x80\x05\x8c\x12numpy.core.numeric\x8c\x0cfromfunction\x93.",
])
def test_protocol_5_allows_only_frombuffer(tmp_path, monkeypatch, content):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pkl").write_bytes(content)
    with pytest.raises(PriorFileError, match=r"evil.pkl: refusing to load .*: only a plain NumPy array"):
        load_priors(tmp_path / "evil.pkl")
    assert not (tmp_path / "pwned_by_pickle").exists()


def test_values_beyond_float32_are_refused_without_a_cast_warning(tmp_path):
    (tmp_path / "big.pkl").write_bytes(pickle.dumps(np.full((2, 8), 1e300), protocol=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(PriorFileError, match=r"big.pkl: contains values too large for float32 "
                                                 r"\(up to 1e\+300\)"):
            load_priors(tmp_path / "big.pkl")


def test_save_priors_to_a_path_that_cannot_be_written(tmp_path):
    data = np.zeros((3, 8), np.float32)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "folder").mkdir()
    cases = [(tmp_path / "folder", "it is a folder"), (tmp_path / "missing" / "p.pkl", r"No such file or directory"),
             (tmp_path / "afile" / "p.pkl", "Not a directory")]
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "locked").mkdir(mode=0o500)
        cases.append((tmp_path / "locked" / "p.pkl", "Permission denied"))
    for path, reason in cases:
        with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: cannot write the priors.*{reason}"):
            save_priors(data, path)
    assert sorted(os.listdir(tmp_path)) == sorted(["afile", "folder"] + ["locked"] * (os.geteuid() != 0))
    assert os.listdir(tmp_path / "folder") == [] and (tmp_path / "afile").read_text() == "x"


def write_keras2_weights(path, layers, full_model=False):
    """An HDF5 file in the Keras 2 layout: layer_names, weight_names, name:0 datasets."""
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if full_model else f
        root.attrs["layer_names"] = [n.encode() for n in layers]
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.0.6"
        for name, arrays in layers.items():
            g = root.create_group(name)
            weight_names = [f"{name}/param_{i}:0".encode() for i in range(len(arrays))]
            g.attrs["weight_names"] = weight_names
            for wn, a in zip(weight_names, arrays):
                g.create_dataset(wn.decode(), data=a)


@pytest.mark.slow
@pytest.mark.parametrize("full_model", [False, True])
def test_keras2_weights_load_by_name(tmp_path, full_model):
    from ssd300.ssd_v2 import SSD300v2
    from ssd300.weights import load_weights_by_name

    source = SSD300v2((300, 300, 3), num_classes=21)
    rng = np.random.default_rng(0)
    layers = {}
    for layer in source.layers:
        layers[layer.name] = [rng.normal(0, 0.01, w.shape).astype("float32") for w in layer.weights]
    layers["some_old_layer"] = [np.zeros(3, "float32")]
    path = tmp_path / "weights_SSD300.hdf5"
    write_keras2_weights(path, layers, full_model)

    target = SSD300v2((300, 300, 3), num_classes=21)
    report = load_weights_by_name(target, str(path))
    assert not report.missing and not report.skipped
    assert report.unused == ["some_old_layer"]
    for name in ("conv1_1", "conv4_3_norm", "fc6", "pool6_mbox_conf_flat", "conv8_2_mbox_loc"):
        for got, want in zip(target.get_layer(name).get_weights(), layers[name]):
            np.testing.assert_array_equal(got, want)

    # The originals' layout: 21 classes, heads without a suffix.
    from ssd300.voc import VOC_CLASSES
    from ssd300.weights import WeightFileError, check_class_count, num_classes_in_file

    assert num_classes_in_file(str(path)) == 21 and check_class_count(str(path), VOC_CLASSES) == 21
    with pytest.raises(WeightFileError, match="holds class heads for 20 classes"):
        check_class_count(str(path), VOC_CLASSES[:3])

    other = SSD300v2((300, 300, 3), num_classes=4)
    before = other.get_layer("fc7_mbox_conf_4").get_weights()[0].copy()
    report = load_weights_by_name(other, str(path))
    assert "fc7_mbox_conf_4" in report.missing and "pool6_mbox_conf_flat_4" in report.missing
    assert "fc7_mbox_loc" in report.loaded
    np.testing.assert_array_equal(other.get_layer("fc7_mbox_conf_4").get_weights()[0], before)
    assert "left at their initial values" in str(report)


def test_shape_mismatch_is_skipped_and_reported(tmp_path):
    import keras

    from ssd300.weights import load_weights_by_name

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense_a"),
                              keras.layers.Dense(2, name="dense_b")])
    path = tmp_path / "w.h5"
    write_keras2_weights(path, {"dense_a": [np.ones((4, 3), "float32"), np.ones(3, "float32")],
                                "dense_b": [np.ones((5, 2), "float32"), np.ones(2, "float32")]})
    report = load_weights_by_name(model, str(path))
    assert report.loaded == ["dense_a"]
    assert "shapes differ" in report.skipped["dense_b"]
    np.testing.assert_array_equal(model.get_layer("dense_a").get_weights()[0], np.ones((4, 3)))


def test_bad_weight_files(tmp_path):
    from ssd300.weights import WeightFileError, read_weight_file

    with pytest.raises(WeightFileError, match="missing.h5: weights file not found"):
        read_weight_file(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(WeightFileError, match="junk.h5: not a readable HDF5"):
        read_weight_file(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.create_group("something")
    with pytest.raises(WeightFileError, match="empty.h5: HDF5 file holds no Keras weights"):
        read_weight_file(tmp_path / "empty.h5")


def test_own_weights_round_trip_by_name(tmp_path):
    import keras

    from ssd300.weights import WeightFileError, load_weights_by_name, save_weights_by_name

    def build(units=3):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, name="dense_a"),
                                 keras.layers.Dense(2, name="dense_b")])

    a = build()
    save_weights_by_name(a, tmp_path / "own.h5")
    b = build(units=3)
    report = load_weights_by_name(b, str(tmp_path / "own.h5"))
    assert report.loaded == ["dense_a", "dense_b"]
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)
    assert sorted(os.listdir(tmp_path)) == ["own.h5"]
    a.save_weights(tmp_path / "k3.weights.h5")
    with pytest.raises(WeightFileError, match="Keras 3 .weights.h5"):
        load_weights_by_name(b, str(tmp_path / "k3.weights.h5"))


def test_vgg16_layer_map():
    from ssd300.weights import vgg16_layer_map

    m = vgg16_layer_map()
    assert len(m) == 13 and m["block1_conv1"] == "conv1_1" and m["block5_conv3"] == "conv5_3"


def ssd_class_heads(num_classes, suffix=True, channels=8):
    """``{layer: [kernel, bias]}`` of SSD300's six class heads, small input channels."""
    name = (lambda base: f"{base}_{num_classes}") if suffix else (lambda base: base)
    heads = {}
    for source, priors in (("conv4_3_norm", 3), ("fc7", 6), ("conv6_2", 6), ("conv7_2", 6), ("conv8_2", 6)):
        heads[name(f"{source}_mbox_conf")] = [np.zeros((3, 3, channels, priors * num_classes), "float32"),
                                              np.zeros(priors * num_classes, "float32")]
    heads[name("pool6_mbox_conf_flat")] = [np.zeros((channels, 6 * num_classes), "float32"),
                                           np.zeros(6 * num_classes, "float32")]
    return heads


def test_class_count_is_read_from_the_heads():
    from ssd300.weights import check_class_count, class_heads_in_file, num_classes_in_file

    # 3 priors per location on conv4_3_norm, 6 elsewhere: 15 and 30 outputs for 5 classes.
    heads = ssd_class_heads(5)
    assert class_heads_in_file(heads) == {name: 5 for name in heads}
    assert num_classes_in_file(heads) == 5 and check_class_count(heads, ("a", "b", "c", "d")) == 5
    assert num_classes_in_file(ssd_class_heads(21, suffix=False)) == 21
    assert num_classes_in_file({"conv1_1": [np.zeros((3, 3, 3, 64))]}) is None


@pytest.mark.parametrize("layers, message", [
    ({**ssd_class_heads(5), **ssd_class_heads(3)}, "holds class heads for 3 and 5 classes"),
    ({k: v for k, v in ssd_class_heads(5).items() if not k.startswith("fc7")},
     "lacks the class heads fc7_mbox_conf_5 of a 5-class model"),
    (ssd_class_heads(5, suffix=False), "conv4_3_norm_mbox_conf holds 5 classes, but a head of that name "
                                       "belongs to a 21-class model"),
    ({"conv1_1": [np.zeros((3, 3, 3, 64))], "fc7": [np.zeros((1, 1, 8, 8))]},
     "holds no SSD300 class heads .*layers in the file: conv1_1, fc7"),
    ({"dense": [np.zeros((4, 3))]}, "holds no layer of SSD300; layers in the file: dense"),
    ({"fc7_mbox_conf_5": [np.zeros((3, 3, 8, 31))]}, "fc7_mbox_conf_5 has 31 outputs, not a multiple of its 6"),
])
def test_files_that_cannot_detect_for_these_classes(layers, message):
    from ssd300.weights import WeightFileError, check_class_count

    with pytest.raises(WeightFileError, match=rf"^w.h5:? .*{message}"):
        check_class_count(layers, ("a", "b", "c", "d"), name="w.h5")


def test_weight_file_naming_missing_entries(tmp_path):
    from ssd300.weights import WeightFileError, read_weight_file

    with h5py.File(tmp_path / "broken.h5", "w") as f:
        f.attrs["layer_names"] = [b"conv1_1", b"conv1_2"]
        f.create_group("conv1_1").attrs["weight_names"] = [b"conv1_1/kernel:0"]
    with pytest.raises(WeightFileError, match=r"broken.h5: broken Keras weights file \(KeyError"):
        read_weight_file(tmp_path / "broken.h5")
