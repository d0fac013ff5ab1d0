"""Data augmentation for SSD training, in NumPy and Pillow.

Every transform takes an image and a box array and returns new ones, so the
boxes always follow the pixels. Boxes are rows ``(N, 4 + k)``: normalised
``xmin, ymin, xmax, ymax`` (fractions of the current image's width and
height) followed by ``k`` columns (the one-hot classes) that are carried
along unchanged. Random draws come from an explicit ``numpy.random.Generator``.

Two policies:

* :class:`OriginalAugmentation`: the originals' ``Generator`` (colour jitter in
  random order, PCA lighting noise, flips, random-sized crop).
* :class:`PaperAugmentation`: the SSD paper's (photometric distortions,
  zoom-out "expand", min-IoU random crop, horizontal flip).
"""

import numpy as np
from PIL import Image

from .box_ops import pairwise_iou
from .image_io import resize

GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
#: Fill colour of the zoom-out canvas: the ImageNet mean, RGB.
MEAN_RGB = (123.68, 116.779, 103.939)


# Photometric transforms on float32 RGB images in [0, 255].

def grayscale(rgb):
    """Luma ``(H, W)`` of an RGB image."""
    return rgb @ GRAY_WEIGHTS


def adjust_saturation(rgb, alpha):
    """Blend with the grayscale image: ``alpha * rgb + (1 - alpha) * gray``."""
    out = rgb * np.float32(alpha)
    out += (np.float32(1 - alpha) * grayscale(rgb))[..., None]
    return np.clip(out, 0, 255, out=out)


def adjust_brightness(rgb, alpha):
    """Scale all values by ``alpha``."""
    return np.clip(rgb * np.float32(alpha), 0, 255)


def adjust_contrast(rgb, alpha):
    """Blend with the mean gray level: ``alpha * rgb + (1 - alpha) * mean``."""
    out = rgb * np.float32(alpha)
    out += np.float32((1 - alpha) * grayscale(rgb).mean())
    return np.clip(out, 0, 255, out=out)


def lighting_noise(rgb, noise):
    """AlexNet-style PCA lighting: shift colours along the image's principal components.

    Args:
        rgb: float32 image.
        noise: ``(3,)`` weights of the principal components (``randn * std``).
    """
    flat = rgb.reshape(-1, 3)
    n = len(flat)
    # np.cov(rgb / 255) from two BLAS products (sums and Gram matrix); about
    # 4x faster than np.cov's float64 copies, within 1e-4 relative.
    mean = (np.ones(n, np.float32) @ flat).astype(np.float64) / n
    gram = (flat.T @ flat).astype(np.float64)
    cov = (gram - n * np.outer(mean, mean)) / ((n - 1) * 255.0 ** 2)
    eigval, eigvec = np.linalg.eigh(cov)
    shift = eigvec.dot(eigval * noise) * 255
    return np.clip(rgb + shift.astype(np.float32), 0, 255)


# Geometric transforms.

def horizontal_flip(image, boxes):
    """Mirror left-right."""
    boxes = boxes.copy()
    boxes[:, [0, 2]] = 1 - boxes[:, [2, 0]]
    return image[:, ::-1], boxes


def vertical_flip(image, boxes):
    """Mirror top-bottom."""
    boxes = boxes.copy()
    boxes[:, [1, 3]] = 1 - boxes[:, [3, 1]]
    return image[::-1], boxes


def crop_boxes(boxes, x, y, w, h, img_w, img_h):
    """The boxes of a crop ``[x, x + w) x [y, y + h)`` of an ``img_w x img_h`` image.

    Keeps exactly the boxes whose centre lies strictly inside the rectangle,
    clipped to it and renormalised to the crop.
    """
    x_rel, y_rel, w_rel, h_rel = x / img_w, y / img_h, w / img_w, h / img_h
    cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
    cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
    inside = (x_rel < cx) & (cx < x_rel + w_rel) & (y_rel < cy) & (cy < y_rel + h_rel)
    kept = boxes[inside].copy()
    kept[:, [0, 2]] = np.clip((kept[:, [0, 2]] - x_rel) / w_rel, 0, 1)
    kept[:, [1, 3]] = np.clip((kept[:, [1, 3]] - y_rel) / h_rel, 0, 1)
    return kept


def crop(image, boxes, x, y, w, h):
    """Cut the pixel rectangle ``[x, x + w) x [y, y + h)`` out of the image; see :func:`crop_boxes`."""
    img_h, img_w = image.shape[:2]
    return image[y:y + h, x:x + w], crop_boxes(boxes, x, y, w, h, img_w, img_h)


def expand_boxes(boxes, img_w, img_h, new_w, new_h, left, top):
    """Boxes of an ``img_w x img_h`` image placed at ``(left, top)`` on a ``new_w x new_h`` canvas."""
    boxes = boxes.copy()
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] * img_w + left) / new_w
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] * img_h + top) / new_h
    return boxes


