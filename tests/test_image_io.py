"""Reading images: EXIF orientation, bad and huge files, image modes; the HSV conversions."""

import warnings

import numpy as np
import pytest
from PIL import Image, ImageOps

from ssd300.image_io import (ORIENTATION_TAG, ImageError, follows_stored_size, hsv_to_rgb,
                             load_image, open_rgb, planes, read_header, rgb_to_hsv, write_planes)

# EXIF orientation: how the stored pixels are shown (the TIFF/EXIF definitions,
# written with NumPy), and the stored pixels of an upright picture.
SHOW = {
    1: lambda s: s,
    2: lambda s: s[:, ::-1],                 # mirrored left-right
    3: lambda s: s[::-1, ::-1],              # turned 180 degrees
    4: lambda s: s[::-1],                    # mirrored top-bottom
    5: lambda s: np.rot90(s[:, ::-1], 1),    # mirrored, turned 90 counter-clockwise
    6: lambda s: np.rot90(s, -1),            # turned 90 clockwise (a phone held upright)
    7: lambda s: np.rot90(s[:, ::-1], -1),   # mirrored, turned 90 clockwise
    8: lambda s: np.rot90(s, 1),             # turned 90 counter-clockwise
}
STORE = {1: SHOW[1], 2: SHOW[2], 3: SHOW[3], 4: SHOW[4], 5: SHOW[5],
         6: lambda u: np.rot90(u, 1), 7: SHOW[7], 8: lambda u: np.rot90(u, -1)}


