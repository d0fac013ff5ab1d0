"""Augmentations keep boxes consistent with pixels; flips and crops are exact."""

import numpy as np
import pytest

from ssd300.augment import (OriginalAugmentation, PaperAugmentation, adjust_brightness,
                            adjust_contrast, adjust_saturation, crop, expand, horizontal_flip,
                            lighting_noise, vertical_flip)

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
