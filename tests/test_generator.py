"""The Generator, the PyDataset form, image reading and preprocessing."""

import glob
import multiprocessing
import os
import pickle
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest
from PIL import Image

from ssd300.generator import (BATCH_FILE_PREFIX, CompactBatch, Generator, SamplePipeline, SSDDataset,
                              remove_batch_files, remove_stale_batch_files)
from ssd300.errors import UserError
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


def test_loaders_refuse_what_would_fail_or_hang_at_the_first_batch(synth, util):
    root, prep, keys = synth
    images = f"{root}/JPEGImages/"
    for size in (0, -2, 2.5, "4", True):  # -2 used to loop forever without yielding
        with pytest.raises(ValueError, match=rf"^batch_size must be a positive integer, got {size!r}$"):
            Generator(prep.data, util, size, images, keys[:8], keys[8:], (64, 64))
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            SSDDataset(prep.data, util, images, keys, (64, 64), batch_size=size)
    assert Generator(prep.data, util, np.int64(4), images, keys[:8], keys[8:], (64, 64)).batch_size == 4
    with pytest.raises(ValueError, match=r"^2 validation keys have no ground truth in gt \('nope.jpg', '000001'\); "
                                         rf"keys are gt's image file names, such as '{keys[0]}'$"):
        Generator(prep.data, util, 4, images, keys[:8], ["nope.jpg", "000001"], (64, 64))
    with pytest.raises(ValueError, match=r"^5 dataset keys have no ground truth in gt \('a', 'b', 'c', \.\.\.\)"):
        SSDDataset(prep.data, util, images, list("abcde"), (64, 64))
    with pytest.raises(ValueError, match=r"^training keys must be a list of image file names, got the string"):
        Generator(prep.data, util, 4, images, keys[0], keys[8:], (64, 64))
    with pytest.raises(ValueError, match=r"^gt must map image keys to boxes .*got XML_preprocessor$"):
        Generator(prep, util, 4, images, keys[:8], keys[8:], (64, 64))
    for size in ((0, 0), (64,), 64, (64.0, 64.0)):  # (0, 0) failed in the first batch's resize
        for augment in ("original", "paper", None):
            with pytest.raises(ValueError, match=r"^image_size must be \(height, width\), two positive integers"):
                SSDDataset(prep.data, util, images, keys, size, augment=augment)
    with pytest.raises(ValueError, match=r"^hflip_prob must be a probability in \[0, 1\], got 2$"):
        Generator(prep.data, util, 4, images, keys[:8], keys[8:], (64, 64), hflip_prob=2)
    assert SSDDataset(prep.data, util, images, keys, (64, 48, 3)).pipeline.image_size == (64, 48)


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
    # An image whose header reads but whose data does not is skipped when its batch is made.
    with open(os.path.join(root, "JPEGImages", keys[0]), "rb") as f:
        jpeg = f.read()
    (tmp_path / "third.jpg").write_bytes(jpeg[:len(jpeg) // 3])
    gt["good.jpg"] = gt["third.jpg"] = prep.data[keys[0]]
    skipping = SSDDataset(gt, util, tmp_path, ["good.jpg", "third.jpg"], (300, 300),
                          batch_size=2, skip_bad_images=True)
    assert skipping.keys == ["good.jpg", "third.jpg"]
    with pytest.warns(UserWarning, match="third.jpg: not a readable image.*; image skipped"):
        x, y = skipping[0]
    assert x.shape[0] == 1 and y.shape[0] == 1


def _with_bad_images(synth):
    """``(gt, keys)``: the synthetic keys with a missing image and a text file among them."""
    root, prep, keys = synth
    gt = dict(prep.data)
    gt["missing.jpg"] = gt["../not-an-image.txt"] = prep.data[keys[0]]
    return gt, [keys[0], "missing.jpg", keys[1], "../not-an-image.txt", keys[2]]


@pytest.fixture
def text_file(synth):
    path = os.path.join(synth[0], "not-an-image.txt")
    with open(path, "w") as f:
        f.write("garbage")
    yield path
    os.unlink(path)


@pytest.mark.filterwarnings("ignore:.*cannot be read and are skipped")
def test_skip_bad_images_leaves_no_batch_empty(synth, util, text_file):
    """With batch size 1 an unreadable image alone in its batch used to give an empty batch."""
    root, prep, keys = synth
    gt, mixed = _with_bad_images(synth)
    with pytest.warns(UserWarning, match=r"2 of 5 training images cannot be read and are skipped: "
                                         r".*missing.jpg: image not found; .*not-an-image.txt: "
                                         r"not a readable image") as caught:
        ds = SSDDataset(gt, util, f"{root}/JPEGImages", mixed, (64, 64), batch_size=1, train=True,
                        skip_bad_images=True)
    assert len([w for w in caught if "cannot be read" in str(w.message)]) == 1
    assert ds.keys == [keys[0], keys[1], keys[2]] and len(ds) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left to skip while loading
        assert [ds[i][0].shape[0] for i in range(3)] == [1, 1, 1]
    # A one-image validation set, and the last partial batch.
    val = SSDDataset(gt, util, f"{root}/JPEGImages", ["missing.jpg", keys[3]], (64, 64), batch_size=4,
                     train=False, skip_bad_images=True)
    assert val.keys == [keys[3]] and len(val) == 1 and val[0][0].shape == (1, 64, 64, 3)
    # Shards and steps count the readable keys: 3 keys, batches of 2, shards of 1.
    shards = [SSDDataset(gt, util, f"{root}/JPEGImages", mixed, (64, 64), batch_size=2, seed=1,
                         drop_last=True, num_shards=2, shard_index=i, skip_bad_images=True)
              for i in range(2)]
    assert [len(s) for s in shards] == [1, 1]
    whole = SSDDataset(gt, util, f"{root}/JPEGImages", keys[:3], (64, 64), batch_size=2, seed=1,
                       drop_last=True)
    joined = np.concatenate([shards[0][0][1], shards[1][0][1]])
    np.testing.assert_array_equal(joined, whole[0][1])
    assert len(SSDDataset(gt, util, f"{root}/JPEGImages", mixed, (64, 64), batch_size=1,
                          steps_per_epoch=2, skip_bad_images=True)) == 2
    # The original Generator drops them too, so a batch of 1 never fails.
    gen = Generator(gt, util, 1, f"{root}/JPEGImages", mixed, ["missing.jpg", keys[3]], (64, 64),
                    skip_bad_images=True)
    assert gen.train_keys == keys[:3] and gen.val_keys == [keys[3]]
    assert next(gen.generate(False))[0].shape == (1, 64, 64, 3)


def test_skip_bad_images_with_no_readable_image(synth, util, text_file):
    root, prep, keys = synth
    gt, _ = _with_bad_images(synth)
    with pytest.raises(ImageError, match=r"none of the 2 validation images can be read \(first: .*missing.jpg: "
                                         r"image not found\)"):
        SSDDataset(gt, util, f"{root}/JPEGImages", ["missing.jpg", "../not-an-image.txt"], (64, 64),
                   train=False, skip_bad_images=True)


def test_an_empty_batch_is_recorded_as_the_failure(synth, util):
    """The training reports ``pipeline.failure`` instead of Keras's re-raised error."""
    root, prep, keys = synth
    gt, _ = _with_bad_images(synth)
    pipeline = SamplePipeline(gt, util, f"{root}/JPEGImages", (64, 64))
    with pytest.warns(UserWarning, match="missing.jpg: image not found; image skipped"):
        with pytest.raises(ImageError, match=r"no readable image in batch \(missing.jpg\)") as info:
            pipeline.batch(["missing.jpg"], [np.random.default_rng(0)], True, skip_bad_images=True)
    assert pipeline.failure is info.value


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


def test_batches_are_preprocess_input_of_the_loaded_images(synth, util):
    root, prep, keys = synth
    for augment in ("original", "paper", None):
        pipeline = SamplePipeline(prep.data, util, f"{root}/JPEGImages", (300, 300), augment)
        x, y = pipeline.batch(keys[:3], [np.random.default_rng(i) for i in range(3)], train=True)
        for i, key in enumerate(keys[:3]):
            image, target = pipeline.load(key, np.random.default_rng(i), train=True)
            np.testing.assert_array_equal(x[i], preprocess_input(image))
            np.testing.assert_array_equal(y[i], target)
    # Without augmentation: the resized picture, as float32.
    raw = load_image(f"{root}/JPEGImages/{keys[0]}")
    expected = np.asarray(Image.fromarray(raw).resize((300, 300), Image.BILINEAR)).astype(np.float32)
    image, _ = pipeline.load(keys[0], None, train=False)
    np.testing.assert_array_equal(image, expected)


def test_custom_augment_gets_an_array(synth, util):
    root, prep, keys = synth
    seen = []

    def shrink(image, boxes, rng):
        seen.append((type(image), image.shape))
        return np.asarray(Image.fromarray(image).resize((300, 300))), boxes

    pipeline = SamplePipeline(prep.data, util, f"{root}/JPEGImages", (300, 300), shrink)
    x, _ = pipeline.batch(keys[:1], [np.random.default_rng(0)], train=True)
    assert seen[0][0] is np.ndarray and seen[0][1][2] == 3
    np.testing.assert_array_equal(x[0], preprocess_input(pipeline.load(keys[0], None, True)[0]))


def _sideways_photo(path, upright):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees counter-clockwise: show it turned clockwise
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(path, quality=95, exif=exif)


def test_exif_orientation_follows_the_annotation_size(tmp_path, util):
    upright = np.zeros((120, 80, 3), np.uint8)
    upright[:30] = 255  # white at the top of the upright picture
    for name in ("upright_ann.jpg", "stored_ann.jpg"):
        _sideways_photo(tmp_path / name, upright)
    Image.fromarray(upright).save(tmp_path / "plain.jpg")
    box = np.array([[0.1, 0.1, 0.5, 0.5, 1, 0, 0, 0]])
    gt = {"upright_ann.jpg": box, "stored_ann.jpg": box, "plain.jpg": box}
    sizes = {"upright_ann.jpg": (80, 120), "stored_ann.jpg": (120, 80), "plain.jpg": (80, 120)}
    with pytest.warns(UserWarning, match="^1 images have EXIF orientation but their annotations "
                                         "match the stored size; using them as stored"):
        pipeline = SamplePipeline(gt, util, tmp_path, (60, 60), None, sizes=sizes)
    assert pipeline.as_stored == {"stored_ann.jpg"}

    def top_is_white(key):
        image, _ = pipeline.load(key, None, train=False)
        return image[:10].mean() > 200

    assert top_is_white("upright_ann.jpg") and top_is_white("plain.jpg")
    assert not top_is_white("stored_ann.jpg")  # kept as stored: white on the left
    # Without sizes every image is turned upright, and nothing is read up front.
    assert SamplePipeline(gt, util, tmp_path, (60, 60), None).as_stored == frozenset()
    # The dataset and the generator pass the sizes on, for their own keys.
    with pytest.warns(UserWarning, match="^1 images"):
        ds = SSDDataset(gt, util, tmp_path, sorted(gt), (60, 60), batch_size=3, sizes=sizes)
    assert ds.pipeline.as_stored == {"stored_ann.jpg"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = SSDDataset(gt, util, tmp_path, ["plain.jpg", "upright_ann.jpg"], (60, 60), sizes=sizes)
        assert ds.pipeline.as_stored == frozenset()
    with pytest.warns(UserWarning, match="^1 images"):
        gen = Generator(gt, util, 1, tmp_path, ["stored_ann.jpg"], ["plain.jpg"], (60, 60), sizes=sizes)
    assert gen.pipeline.as_stored == {"stored_ann.jpg"}


def _batch_files():
    return glob.glob(os.path.join(glob.escape(tempfile.gettempdir()), f"{BATCH_FILE_PREFIX}{os.getpid()}-*"))


def test_compact_batch_unpickles_to_the_same_arrays(synth, util, monkeypatch):
    root, prep, keys = synth
    ds = SSDDataset(prep.data, util, f"{root}/JPEGImages", keys[:8], (300, 300), batch_size=4, augment="paper")
    x, y = ds[0]
    assert 0 < (y[..., -8] == 1).sum() < 0.1 * y[..., 0].size  # a few matched priors
    batch = CompactBatch(x, y, ds.pipeline.empty_target, os.getpid())
    assert isinstance(batch, tuple) and batch[0] is x and batch[1] is y
    data = pickle.dumps(batch)
    # The images wait in a file; of the targets only the matched priors' rows travel.
    assert len(data) < y.nbytes / 20 and len(_batch_files()) == 1
    back = pickle.loads(data)
    assert not _batch_files()  # read and removed
    assert type(back) is tuple and len(back) == 2
    assert back[0].tobytes() == x.tobytes() and back[1].tobytes() == y.tobytes()
    assert back[0].shape == x.shape and back[1].shape == y.shape and back[1].dtype == y.dtype
    # Exact bit for bit, whatever the empty target: rows that differ from it
    # (here in the sign of a zero, and by a whole template) travel.
    y[0, :3, 0] = -0.0
    template = ds.pipeline.empty_target.copy()
    template[::3, 1] = 0.25
    for empty in (ds.pipeline.empty_target, template):
        back = pickle.loads(pickle.dumps(CompactBatch(x, y, empty, os.getpid())))
        assert back[1].tobytes() == y.tobytes()
    # Without a writable temporary directory the images travel in the pickle.
    monkeypatch.setattr(tempfile, "tempdir", os.path.join(str(root), "no such folder"))
    data = pickle.dumps(CompactBatch(x, y, ds.pipeline.empty_target, os.getpid()))
    assert len(data) > x.nbytes
    assert pickle.loads(data)[0].tobytes() == x.tobytes()


def test_a_batch_file_that_cannot_be_read_fails_where_the_batch_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    x = np.ones((2, 3, 4, 3), np.float32)
    y = np.zeros((2, 5, 3), np.float32)
    data = pickle.dumps(CompactBatch(x, y, y[0], os.getpid()))
    (path,) = tmp_path.iterdir()
    path.write_bytes(path.read_bytes()[:-4])  # cut short
    images, targets = pickle.loads(data)  # unpickling itself must not raise (the pool would hang)
    np.testing.assert_array_equal(targets, y)
    assert not path.exists()
    with pytest.raises(UserError, match=r"could not be read back from .*ssd300-batch-.*284 bytes of a batch of 288"):
        np.asarray(images)


def test_unread_batch_files_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 4, 3)
    y = np.zeros((1, 5, 3), np.float32)
    pickle.dumps(CompactBatch(x, y, y[0], os.getpid()))  # never unpickled
    pickle.dumps(CompactBatch(x, y, y[0], os.getpid() + 1))  # another training process's
    assert len(list(tmp_path.iterdir())) == 2
    remove_batch_files()
    assert [p.name.startswith(f"{BATCH_FILE_PREFIX}{os.getpid() + 1}-") for p in tmp_path.iterdir()] == [True]



@pytest.mark.skipif(os.name != "posix", reason="probes processes with os.kill(pid, 0)")
def test_batch_files_of_dead_training_processes_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(done.stdout)  # exited: its files are stale
    x = np.zeros((1, 2, 2, 3), np.float32)
    y = np.zeros((1, 5, 3), np.float32)
    for owner in (dead, os.getpid()):
        pickle.dumps(CompactBatch(x, y, y[0], owner))
    (tmp_path / f"{BATCH_FILE_PREFIX}notapid-x").write_bytes(b"")
    remove_stale_batch_files()
    names = sorted(p.name.split("-")[2] for p in tmp_path.iterdir())
    assert names == sorted([str(os.getpid()), "notapid"])


_WORKER = {}


def _worker_init(dataset):
    _WORKER["ds"] = dataset


def _worker_batch(index):
    batch = _WORKER["ds"][index]
    return type(batch).__name__, batch


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_dataset_in_a_worker_process_sends_the_same_batches(synth, util):
    # As model.fit's multiprocessing pool: daemon workers, batches pickled back.
    root, prep, keys = synth
    ds = SSDDataset(prep.data, util, f"{root}/JPEGImages", keys[:8], (300, 300), batch_size=4, augment="paper")
    with multiprocessing.get_context("fork").Pool(1, _worker_init, (ds,)) as pool:
        got = pool.map(_worker_batch, [0, 1])
    assert not _batch_files()
    for index, (kind, batch) in enumerate(got):
        assert kind == "CompactBatch" and type(batch) is tuple
        x, y = ds[index]  # in this process: the plain batch
        assert type(ds[index]) is tuple
        assert batch[0].tobytes() == x.tobytes() and batch[1].tobytes() == y.tobytes()