def canvas_window(image, left, top, window, fill=MEAN_RGB):
    """Pixels of ``window = (x, y, w, h)`` of a canvas filled with ``fill`` that has
    ``image`` at ``(left, top)``, without building the whole canvas."""
    x, y, w, h = window
    img_h, img_w = image.shape[:2]
    if (x - left, y - top, w, h) == (0, 0, img_w, img_h):
        return image
    # Pillow fills and pastes in C, several times faster than NumPy broadcasting.
    canvas = Image.new("RGB", (w, h), tuple(int(round(v)) for v in fill))
    x0, x1 = max(x, left), min(x + w, left + img_w)
    y0, y1 = max(y, top), min(y + h, top + img_h)
    if x0 < x1 and y0 < y1:
        part = np.ascontiguousarray(image[y0 - top:y1 - top, x0 - left:x1 - left])
        canvas.paste(Image.fromarray(part), (x0 - x, y0 - y))
    return np.asarray(canvas)


def expand(image, boxes, ratio, left, top, fill=MEAN_RGB):
    """Zoom out: place the image at ``(left, top)`` on a canvas ``ratio`` times larger."""
    img_h, img_w = image.shape[:2]
    new_w, new_h = int(img_w * ratio), int(img_h * ratio)
    canvas = canvas_window(image, left, top, (0, 0, new_w, new_h), fill)
    return canvas, expand_boxes(boxes, img_w, img_h, new_w, new_h, left, top)


def _uniform_around_one(rng, var):
    return 2 * rng.random() * var + 1 - var


class OriginalAugmentation:
    """The originals' training augmentation (wikke/SSD_Keras ``Generator``).

    In order: random-sized crop (on the full image), resize, saturation /
    brightness / contrast jitter in random order, PCA lighting noise,
    horizontal and vertical flips. A variance or probability of 0 turns
    that step off. Brightness draws with ``brightness_var`` (the original
    used ``saturation_var``).

    Args:
        image_size: output ``(height, width)``.
        saturation_var, brightness_var, contrast_var: factors are drawn
            uniformly from ``[1 - var, 1 + var]``.
        lighting_std: standard deviation of the PCA lighting weights.
        hflip_prob, vflip_prob: flip probabilities.
        do_crop: apply the random-sized crop.
        crop_area_range: fraction of the image area to keep.
        aspect_ratio_range: aspect ratio of the crop.
    """

    def __init__(self, image_size=(300, 300), saturation_var=0.5, brightness_var=0.5,
                 contrast_var=0.5, lighting_std=0.5, hflip_prob=0.5, vflip_prob=0.5,
                 do_crop=True, crop_area_range=(0.75, 1.0), aspect_ratio_range=(3. / 4., 4. / 3.)):
        self.image_size = tuple(image_size)
        self.saturation_var = saturation_var
        self.brightness_var = brightness_var
        self.contrast_var = contrast_var
        self.lighting_std = lighting_std
        self.hflip_prob = hflip_prob
        self.vflip_prob = vflip_prob
        self.do_crop = do_crop
        self.crop_area_range = tuple(crop_area_range)
        self.aspect_ratio_range = tuple(aspect_ratio_range)

    def crop_window(self, img_w, img_h, rng):
        """The original's random-sized crop rectangle ``(x, y, w, h)`` in pixels."""
        lo, hi = self.crop_area_range
        target_area = (rng.random() * (hi - lo) + lo) * img_w * img_h
        lo, hi = self.aspect_ratio_range
        ratio = rng.random() * (hi - lo) + lo
        w = np.round(np.sqrt(target_area * ratio))
        h = np.round(np.sqrt(target_area / ratio))
        if rng.random() < 0.5:
            w, h = h, w
        w = int(max(1, min(w, img_w)))
        h = int(max(1, min(h, img_h)))
        x = int(rng.random() * (img_w - w))
        y = int(rng.random() * (img_h - h))
        return x, y, w, h

    def __call__(self, image, boxes, rng):
        """Augment one image.

        Args:
            image: ``(H, W, 3)`` uint8 RGB at full resolution.
            boxes: ``(N, 4 + k)`` normalised boxes.
            rng: ``numpy.random.Generator``.

        Returns:
            ``(image, boxes)``: float32 ``(*image_size, 3)`` in ``[0, 255]``, and
            the boxes that remain.
        """
        if self.do_crop:
            image, boxes = crop(image, boxes, *self.crop_window(image.shape[1], image.shape[0], rng))
        image = resize(image, self.image_size).astype(np.float32)
        jitters = []
        if self.saturation_var:
            jitters.append(lambda im: adjust_saturation(im, _uniform_around_one(rng, self.saturation_var)))
        if self.brightness_var:
            jitters.append(lambda im: adjust_brightness(im, _uniform_around_one(rng, self.brightness_var)))
        if self.contrast_var:
            jitters.append(lambda im: adjust_contrast(im, _uniform_around_one(rng, self.contrast_var)))
        for i in rng.permutation(len(jitters)):
            image = jitters[i](image)
        if self.lighting_std:
            image = lighting_noise(image, rng.standard_normal(3) * self.lighting_std)
        if self.hflip_prob > 0 and rng.random() < self.hflip_prob:
            image, boxes = horizontal_flip(image, boxes)
        if self.vflip_prob > 0 and rng.random() < self.vflip_prob:
            image, boxes = vertical_flip(image, boxes)
        return np.ascontiguousarray(image), boxes


