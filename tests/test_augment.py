"""Augmentations keep boxes consistent with pixels; flips and crops are exact."""

import numpy as np
import pytest
from PIL import Image

from ssd300.augment import (OriginalAugmentation, PaperAugmentation, adjust_brightness,
                            adjust_contrast, adjust_saturation, centres_inside, crop, expand,
                            horizontal_flip, lighting_noise, vertical_flip)
from ssd300.image_io import preprocess_input
from tests.conftest import random_boxes, shared_path
from tests.reference import iou_one

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)


def painted_image(width=480, height=360):
    """Black picture with a red, a green and a blue rectangle; their normalised boxes."""
    pixel_boxes = np.array([[40, 30, 200, 150], [260, 60, 420, 300], [100, 200, 230, 340]])
    img = np.zeros((height, width, 3), np.uint8)
    for (x0, y0, x1, y1), c in zip(pixel_boxes, COLOURS):
        img[y0:y1, x0:x1] = c
    boxes = pixel_boxes / np.array([width, height, width, height], float)
    onehot = np.eye(3)
    return img, np.concatenate([boxes, onehot], axis=1)


def found_boxes(image, boxes):
    """Where each box's colour is in the image, normalised, by its one-hot column."""
    h, w = image.shape[:2]
    out = {}
    for row in boxes:
        c = int(np.argmax(row[4:]))
        channel = image[..., c].astype(float)
        others = np.delete(image, c, axis=2).astype(float).max(-1)
        ys, xs = np.nonzero((channel > 128) & (others < 100))
        out[c] = np.array([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h])
    return out


@pytest.mark.parametrize("policy", [
    OriginalAugmentation((300, 300), saturation_var=0, brightness_var=0, contrast_var=0, lighting_std=0),
    PaperAugmentation((300, 300), photometric=False),
])
def test_boxes_follow_the_pixels(policy):
    image, boxes = painted_image()
    seen_fewer = 0
    for seed in range(40):
        out, out_boxes = policy(image, boxes, np.random.default_rng(seed))
        assert out.shape == (300, 300, 3) and out.dtype == np.float32
        seen_fewer += len(out_boxes) < 3
        found = found_boxes(out, out_boxes)
        for row in out_boxes:
            c = int(np.argmax(row[4:]))
            # Bilinear resizing blurs an edge by about a pixel of the larger image.
            np.testing.assert_allclose(found[c], row[:4], atol=2.0 / 300,
                                       err_msg=f"seed {seed}, colour {c}")
    if isinstance(policy, PaperAugmentation):
        assert seen_fewer > 0  # the crops do drop boxes


def test_flips_are_exact():
    image, boxes = painted_image()
    flipped, fboxes = horizontal_flip(image, boxes)
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    np.testing.assert_allclose(fboxes[:, [0, 2]], 1 - boxes[:, [2, 0]])
    np.testing.assert_array_equal(fboxes[:, 1::2][:, :2], boxes[:, [1, 3]])
    assert found_boxes(flipped, fboxes)[0].round(6).tolist() == fboxes[0, :4].round(6).tolist()
    vflipped, vboxes = vertical_flip(image, boxes)
    np.testing.assert_array_equal(vflipped, image[::-1])
    np.testing.assert_allclose(vboxes[:, [1, 3]], 1 - boxes[:, [3, 1]])
    back, bboxes = horizontal_flip(*horizontal_flip(image, boxes))
    np.testing.assert_array_equal(back, image)
    np.testing.assert_allclose(bboxes, boxes)


def test_crop_keeps_exactly_boxes_with_centre_inside():
    image = np.zeros((100, 200, 3), np.uint8)
    boxes = np.array([
        [0.10, 0.10, 0.30, 0.30, 1],  # centre (0.2, 0.2): inside
        [0.45, 0.40, 0.95, 0.90, 2],  # centre (0.7, 0.65): outside (x)
        [0.00, 0.50, 0.40, 0.70, 3],  # centre (0.2, 0.6): inside, clipped on the left
        [0.20, 0.00, 0.60, 0.20, 4],  # centre (0.4, 0.1): outside (y)
    ])
    out, kept = crop(image, boxes, x=20, y=10, w=100, h=80)  # x 0.1-0.6, y 0.1-0.9
    assert out.shape == (80, 100, 3)
    assert kept[:, 4].tolist() == [1, 3]
    np.testing.assert_allclose(kept[0, :4], [0, 0, 0.4, 0.25])
    np.testing.assert_allclose(kept[1, :4], [0, 0.5, 0.6, 0.75])