def upright_picture(width=48, height=32):
    """A smooth picture with a bright block in its top-left corner: any turn or mirror shows."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 150 // width, y * 150 // height, (x + y) * 150 // (width + height)], -1)
    img[:8, :12] = (250, 250, 250)
    return img.astype(np.uint8)


def save_with_orientation(path, stored, orientation):
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    upright = upright_picture()
    stored = STORE[orientation](upright)
    np.testing.assert_array_equal(SHOW[orientation](stored), upright)  # the tables agree
    path = tmp_path / f"o{orientation}.jpg"
    save_with_orientation(path, stored, orientation)
    decoded = np.asarray(Image.open(path).convert("RGB"))  # the stored pixels, decoded
    image = load_image(path)
    np.testing.assert_array_equal(image, SHOW[orientation](decoded))
    np.testing.assert_array_equal(image, np.asarray(ImageOps.exif_transpose(Image.open(path))))
    assert image.shape == upright.shape
    assert np.abs(image.astype(int) - upright).mean() < 3  # JPEG-close to the upright picture
    corners = [image[:8, :12], image[:8, -12:], image[-8:, :12], image[-8:, -12:]]
    assert [c.mean() > 200 for c in corners] == [True, False, False, False]  # the block is top-left
    # Opting out gives the picture as stored.
    np.testing.assert_array_equal(load_image(path, orient=False), decoded)
    assert read_header(path) == ((stored.shape[1], stored.shape[0]), orientation)


def test_annotation_size_decides_for_turned_images():
    stored = (640, 480)
    # A phone photo stored sideways: annotated upright (480 x 640) -> turn it;
    # annotated as stored (640 x 480) -> keep it as stored.
    assert not follows_stored_size(stored, 6, (480, 640))
    assert follows_stored_size(stored, 6, (640, 480))
    assert follows_stored_size(stored, 8, (640.0, 480.0))
    # Orientations that do not swap the sides, a square picture, or no annotation size.
    assert not follows_stored_size(stored, 3, (640, 480))
    assert not follows_stored_size((500, 500), 6, (500, 500))
    assert not follows_stored_size(stored, 6, None)
    assert not follows_stored_size(stored, 1, (640, 480))


def test_missing_broken_and_truncated_files_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="missing.jpg: image not found"):
        open_rgb(tmp_path / "missing.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageError, match="text.jpg: not a readable image"):
        open_rgb(tmp_path / "text.jpg")
    with pytest.raises(ImageError, match="text.jpg: not a readable image"):
        read_header(tmp_path / "text.jpg")
    Image.fromarray(upright_picture()).save(tmp_path / "good.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "good.jpg").read_bytes()[:200])
    with pytest.raises(ImageError, match="cut.jpg"):
        open_rgb(tmp_path / "cut.jpg")


def test_decompression_bombs_are_refused_by_name(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "big.png")  # 1600 pixels
    assert open_rgb(tmp_path / "big.png").size == (40, 40)
    # Over the limit: Pillow warns (DecompressionBombWarning); refused.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageError, match=r"big.png: image too large \(40x40 = 1600 pixels"):
            open_rgb(tmp_path / "big.png")
    # The same warning turned into an error by the user's filters.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageError, match="big.png: image too large"):
            open_rgb(tmp_path / "big.png")
    # Over twice the limit: Pillow raises DecompressionBombError.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)
    with pytest.raises(ImageError, match="big.png: image too large.*MAX_IMAGE_PIXELS"):
        open_rgb(tmp_path / "big.png")
    with pytest.raises(ImageError, match="big.png: image too large"):
        read_header(tmp_path / "big.png")


def test_sixteen_bit_gray_maps_by_a_fixed_scale(tmp_path):
    # round(value / 257): 128/257 = 0.498, 129/257 = 0.502, 65406/257 = 254.498, 65407/257 = 254.502.
    levels = np.array([[0, 128, 129, 385, 386, 1000, 4000, 32767, 32768, 65406, 65407, 65535]], np.uint16)
    expected = [0, 0, 1, 1, 2, 4, 16, 127, 128, 254, 255, 255]
    Image.fromarray(levels).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    np.testing.assert_array_equal(load_image(tmp_path / "deep.png"),
                                  np.repeat(np.array([expected], np.uint8)[..., None], 3, axis=-1))
    # A dark picture stays dark: its brightest pixel does not decide the scale (it did: 4000 -> 255).
    Image.fromarray(levels[:, :7]).save(tmp_path / "dark.png")
    np.testing.assert_array_equal(load_image(tmp_path / "dark.png")[0, :, 1], expected[:7])
    # 32-bit integer ("I") pictures are read as 16-bit values, the same way; others are refused.
    Image.fromarray(levels.astype(np.int32)).save(tmp_path / "deep32.tif")
    assert Image.open(tmp_path / "deep32.tif").mode == "I"
    np.testing.assert_array_equal(load_image(tmp_path / "deep32.tif")[0, :, 2], expected)
    for name, bad in (("over.tif", 65536), ("negative.tif", -1)):
        Image.fromarray(np.array([[0, bad]], np.int32)).save(tmp_path / name)
        with pytest.raises(ImageError, match=rf"{name}: 32-bit integer image with values {min(0, bad)} to "
                                             rf"{max(0, bad)}; only 16-bit values \(0 to 65535\)"):
            load_image(tmp_path / name)


def test_sixteen_bit_scale_equals_opencv_convert_scale_abs(tmp_path):
    cv2 = pytest.importorskip("cv2")
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    Image.fromarray(every).save(tmp_path / "every.png")
    reference = cv2.convertScaleAbs(cv2.imread(str(tmp_path / "every.png"), cv2.IMREAD_UNCHANGED), alpha=1 / 257)
    assert reference.dtype == np.uint8 and reference.shape == (256, 256)
    np.testing.assert_array_equal(load_image(tmp_path / "every.png")[..., 0], reference)


def test_modes_become_rgb_with_known_values(tmp_path):
    # CMYK: Pillow's conversion.
    cmyk = Image.new("CMYK", (4, 2), (0, 255, 255, 0))  # red
    cmyk.save(tmp_path / "cmyk.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "cmyk.tif"), np.full((2, 4, 3), (255, 0, 0)))
    # Palette with a transparent entry: the alpha is dropped, the colour kept.
    pal = Image.new("P", (3, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 1
    pal.save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "pal.png").info.get("transparency") == 1
    np.testing.assert_array_equal(load_image(tmp_path / "pal.png")[0], [[10, 20, 30], [200, 100, 50],
                                                                        [10, 20, 30]])
    # RGBA: the colour, without the alpha.
    rgba = np.array([[[1, 2, 3, 0], [4, 5, 6, 255]]], np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), rgba[..., :3])


def test_arrays_become_rgb_as_files_do():
    from ssd300.image_io import rgb_array

    gray = np.array([[0, 128], [255, 7]], np.uint8)
    np.testing.assert_array_equal(rgb_array(gray), np.stack([gray] * 3, -1))
    np.testing.assert_array_equal(rgb_array(gray[..., None]), np.stack([gray] * 3, -1))
    rgba = np.array([[[1, 2, 3, 0], [4, 5, 6, 255]]], np.uint8)
    np.testing.assert_array_equal(rgb_array(rgba), rgba[..., :3])
    np.testing.assert_array_equal(rgb_array(Image.fromarray(rgba)), rgba[..., :3])
    rgb = np.zeros((2, 3, 3), np.uint8)
    assert rgb_array(rgb) is rgb or np.shares_memory(rgb_array(rgb), rgb)
    refused = [(np.zeros((2, 2, 3)), r"image 0: expected uint8 values 0-255, got float64 \(for values in \[0, 1\]"),
               (np.zeros((2, 2, 3), np.uint16), r"image 0: expected uint8 values 0-255, got uint16$"),
               (np.zeros((0, 0, 3), np.uint8), r"got shape \(0, 0, 3\)"),
               (np.zeros((2, 2, 2), np.uint8), r"image 0: expected an \(H, W, 3\) RGB picture .*got shape \(2, 2, 2\)"),
               (np.zeros(5, np.uint8), r"got shape \(5,\)"),
               ("pics/cat.jpg", r"image 0 is a path \('pics/cat.jpg'\), not pixels")]
    for value, message in refused:
        with pytest.raises(ValueError, match=message):
            rgb_array(value, "image 0")


def test_planes_and_caffe_write():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    p = planes(rgb)
    assert p.shape == (3, 5, 7) and p.dtype == np.float32
    np.testing.assert_array_equal(p, rgb.transpose(2, 0, 1))
    out = np.empty((5, 7, 3), np.float32)
    np.testing.assert_array_equal(write_planes(p, out), rgb)
    # Keras's preprocess_input in "caffe" mode: BGR, minus the ImageNet mean.
    expected = rgb[..., ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68], np.float32)
    np.testing.assert_array_equal(write_planes(planes(rgb, np.uint8), out, caffe=True), expected)


def test_planes_are_a_writable_copy():
    # Also for one pixel, whose planes a transposed view would already be.
    for shape in ((1, 1, 3), (4, 1, 3), (2, 5, 3)):
        rgb = np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape)
        for source in (rgb, Image.fromarray(rgb)):
            p = planes(source, np.uint8)
            np.testing.assert_array_equal(p, np.moveaxis(rgb, -1, 0))
            p += 1  # writable, and not the source's memory
            np.testing.assert_array_equal(np.asarray(source), np.arange(rgb.size).reshape(shape))


def _pillow_convert(planes_, mode_in, mode_out):
    img = Image.fromarray(np.ascontiguousarray(np.moveaxis(planes_, 0, -1)), mode_in)
    return np.moveaxis(np.asarray(img.convert(mode_out)), -1, 0)


def _every_colour(chunk, chunks):
    code = np.arange(chunk * (1 << 24) // chunks, (chunk + 1) * (1 << 24) // chunks, dtype=np.uint32)
    return np.stack([code >> 16, (code >> 8) & 255, code & 255]).astype(np.uint8).reshape(3, 256, -1)


def test_hsv_conversions_equal_pillow_on_random_and_edge_values():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 256, (3, 256, 512), dtype=np.uint8)
    values[1, 0] = 0                                   # no saturation / green 0
    values[0, 1] = 255                                 # the last hue (sector 6 is sector 0)
    values[2, 2] = 0                                   # black / blue 0
    values[:, 3] = 255                                 # white
    values[:, 4] = values[0, 4]                        # grays: ties everywhere
    values[1, 5], values[2, 6] = values[0, 5], values[0, 6]  # two channels tie
    np.testing.assert_array_equal(hsv_to_rgb(values), _pillow_convert(values, "HSV", "RGB"))
    np.testing.assert_array_equal(rgb_to_hsv(values), _pillow_convert(values, "RGB", "HSV"))


@pytest.mark.slow
def test_hsv_conversions_equal_pillow_on_every_value():
    for chunk in range(16):
        values = _every_colour(chunk, 16)
        np.testing.assert_array_equal(hsv_to_rgb(values), _pillow_convert(values, "HSV", "RGB"))
        np.testing.assert_array_equal(rgb_to_hsv(values), _pillow_convert(values, "RGB", "HSV"))