class PaperAugmentation:
    """The SSD paper's augmentation (Liu et al., section 2.2 and its Caffe code).

    Zoom-out ("expand") with probability ``expand_prob`` onto a canvas up to
    ``max_expand`` times larger filled with the mean colour; a random crop
    from the min-IoU sampler (whole image, or a patch of 0.3-1 of each side,
    aspect ratio 0.5-2, overlapping some object by at least 0.1, 0.3, 0.5,
    0.7 or 0.9, or any patch), keeping the boxes whose centres are inside;
    resize; photometric distortions (brightness, contrast, saturation, hue,
    each with probability 0.5, contrast first or last at random); horizontal
    flip.

    Args:
        image_size: output ``(height, width)``.
        expand_prob, max_expand: zoom-out probability and largest ratio.
        hflip_prob: flip probability.
        photometric: apply the photometric distortions.
    """

    MIN_IOUS = (None, 0.1, 0.3, 0.5, 0.7, 0.9, -np.inf)

    def __init__(self, image_size=(300, 300), expand_prob=0.5, max_expand=4.0, hflip_prob=0.5,
                 photometric=True, max_trials=50):
        self.image_size = tuple(image_size)
        self.expand_prob = expand_prob
        self.max_expand = max_expand
        self.hflip_prob = hflip_prob
        self.photometric = photometric
        self.max_trials = max_trials

    def sample_crop(self, img_w, img_h, boxes, rng):
        """A crop rectangle ``(x, y, w, h)`` from the min-IoU sampler, or ``None``."""
        if len(boxes) == 0:
            return None
        min_iou = self.MIN_IOUS[rng.integers(len(self.MIN_IOUS))]
        if min_iou is None:
            return None
        for _ in range(self.max_trials):
            w = rng.uniform(0.3 * img_w, img_w)
            h = rng.uniform(0.3 * img_h, img_h)
            if not 0.5 <= h / w <= 2.0:
                continue
            x = int(rng.uniform(0, img_w - w))
            y = int(rng.uniform(0, img_h - h))
            w, h = max(1, int(w)), max(1, int(h))
            rect = np.array([x / img_w, y / img_h, (x + w) / img_w, (y + h) / img_h])
            if pairwise_iou(boxes[:, :4], rect[None]).max() < min_iou:
                continue
            cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
            cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
            if not np.any((rect[0] < cx) & (cx < rect[2]) & (rect[1] < cy) & (cy < rect[3])):
                continue
            return x, y, w, h
        return None

    def distort(self, image, rng):
        """Photometric distortions of a float32 RGB image in ``[0, 255]``."""
        if rng.random() < 0.5:
            image = np.clip(image + np.float32(rng.uniform(-32, 32)), 0, 255)
        contrast_first = rng.random() < 0.5
        contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
        if contrast_first and contrast is not None:
            image = np.clip(image * np.float32(contrast), 0, 255)
        saturation = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
        hue = rng.uniform(-18, 18) if rng.random() < 0.5 else None
        if saturation is not None or hue is not None:
            hsv = np.asarray(Image.fromarray(image.astype(np.uint8)).convert("HSV")).astype(np.float32)
            if saturation is not None:
                hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
            if hue is not None:
                hsv[..., 0] = (hsv[..., 0] + hue * 255.0 / 360.0) % 256
            image = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")).astype(np.float32)
        if not contrast_first and contrast is not None:
            image = np.clip(image * np.float32(contrast), 0, 255)
        return image

    def __call__(self, image, boxes, rng):
        """Augment one image; same contract as :meth:`OriginalAugmentation.__call__`."""
        img_h, img_w = image.shape[:2]
        canvas_w, canvas_h, left, top = img_w, img_h, 0, 0
        if self.max_expand > 1 and rng.random() < self.expand_prob:
            ratio = rng.uniform(1, self.max_expand)
            left = int(rng.uniform(0, img_w * ratio - img_w))
            top = int(rng.uniform(0, img_h * ratio - img_h))
            canvas_w, canvas_h = int(img_w * ratio), int(img_h * ratio)
            boxes = expand_boxes(boxes, img_w, img_h, canvas_w, canvas_h, left, top)
        window = self.sample_crop(canvas_w, canvas_h, boxes, rng)
        if window is None:
            window = (0, 0, canvas_w, canvas_h)
        else:
            boxes = crop_boxes(boxes, *window, canvas_w, canvas_h)
        # Only the cropped part of the zoomed-out canvas is ever built.
        image = canvas_window(image, left, top, window)
        image = resize(image, self.image_size).astype(np.float32)
        if self.photometric:
            image = self.distort(image, rng)
        if self.hflip_prob > 0 and rng.random() < self.hflip_prob:
            image, boxes = horizontal_flip(image, boxes)
        return np.ascontiguousarray(image), boxes