def test_expand_places_image_and_boxes():
    image, boxes = painted_image(100, 50)
    out, eboxes = expand(image, boxes, 2.0, left=30, top=10)
    assert out.shape == (100, 200, 3)
    np.testing.assert_array_equal(out[10:60, 30:130], image)
    assert tuple(out[0, 0]) == (124, 117, 104)
    np.testing.assert_allclose(eboxes[:, 0], (boxes[:, 0] * 100 + 30) / 200)
    np.testing.assert_allclose(eboxes[:, 3], (boxes[:, 3] * 50 + 10) / 100)


def test_photometric_known_values():
    rgb = np.array([[[200.0, 100.0, 0.0], [10.0, 20.0, 30.0]]], np.float32)
    gray = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(adjust_saturation(rgb, 1.0), rgb)
    np.testing.assert_allclose(adjust_saturation(rgb, 0.0), np.repeat(gray[..., None], 3, -1), rtol=1e-6)
    np.testing.assert_allclose(adjust_brightness(rgb, 1.5), np.clip(rgb * 1.5, 0, 255))
    np.testing.assert_allclose(adjust_contrast(rgb, 0.0), np.full_like(rgb, gray.mean()), rtol=1e-6)
    np.testing.assert_allclose(lighting_noise(rgb, np.zeros(3)), rgb, atol=1e-4)


def test_brightness_uses_its_own_variance():
    # The original drew brightness with saturation_var; with saturation_var=0
    # and brightness_var=0.5 the factor must still vary in [0.5, 1.5].
    policy = OriginalAugmentation((8, 8), saturation_var=0, brightness_var=0.5, contrast_var=0,
                                  lighting_std=0, hflip_prob=0, vflip_prob=0, do_crop=False)
    image = np.full((8, 8, 3), 100, np.uint8)
    values = [policy(image, np.zeros((0, 5)), np.random.default_rng(s))[0][0, 0, 0] for s in range(50)]
    assert min(values) < 60 and max(values) > 140


def test_seeded_augmentation_is_reproducible():
    image, boxes = painted_image()
    for policy in (OriginalAugmentation(), PaperAugmentation()):
        a = policy(image, boxes, np.random.default_rng(5))
        b = policy(image, boxes, np.random.default_rng(5))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


# The policies as the step-by-step computation on (H, W, 3) arrays (before the
# planar, pre-drawn implementation), written plainly: the same draws in the
# same order, float32 colour steps on interleaved arrays, the lighting
# covariance by np.cov in float64 (the originals' formula), the sequential
# min-IoU sampler, and Pillow's HSV conversion.

def _resize(image, size):
    if image.shape[:2] == size:
        return image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
        size[::-1], Image.BILINEAR, reducing_gap=3.0))


