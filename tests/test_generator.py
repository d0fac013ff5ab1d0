"""The Generator, the PyDataset form, image reading and preprocessing."""


import numpy as np
import pytest
from PIL import Image

from ssd300.generator import Generator, SamplePipeline, SSDDataset
from ssd300.image_io import ImageError, load_image, preprocess_input
from ssd300.ssd_utils import BBoxUtility
from ssd300.synth import make_synthetic_voc
from ssd300.voc import XML_preprocessor, read_split


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = make_synthetic_voc(tmp_path_factory.mktemp("data") / "synth", images=12, seed=3)
    prep = XML_preprocessor(f"{root}/Annotations/")
    keys = sorted(prep.data)
    return root, prep, keys


@pytest.fixture(scope="module")
def util(priors):
    return BBoxUtility(5, priors)


def test_generator_batches(synth, util):
    root, prep, keys = synth
    gen = Generator(prep.data, util, 4, f"{root}/JPEGImages/", keys[:8], keys[8:], (300, 300), seed=0)
    x, y = next(gen.generate(train=True))
    assert x.shape == (4, 300, 300, 3) and x.dtype == np.float32
    assert y.shape == (4, 7308, 4 + 5 + 8) and y.dtype == np.float32
    assert np.all(y[:, :, 4:9].sum(-1) == 1)
    xv, yv = next(gen.generate(train=False))
    assert xv.shape == (4, 300, 300, 3)
    # The same seed gives the same batches.
    gen2 = Generator(prep.data, util, 4, f"{root}/JPEGImages", keys[:8], keys[8:], (300, 300), seed=0)
    assert np.array_equal(next(gen2.generate(True))[0], x)


def test_targets_equal_assign_boxes_of_transformed_boxes(synth, util):
    root, prep, keys = synth
    pipeline = SamplePipeline(prep.data, util, f"{root}/JPEGImages", (300, 300), "paper")
    for key in keys[:4]:
        image, target = pipeline.load(key, np.random.default_rng(11), train=True)
        raw = load_image(f"{root}/JPEGImages/{key}")
        aug_image, boxes = pipeline.augment(raw, prep.data[key], np.random.default_rng(11))
        np.testing.assert_array_equal(image, aug_image)
        np.testing.assert_allclose(target, util.assign_boxes(boxes), atol=1e-6)


def test_preprocess_input_matches_keras():
    keras = pytest.importorskip("keras")
    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 4, 3)).astype(np.float32)
    expected = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode="caffe")
    np.testing.assert_allclose(preprocess_input(x), np.asarray(expected), rtol=1e-6)


def test_dataset_length_partial_batch_and_seed(synth, util):
    root, prep, keys = synth
    ds = SSDDataset(prep.data, util, f"{root}/JPEGImages", keys[:10], (300, 300), batch_size=4, seed=7)
    assert len(ds) == 3
    assert ds[2][0].shape[0] == 2  # the last partial batch
    assert len(SSDDataset(prep.data, util, f"{root}/JPEGImages", keys[:10], (300, 300),
                          batch_size=4, drop_last=True)) == 2
    again = SSDDataset(prep.data, util, f"{root}/JPEGImages", keys[:10], (300, 300), batch_size=4, seed=7)
    np.testing.assert_array_equal(ds[0][0], again[0][0])
    np.testing.assert_array_equal(ds[0][1], again[0][1])
    first_order = ds._order()
    ds.on_epoch_end()
    assert not np.array_equal(first_order, ds._order())
    with pytest.raises(IndexError):
        ds[3]
    val = SSDDataset(prep.data, util, f"{root}/JPEGImages", keys[:10], (300, 300), batch_size=4, train=False)
    seen = np.concatenate([val[i][1] for i in range(len(val))])
    assert seen.shape[0] == 10


def test_image_modes_become_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 200)).save(tmp_path / "deep.png")
    for name in ("gray.png", "palette.png", "rgba.png", "cmyk.jpg", "deep.png"):
        img = load_image(tmp_path / name)
        assert img.shape == (20, 30, 3) and img.dtype == np.uint8, name
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), rgb)


def test_bad_images_name_the_file(tmp_path, synth, util):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ImageError, match="broken.jpg: not a readable image"):
        load_image(tmp_path / "broken.jpg")
    with pytest.raises(ImageError, match="missing.jpg: image not found"):
        load_image(tmp_path / "missing.jpg")
    good = np.zeros((10, 10, 3), np.uint8)
    Image.fromarray(good).save(tmp_path / "good.jpg")
    data = tmp_path / "half.jpg"
    data.write_bytes((tmp_path / "good.jpg").read_bytes()[:60])
    with pytest.raises(ImageError, match="half.jpg"):
        load_image(data)

    root, prep, keys = synth
    gt = dict(prep.data)
    gt["missing.jpg"] = prep.data[keys[0]]
    ds = SSDDataset(gt, util, f"{root}/JPEGImages", [keys[0], "missing.jpg"], (300, 300), batch_size=2)
    with pytest.raises(ImageError, match="missing.jpg: image not found"):
        ds[0]
    skipping = SSDDataset(gt, util, f"{root}/JPEGImages", [keys[0], "missing.jpg"], (300, 300),
                          batch_size=2, skip_bad_images=True)
    with pytest.warns(UserWarning, match="missing.jpg: image not found; image skipped"):
        x, y = skipping[0]
    assert x.shape[0] == 1 and y.shape[0] == 1


def test_synthetic_dataset_is_deterministic(tmp_path):
    a = make_synthetic_voc(tmp_path / "a", images=6, seed=1)
    b = make_synthetic_voc(tmp_path / "b", images=6, seed=1)
    for sub in ("Annotations/000003.xml", "JPEGImages/000003.jpg", "ImageSets/Main/test.txt"):
        assert (tmp_path / "a" / sub).read_bytes() == (tmp_path / "b" / sub).read_bytes()
    assert read_split(a, "trainval") == read_split(b, "trainval")
    assert len(read_split(a, "trainval")) + len(read_split(a, "test")) == 6
    prep = XML_preprocessor(f"{a}/Annotations")
    assert prep.classes == ("circle", "square", "triangle", "cross")
    assert all(len(v) >= 1 for v in prep.data.values())
    with pytest.raises(FileExistsError):
        make_synthetic_voc(a, images=6)


def test_synthetic_boxes_are_exact():
    from ssd300.synth import synthetic_image

    checked = 0
    for seed in range(5):
        img, objects, colours = synthetic_image(np.random.default_rng([9, seed]))
        pixels = np.asarray(img)
        for (_, x0, y0, x1, y1), colour in zip(objects, colours):
            shape = np.all(pixels == colour, axis=-1)
            # 1-based inclusive: rows y0-1 .. y1-1 and columns x0-1 .. x1-1 hold the shape.
            inside = shape[y0 - 1:y1, x0 - 1:x1]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            assert inside.sum() == shape[max(0, y0 - 3):y1 + 2, max(0, x0 - 3):x1 + 2].sum()
            checked += 1
    assert checked >= 5
