"""Reading images with Pillow, and the Caffe-style input preprocessing."""

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError

#: ImageNet channel means in BGR order, as keras.applications' "caffe" mode.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


class ImageError(UserError):
    """An image that is missing or cannot be decoded; the message names the file."""


def open_rgb(path):
    """Open an image file as an RGB ``PIL.Image`` (decoded).

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images become RGB.

    Raises:
        ImageError: the file is missing, not an image, truncated or corrupt.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16/32-bit grayscale: scale to 8 bits instead of clipping.
                arr = np.asarray(img, dtype=np.float64)
                top = arr.max() if arr.size and arr.max() > 0 else 1.0
                img = Image.fromarray((arr * (255.0 / top)).astype(np.uint8))
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
            return img.convert("RGB")
    except FileNotFoundError:
        raise ImageError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def load_image(path):
    """``(H, W, 3)`` uint8 RGB array of an image file; see :func:`open_rgb`."""
    return np.asarray(open_rgb(path))


def resize(image, size):
    """Resize an ``(H, W, 3)`` uint8 array to ``size = (height, width)`` (bilinear)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    # reducing_gap: a large downscale (a zoomed-out canvas) first shrinks by
    # an integer factor, which is much faster and as good to the eye.
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR, reducing_gap=3.0))


def preprocess_input(x):
    """Keras's ``preprocess_input`` in ``caffe`` mode, in NumPy.

    RGB to BGR, then the ImageNet mean subtracted per channel; no scaling.
    This is what the converted Caffe VGG16/SSD weights expect.

    Args:
        x: ``(..., H, W, 3)`` RGB values in ``[0, 255]``.

    Returns:
        float32 array of the same shape.
    """
    x = np.asarray(x, dtype=np.float32)
    return x[..., ::-1] - CAFFE_MEAN_BGR