def reference_original(image, boxes, rng, image_size=(300, 300), var=0.5, lighting_std=0.5,
                       hflip_prob=0.5, vflip_prob=0.5, lighting_sign=1.0):
    img_h, img_w = image.shape[:2]
    area = (rng.random() * 0.25 + 0.75) * img_w * img_h
    ratio = rng.random() * (4 / 3 - 3 / 4) + 3 / 4
    w, h = np.round(np.sqrt(area * ratio)), np.round(np.sqrt(area / ratio))
    if rng.random() < 0.5:
        w, h = h, w
    w, h = int(max(1, min(w, img_w))), int(max(1, min(h, img_h)))
    x, y = int(rng.random() * (img_w - w)), int(rng.random() * (img_h - h))
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (x / img_w < cx) & (cx < (x + w) / img_w) & (y / img_h < cy) & (cy < (y + h) / img_h)
    boxes = boxes[inside].copy()
    boxes[:, [0, 2]] = np.clip((boxes[:, [0, 2]] - x / img_w) / (w / img_w), 0, 1)
    boxes[:, [1, 3]] = np.clip((boxes[:, [1, 3]] - y / img_h) / (h / img_h), 0, 1)
    rgb = _resize(image[y:y + h, x:x + w], image_size).astype(np.float32)
    gray = np.array([0.299, 0.587, 0.114], np.float32)
    for op in rng.permutation(3):
        a = np.float32(2 * rng.random() * var + 1 - var)
        if op == 0:
            rgb = np.clip(rgb * a + (np.float32(1 - a) * (rgb @ gray))[..., None], 0, 255)
        elif op == 1:
            rgb = np.clip(rgb * a, 0, 255)
        else:
            rgb = np.clip(rgb * a + np.float32((1 - a) * (rgb @ gray).mean()), 0, 255)
    cov = np.cov(rgb.reshape(-1, 3).astype(np.float64) / 255.0, rowvar=False)
    eigval, eigvec = np.linalg.eigh(cov)
    shift = lighting_sign * eigvec.dot(eigval * rng.standard_normal(3) * lighting_std) * 255
    rgb = np.clip(rgb + shift.astype(np.float32), 0, 255)
    if rng.random() < hflip_prob:
        rgb, boxes = rgb[:, ::-1], boxes.copy()
        boxes[:, [0, 2]] = 1 - boxes[:, [2, 0]]
    if rng.random() < vflip_prob:
        rgb, boxes = rgb[::-1], boxes.copy()
        boxes[:, [1, 3]] = 1 - boxes[:, [3, 1]]
    return rgb, boxes


def reference_sample_crop(img_w, img_h, boxes, rng, max_trials=50):
    if len(boxes) == 0:
        return None
    min_iou = PaperAugmentation.MIN_IOUS[rng.integers(7)]
    if min_iou is None:
        return None
    for _ in range(max_trials):
        w = rng.uniform(0.3 * img_w, img_w)
        h = rng.uniform(0.3 * img_h, img_h)
        if not 0.5 <= h / w <= 2.0:
            continue
        x = int(rng.uniform(0, img_w - w))
        y = int(rng.uniform(0, img_h - h))
        w, h = max(1, int(w)), max(1, int(h))
        rect = np.array([x / img_w, y / img_h, (x + w) / img_w, (y + h) / img_h])
        if iou_one(rect, boxes[:, :4]).max() < min_iou:
            continue
        cx, cy = 0.5 * (boxes[:, 0] + boxes[:, 2]), 0.5 * (boxes[:, 1] + boxes[:, 3])
        if not np.any((rect[0] < cx) & (cx < rect[2]) & (rect[1] < cy) & (cy < rect[3])):
            continue
        return x, y, w, h
    return None


def reference_paper(image, boxes, rng, image_size=(300, 300)):
    img_h, img_w = image.shape[:2]
    cw, ch, left, top = img_w, img_h, 0, 0
    if rng.random() < 0.5:
        ratio = rng.uniform(1, 4)
        left, top = int(rng.uniform(0, img_w * ratio - img_w)), int(rng.uniform(0, img_h * ratio - img_h))
        cw, ch = int(img_w * ratio), int(img_h * ratio)
        boxes = boxes.copy()
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] * img_w + left) / cw
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] * img_h + top) / ch
    canvas = np.empty((ch, cw, 3), np.uint8)
    canvas[...] = (124, 117, 104)
    canvas[top:top + img_h, left:left + img_w] = image
    window = reference_sample_crop(cw, ch, boxes, rng)
    if window is not None:
        x, y, w, h = window
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (x / cw < cx) & (cx < (x + w) / cw) & (y / ch < cy) & (cy < (y + h) / ch)
        boxes = boxes[inside].copy()
        boxes[:, [0, 2]] = np.clip((boxes[:, [0, 2]] - x / cw) / (w / cw), 0, 1)
        boxes[:, [1, 3]] = np.clip((boxes[:, [1, 3]] - y / ch) / (h / ch), 0, 1)
        canvas = canvas[y:y + h, x:x + w]
    rgb = _resize(canvas, image_size).astype(np.float32)
    if rng.random() < 0.5:
        rgb = np.clip(rgb + np.float32(rng.uniform(-32, 32)), 0, 255)
    contrast_first = rng.random() < 0.5
    contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    if contrast_first and contrast is not None:
        rgb = np.clip(rgb * np.float32(contrast), 0, 255)
    saturation = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    hue = rng.uniform(-18, 18) if rng.random() < 0.5 else None
    if saturation is not None or hue is not None:
        hsv = np.asarray(Image.fromarray(rgb.astype(np.uint8)).convert("HSV")).astype(np.float32)
        if saturation is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
        if hue is not None:
            hsv[..., 0] = (hsv[..., 0] + hue * 255.0 / 360.0) % 256
        rgb = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")).astype(np.float32)
    if not contrast_first and contrast is not None:
        rgb = np.clip(rgb * np.float32(contrast), 0, 255)
    if rng.random() < 0.5:
        rgb, boxes = rgb[:, ::-1], boxes.copy()
        boxes[:, [0, 2]] = 1 - boxes[:, [2, 0]]
    return rgb, boxes


#: The original policy's pixels may differ from the reference's by the order
#: of float32 sums (the luma mean, the colour covariance): at most this many
#: levels out of 255. The paper's policy gives the same bytes.
ORIGINAL_ATOL = 0.01


def assert_same_as_reference(image, boxes, seed, either_lighting_sign=False):
    """Both policies against their references; ``either_lighting_sign``: a gray picture, whose
    colour covariance has rank 1, so that its principal component's sign (LAPACK's choice) is
    decided by the last bits of the covariance, which BLAS kernels round differently."""
    for policy, reference, atol in ((OriginalAugmentation(), reference_original, ORIGINAL_ATOL),
                                    (PaperAugmentation(), reference_paper, 0)):
        out, out_boxes = policy(image, boxes, np.random.default_rng(seed))
        ref, ref_boxes = reference(image, boxes, np.random.default_rng(seed))
        if either_lighting_sign and reference is reference_original:
            flipped, _ = reference(image, boxes, np.random.default_rng(seed), lighting_sign=-1.0)
            assert not np.allclose(flipped, ref, rtol=0, atol=atol), f"seed {seed}: no lighting to flip"
            if np.abs(out - flipped).max() < np.abs(out - ref).max():
                ref = flipped
        np.testing.assert_array_equal(out_boxes, ref_boxes, err_msg=f"seed {seed}")
        np.testing.assert_allclose(out, ref, rtol=0, atol=atol, err_msg=f"seed {seed}")
        # The Caffe input written in place is preprocess_input of the same numbers.
        slot = np.empty_like(out)
        policy(image, boxes, np.random.default_rng(seed), out=slot, caffe=True)
        np.testing.assert_array_equal(slot, preprocess_input(out))


def test_policies_equal_the_step_by_step_computation():
    image, boxes = painted_image()
    noisy = np.clip(image + np.random.default_rng(0).integers(0, 60, image.shape), 0, 255).astype(np.uint8)
    # A gray picture stays gray through the colour steps (and the lighting).
    gray = np.repeat(noisy[..., :1], 3, axis=2)
    for seed in range(20):
        assert_same_as_reference(noisy, boxes, seed)
        assert_same_as_reference(gray, boxes, seed, either_lighting_sign=True)
        out, _ = OriginalAugmentation()(gray, boxes, np.random.default_rng(seed))
        np.testing.assert_array_equal(out[..., 1:], out[..., :2])


@pytest.mark.slow
def test_policies_equal_the_step_by_step_computation_on_photos():
    folder = shared_path("voc2007_roboflow_coco", "valid")
    names = sorted(p.name for p in folder.glob("*.jpg"))
    # 60 photos and three black-and-white ones (VOC 004215, 005718, 007245).
    names = names[:60] + [n for n in names if n.startswith(("004215_", "005718_", "007245_"))]
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        image = np.asarray(Image.open(folder / name).convert("RGB"))
        boxes = np.concatenate([random_boxes(rng, 1 + i % 5), np.eye(3)[rng.integers(3, size=1 + i % 5)]], 1)
        assert_same_as_reference(image, boxes, seed=i)


def test_sampler_draws_as_the_sequential_loop():
    policy = PaperAugmentation()
    rng = np.random.default_rng(1)
    taken = 0
    for seed in range(300):
        boxes = random_boxes(rng, 1 + seed % 6)
        size = (int(rng.integers(50, 2000)), int(rng.integers(50, 2000)))
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        window = policy.sample_crop(*size, boxes, a)
        assert window == reference_sample_crop(*size, boxes, b), seed
        assert a.random() == b.random()  # the generator is left where the loop leaves it
        taken += window is not None
    assert 50 < taken < 300


def test_vectorised_saturation_contrast_lighting_match_interleaved():
    rgb = np.random.default_rng(3).uniform(0, 255, (40, 50, 3)).astype(np.float32)
    planar = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    for name, planar_out, interleaved in (
            ("saturation", adjust_saturation(planar, 1.3, axis=0), adjust_saturation(rgb, 1.3)),
            ("contrast", adjust_contrast(planar, 0.7, axis=0), adjust_contrast(rgb, 0.7)),
            ("lighting", lighting_noise(planar, np.array([0.5, -1, 2]), axis=0),
             lighting_noise(rgb, np.array([0.5, -1, 2])))):
        np.testing.assert_allclose(planar_out.transpose(1, 2, 0), interleaved, atol=2e-3, err_msg=name)
    # In place: the planes given as out are the result.
    same = planar.copy()
    assert adjust_saturation(same, 0.5, axis=0, out=same) is same


def test_centre_rule_is_shared():
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9]])
    rects = np.array([[0.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.8, 0.8], [0.7, 0.0, 1.0, 0.2]])
    np.testing.assert_array_equal(centres_inside(boxes, rects),
                                  [[True, False, False], [False, True, False]])
    # A centre on the edge is outside (strict), for crops and the sampler alike.
    assert not centres_inside(np.array([[0.1, 0.1, 0.3, 0.3]]), [[0.2, 0.0, 1.0, 1.0]]).any()


def test_resized_canvas_window_equals_resizing_the_whole_window():
    from ssd300.augment import canvas_window, resized_canvas_window
    from ssd300.image_io import resize_pil

    rng = np.random.default_rng(4)
    shrunk_by_blocks = 0
    for i in range(150):
        image = Image.fromarray(rng.integers(0, 256, (int(rng.integers(5, 90)), int(rng.integers(5, 90)), 3),
                                             dtype=np.uint8))
        ratio = rng.uniform(1, 12)
        canvas_w, canvas_h = int(image.width * ratio), int(image.height * ratio)
        left, top = int(rng.uniform(0, canvas_w - image.width)), int(rng.uniform(0, canvas_h - image.height))
        w, h = max(1, int(rng.uniform(0.1, 1) * canvas_w)), max(1, int(rng.uniform(0.1, 1) * canvas_h))
        window = (int(rng.uniform(0, canvas_w - w)), int(rng.uniform(0, canvas_h - h)), w, h)
        size = (int(rng.integers(8, 40)), int(rng.integers(8, 40)))
        expected = resize_pil(canvas_window(image, left, top, window), size)
        got = resized_canvas_window(image, left, top, window, size)
        assert got.size == expected.size and got.tobytes() == expected.tobytes(), (i, window, size)
        shrunk_by_blocks += w >= 6 * size[1] or h >= 6 * size[0]
    assert shrunk_by_blocks > 30


@pytest.mark.parametrize("order_known", [True, False])
def test_zoomed_out_photo_canvases_resize_to_pillows_bytes(monkeypatch, order_known):
    """Photo-sized canvases wider and much taller than the output, resized a pass at a time in
    the order this Pillow uses (rows first; columns first when the height shrinks much more,
    from Pillow 13 on) or, with the order unknown, whole: the bytes of resizing the window."""
    from ssd300 import augment
    from ssd300.image_io import resize_pil

    order = augment._probe_pass_order()
    assert order in ("rows", "shrink")  # this Pillow's order is recognised: the fast path is on
    monkeypatch.setattr(augment, "_PASS_ORDER", [order if order_known else None])
    rng = np.random.default_rng(8)
    image = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
    columns_first = 0
    for canvas_w, canvas_h in ((1250, 940), (600, 1800), (1900, 700), (2000, 1500)):
        left, top = int(rng.integers(0, canvas_w - 500)), int(rng.integers(0, canvas_h - 375))
        for window in ((0, 0, canvas_w, canvas_h), (canvas_w // 5, canvas_h // 7, canvas_w // 2, canvas_h // 2),
                       (left + 100, top + 50, canvas_w - left - 100, canvas_h - top - 50)):
            expected = resize_pil(augment.canvas_window(image, left, top, window), (300, 300))
            got = augment.resized_canvas_window(image, left, top, window, (300, 300))
            assert got.tobytes() == expected.tobytes(), ((canvas_w, canvas_h), window)
            columns_first += bool(augment._columns_first(window[2:], (300, 300)))
    assert (columns_first > 0) == (order == "shrink" and order_known)


@pytest.mark.parametrize("policy, options, message", [
    (OriginalAugmentation, {"saturation_var": float("nan")}, r"saturation_var must be a finite number >= 0, got nan"),
    (OriginalAugmentation, {"lighting_std": -0.5}, r"lighting_std must be a finite number >= 0, got -0.5"),
    (OriginalAugmentation, {"vflip_prob": 1.5}, r"vflip_prob must be a probability in \[0, 1\], got 1.5"),
    # a reversed, empty or negative range drew NaN sizes (a ValueError in the middle of a batch)
    (OriginalAugmentation, {"crop_area_range": (1.0, 0.75)}, r"crop_area_range must be \(low, high\) with "
                                                              r"0 < low <= high <= 1, got \(1.0, 0.75\)"),
    (OriginalAugmentation, {"crop_area_range": (0.0, 1.0)}, r"crop_area_range must be"),
    (OriginalAugmentation, {"aspect_ratio_range": (-1, 2)}, r"aspect_ratio_range must be \(low, high\) with "
                                                            r"0 < low <= high, got \(-1, 2\)"),
    (OriginalAugmentation, {"aspect_ratio_range": 1.0}, r"aspect_ratio_range must be"),
    (OriginalAugmentation, {"image_size": (0, 300)}, r"image_size must be \(height, width\)"),
    (PaperAugmentation, {"expand_prob": -0.1}, r"expand_prob must be a probability in \[0, 1\], got -0.1"),
    (PaperAugmentation, {"max_expand": float("nan")}, r"max_expand must be a finite number >= 1, got nan"),
    (PaperAugmentation, {"max_expand": 0.5}, r"max_expand must be a finite number >= 1, got 0.5"),
    (PaperAugmentation, {"max_trials": 2.5}, r"max_trials must be a positive integer, got 2.5"),
    (PaperAugmentation, {"image_size": "300"}, r"image_size must be \(height, width\)"),
])
def test_policies_refuse_settings_that_fail_in_a_batch_or_draw_nonsense(policy, options, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        policy(**options)


def test_edge_settings_still_accepted():
    """Zero variances and probabilities turn steps off; a whole-image crop range and max_expand 1 are valid."""
    policy = OriginalAugmentation((32, 32, 3), saturation_var=0, hflip_prob=0, vflip_prob=1,
                                  crop_area_range=(1, 1), aspect_ratio_range=[1, 1])
    assert policy.image_size == (32, 32)
    boxes = np.array([[0.1, 0.2, 0.5, 0.6, 1.0]])
    image = np.zeros((40, 40, 3), np.uint8)
    _, out = policy(image, boxes, np.random.default_rng(0))
    np.testing.assert_allclose(out[:, :4], [[0.1, 0.4, 0.5, 0.8]])  # the whole image, flipped vertically
    assert PaperAugmentation(max_expand=1, max_trials=np.int32(1)).max_expand == 1
