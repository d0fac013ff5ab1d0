"""Detection on videos (ssd300.video): outputs, equality with picture detection, VideoTest, bad input.

A "peaked" SSD300 at 96x96 (random weights, the background bias lowered)
gives a few dozen confident, content-dependent detections per frame.
"""

import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ssd300.errors import UserError

cv2 = pytest.importorskip("cv2", reason="OpenCV (the video extra) is not installed")

from ssd300 import video  # noqa: E402
from ssd300.video import VideoReadError, VideoTest, VideoWriteError, detect_video, is_video_path  # noqa: E402

CLASSES = ("circle", "square", "triangle", "cross")
FRAMES, SIZE, FPS = 16, (160, 120), 12.0
MIN_SCORE = 0.3


def peaked_model(size=96):
    import keras

    from ssd300 import SSD300

    keras.utils.set_random_seed(0)
    model = SSD300((size, size, 3), num_classes=len(CLASSES) + 1)
    for layer in model.layers:
        if "mbox_conf" in layer.name and layer.weights:
            kernel, bias = layer.get_weights()
            bias = bias.reshape(-1, len(CLASSES) + 1)
            bias[:, 0] -= 2.0  # less background: the classes' scores reach 0.3-0.99
            layer.set_weights([kernel, bias.reshape(-1)])
    return model


@pytest.fixture(scope="module")
def model():
    return peaked_model()


@pytest.fixture(scope="module")
def detector(model):
    from ssd300.detect import Detector

    return Detector(model, CLASSES, confidence_threshold=0.2, keep_top_k=20)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    assert video.write_synthetic_video(path, frames=FRAMES, size=SIZE, fps=FPS, seed=1) in ("avc1", "mp4v")
    return path


def read_frames(path):
    """Every frame of a video, decoded by OpenCV directly, BGR."""
    capture = cv2.VideoCapture(os.fspath(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def reference(clip, detector, tmp_path_factory):
    """Each frame's detections by the detector on the frame saved as a PNG picture."""
    folder = tmp_path_factory.mktemp("frames")
    frames, _ = read_frames(clip)
    paths = []
    for i, frame in enumerate(frames):
        paths.append(folder / f"{i:03d}.png")
        cv2.imwrite(os.fspath(paths[-1]), frame)
    found, sizes = detector.detect_files(paths, batch_size=1)
    assert sizes == [SIZE] * FRAMES
    return [d[d[:, 1] >= MIN_SCORE] for d in found]


def assert_same_detections(record, expected):
    got = record["detections"]
    assert [d["label"] for d in got] == expected[:, 0].astype(int).tolist()
    assert [d["class"] for d in got] == [CLASSES[int(label) - 1] for label in expected[:, 0]]
    np.testing.assert_allclose([d["score"] for d in got], expected[:, 1], atol=1e-4)
    np.testing.assert_allclose(np.reshape([d["box"] for d in got], (-1, 4)), expected[:, 2:6], atol=1.0)


def test_synthetic_clip_is_what_was_asked(clip):
    frames, fps = read_frames(clip)
    assert len(frames) == FRAMES and fps == FPS
    assert frames[0].shape == (SIZE[1], SIZE[0], 3)
    # The shapes move: consecutive frames differ.
    assert np.abs(frames[0].astype(int) - frames[5]).mean() > 2


@pytest.mark.slow
def test_video_detections_equal_picture_detections(clip, detector, reference, tmp_path):
    out_video, out_jsonl = tmp_path / "out" / "clip.mp4", tmp_path / "out" / "clip.jsonl"
    result = detect_video(detector, clip, out_video, out_jsonl, batch_size=5, progress=False,
                          min_score=MIN_SCORE)
    assert (result.frames, result.processed, result.frame_count, result.stopped) == (FRAMES, FRAMES, FRAMES, None)
    assert (result.width, result.height, result.fps) == (*SIZE, FPS)
    assert result.codec in ("avc1", "mp4v")
    frames, fps = read_frames(out_video)
    assert len(frames) == FRAMES and fps == FPS and frames[0].shape == (SIZE[1], SIZE[0], 3)
    records = read_jsonl(out_jsonl)
    assert [r["frame"] for r in records] == list(range(FRAMES))
    np.testing.assert_allclose([r["time"] for r in records], np.arange(FRAMES) / FPS, atol=1e-3)
    # Non-trivial detections that follow the picture: several per frame, not all the same.
    assert min(len(r) for r in reference) >= 3
    assert len({tuple(np.round(r[:, 2], 1)) for r in reference}) > FRAMES // 2
    for record, expected in zip(records, reference):
        assert_same_detections(record, expected)
    assert sorted(os.listdir(tmp_path / "out")) == ["clip.jsonl", "clip.mp4"]  # no temporary left


@pytest.mark.slow
def test_every_start_and_max_frames(clip, detector, reference, tmp_path, monkeypatch):
    out_video, out_jsonl = tmp_path / "every.mp4", tmp_path / "every.jsonl"
    result = detect_video(detector, clip, out_video, out_jsonl, every=3, batch_size=2, start_frame=2,
                          max_frames=10, progress=False, min_score=MIN_SCORE)
    assert (result.frames, result.processed) == (10, 4)
    records = read_jsonl(out_jsonl)
    assert [r["frame"] for r in records] == [2, 5, 8, 11]
    np.testing.assert_allclose([r["time"] for r in records], np.array([2, 5, 8, 11]) / FPS, atol=1e-3)
    for record in records:
        assert_same_detections(record, reference[record["frame"]])
    # Every written frame has boxes drawn, the frames between processed ones too
    # (those of the last processed frame): far from the source frame, unlike
    # the codec's own noise when nothing is drawn.
    source, _ = read_frames(clip)
    drawn, _ = read_frames(out_video)
    assert len(drawn) == 10
    diff = [np.abs(d.astype(int) - s).mean() for d, s in zip(drawn, source[2:12])]
    # Also with the buffer limit hit at every frame: batches of one, the same records.
    monkeypatch.setattr(video, "MAX_BUFFERED_BYTES", 1)
    detect_video(detector, clip, tmp_path / "plain.mp4", tmp_path / "plain.jsonl", every=3, start_frame=2,
                 max_frames=10, progress=False, min_score=MIN_SCORE)
    again = read_jsonl(tmp_path / "plain.jsonl")
    assert [r["frame"] for r in again] == [2, 5, 8, 11]
    for record in again:
        assert_same_detections(record, reference[record["frame"]])
    detect_video(detector, clip, tmp_path / "plain.mp4", every=3, start_frame=2, max_frames=10,
                 progress=False, min_score=1.01)
    plain, _ = read_frames(tmp_path / "plain.mp4")
    noise = [np.abs(p.astype(int) - s).mean() for p, s in zip(plain, source[2:12])]
    assert min(diff) > 3 * max(noise) and min(diff) > 5


def test_videotest_headless_writes_the_video_and_returns(clip, model, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.chdir(tmp_path)
    tester = VideoTest(["background", *CLASSES], model, (96, 96, 3))
    result = tester.run(os.fspath(clip), start_frame=4, progress=False)
    assert "writing the annotated video to clip_ssd.mp4" in capsys.readouterr().err
    assert result.out_video == "clip_ssd.mp4" and not result.shown and not result.interrupted
    assert result.frames == FRAMES - 4
    frames, fps = read_frames(tmp_path / "clip_ssd.mp4")
    assert len(frames) == FRAMES - 4 and fps == FPS and frames[0].shape == (SIZE[1], SIZE[0], 3)
    # The original's arguments, positionally.
    result = tester.run(os.fspath(clip), 14, 0.9, out_path=tmp_path / "x.mp4", progress=False)
    assert result.frames == 2 and len(read_frames(tmp_path / "x.mp4")[0]) == 2


def test_original_import_paths():
    from testing_utils.videotest import VideoTest as shim

    assert shim is VideoTest
    # The original's example imported it from inside testing_utils/.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", "from videotest import VideoTest; print(VideoTest.__module__)"],
                         cwd=os.path.join(root, "testing_utils"), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ssd300.video"


def test_videotest_checks_its_arguments(model):
    with pytest.raises(UserError, match="4 class names"):
        VideoTest(["background", *CLASSES[:3]], model, (96, 96, 3))
    with pytest.raises(UserError, match="input_shape"):
        VideoTest(["background", *CLASSES], model, (300, 300, 3))


def test_show_uses_the_window_and_q_stops(clip, detector, tmp_path, monkeypatch):
    """The window path with OpenCV's GUI calls replaced: one imshow per frame, q stops and keeps the frames."""
    shown, keys = [], iter([-1, -1, -1, -1, ord("q")])
    monkeypatch.setattr(video, "display_available", lambda cv2=None: (True, None))
    monkeypatch.setattr(cv2, "namedWindow", lambda *a: None)
    monkeypatch.setattr(cv2, "imshow", lambda name, frame: shown.append(frame.shape))
    monkeypatch.setattr(cv2, "waitKey", lambda delay: next(keys, -1))
    monkeypatch.setattr(cv2, "getWindowProperty", lambda *a: 1.0)
    monkeypatch.setattr(cv2, "destroyWindow", lambda *a: None)
    result = detect_video(detector, clip, tmp_path / "shown.mp4", show=True, batch_size=2, progress=False)
    assert result.shown and result.interrupted == "key" and result.stopped is None
    assert result.frames == 5 and shown == [(SIZE[1], SIZE[0], 3)] * 5
    assert len(read_frames(tmp_path / "shown.mp4")[0]) == 5


def test_show_without_display_warns_and_writes(clip, detector, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if not sys.platform.startswith("linux"):
        pytest.skip("the display check by environment is Linux's")
    result = detect_video(detector, clip, tmp_path / "o.mp4", show=True, max_frames=3, progress=False)
    assert "not showing the video: no display" in capsys.readouterr().err
    assert not result.shown and result.frames == 3 and len(read_frames(tmp_path / "o.mp4")[0]) == 3
    with pytest.raises(UserError, match="nothing to do: cannot show the video"):
        detect_video(detector, clip, show=True, progress=False)


def test_detection_record():
    det = np.array([[2, 0.75, 1.5, 2.0, 30.25, 40.0]], np.float32)
    assert video.detection_record(7, 0.5833333333, det, CLASSES) == {
        "frame": 7, "time": 0.583333,
        "detections": [{"label": 2, "class": "square", "score": 0.75, "box": [1.5, 2.0, 30.25, 40.0]}]}
    assert video.detection_record(0, 0.0, np.zeros((0, 6)), CLASSES)["detections"] == []


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def avi(tmp_path_factory):
    """An MJPG AVI (each frame a JPEG, so one frame can be damaged alone)."""
    path = tmp_path_factory.mktemp("avi") / "clip.avi"
    assert video.write_synthetic_video(path, frames=FRAMES, size=SIZE, fps=FPS, seed=2) == "MJPG"
    return path


def jpeg_offsets(data):
    return [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]


def assert_only(folder, names):
    assert sorted(os.listdir(folder)) == sorted(names)


def test_truncated_video_keeps_the_frames_before(avi, detector, tmp_path):
    data = avi.read_bytes()
    bad = tmp_path / "in" / "truncated.avi"
    bad.parent.mkdir()
    bad.write_bytes(data[:jpeg_offsets(data)[9] + 100])  # frame 9 cut short
    out = tmp_path / "out"
    with pytest.raises(VideoReadError, match=r"truncated\.avi: the video ends at frame 9, before the 16 frames") as e:
        detect_video(detector, bad, out / "t.mp4", out / "t.jsonl", batch_size=4, progress=False)
    assert "9 frames (0 to 8) processed" in str(e.value) and os.fspath(out / "t.mp4") in str(e.value)
    assert e.value.result.frames == 9
    assert len(read_frames(out / "t.mp4")[0]) == 9
    assert [r["frame"] for r in read_jsonl(out / "t.jsonl")] == list(range(9))
    assert_only(out, ["t.jsonl", "t.mp4"])


def test_corrupt_frame_stops_there(avi, detector, tmp_path):
    data = bytearray(avi.read_bytes())
    start = jpeg_offsets(data)[6]
    data[start:start + 3000] = bytes(3000)
    bad = tmp_path / "corrupt.avi"
    bad.write_bytes(bytes(data))
    with pytest.raises(VideoReadError, match=r"corrupt\.avi: frame 6 cannot be decoded \(corrupt\)"):
        detect_video(detector, bad, out_jsonl=tmp_path / "c.jsonl", progress=False)
    assert [r["frame"] for r in read_jsonl(tmp_path / "c.jsonl")] == list(range(6))


def test_missing_and_non_video_files(clip, detector, tmp_path):
    """A video file that cannot be read is a VideoReadError (what ``ssd300 detect`` reports and skips),
    with nothing written and no result."""
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 100)
    for source, message in ((tmp_path / "nope.mp4", r"nope\.mp4: video not found"),
                            (text, r"notes\.mp4: not a readable video \(OpenCV cannot open it\)"),
                            (tmp_path, r": is a folder, not a video"),
                            (clip, rf"clip\.mp4: start_frame 99 is past the last frame \({FRAMES} frames\)")):
        with pytest.raises(VideoReadError, match=message) as info:
            detect_video(detector, source, tmp_path / "o.mp4", tmp_path / "o.jsonl", progress=False,
                         start_frame=99 if source == clip else 0)
        assert info.value.result is None
    assert_only(tmp_path, ["notes.mp4"])


def test_camera_that_is_not_there(detector, tmp_path):
    with pytest.raises(UserError, match="camera 99: no camera at this index") as info:
        detect_video(detector, 99, tmp_path / "cam.mp4", progress=False)
    assert not isinstance(info.value, VideoReadError)  # an option's error, not an input to skip
    with pytest.raises(UserError, match="camera index must be >= 0"):
        detect_video(detector, -1, tmp_path / "cam.mp4", progress=False)
    assert_only(tmp_path, [])


def test_outputs_that_cannot_be_written(clip, detector, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(UserError, match=r"file\.txt is a file, not a folder"):
        detect_video(detector, clip, blocker / "sub" / "o.mp4", progress=False)
    with pytest.raises(UserError, match="output is a folder"):
        detect_video(detector, clip, out_jsonl=tmp_path, progress=False)
    with pytest.raises(UserError, match=r"unsupported video extension; use one of \.avi, \.m4v"):
        detect_video(detector, clip, tmp_path / "o.gif", progress=False)
    with pytest.raises(UserError, match="would overwrite the input video"):
        detect_video(detector, clip, clip, progress=False)
    with pytest.raises(UserError, match="nothing to do"):
        detect_video(detector, clip, progress=False)
    assert_only(tmp_path, ["file.txt"])


def test_a_failure_midway_leaves_no_output(clip, detector, tmp_path):
    class Failing:
        classes = detector.classes
        calls = 0

        def detect_arrays(self, images):
            Failing.calls += 1
            if Failing.calls == 2:
                raise RuntimeError("model failed")
            return [np.zeros((0, 6), np.float32) for _ in images]

    with pytest.raises(RuntimeError, match="model failed"):
        detect_video(Failing(), clip, tmp_path / "o.mp4", tmp_path / "o.jsonl", batch_size=2, progress=False)
    assert_only(tmp_path, [])


def test_without_opencv_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    with pytest.raises(UserError, match=r'clip\.mp4: reading videos needs OpenCV.*pip install "ssd300\[video\]"'):
        detect_video(None, tmp_path / "clip.mp4", tmp_path / "o.mp4", progress=False)
    with pytest.raises(UserError, match=r'pip install "ssd300\[video\]"'):
        video.write_synthetic_video(tmp_path / "x.mp4")
    assert is_video_path("holiday.MP4") and not is_video_path("holiday.jpg")
    (tmp_path / "clip").write_bytes(b"\x00" * 100)
    assert not is_video_path(tmp_path / "clip")  # unknown extension, no OpenCV: a picture
    assert_only(tmp_path, ["clip"])


def test_is_video_path(avi, tmp_path):
    assert is_video_path("a.mp4") and is_video_path("b.MKV") and is_video_path("c.mpg")
    assert not is_video_path("a.jpg") and not is_video_path("b.PNG") and not is_video_path("c.gif")
    assert not is_video_path(tmp_path / "missing")
    (tmp_path / "film").write_bytes(avi.read_bytes())
    assert is_video_path(tmp_path / "film")
    assert not is_video_path(tmp_path / "film", probe=False)
    cv2.imwrite(os.fspath(tmp_path / "picture.png"), np.zeros((8, 8, 3), np.uint8))
    os.rename(tmp_path / "picture.png", tmp_path / "picture")
    assert not is_video_path(tmp_path / "picture")
    (tmp_path / "text").write_text("hello")
    assert not is_video_path(tmp_path / "text")


# ------------------------------------------- writing, interrupts, odd sizes


class Boxes:
    """A NumPy stand-in for the detector: one box per frame, at a quarter of the frame."""

    classes = CLASSES

    def __init__(self):
        self.sizes = []

    def detect_arrays(self, images):
        self.sizes.append(len(images))
        return [np.array([[1, 0.9, w / 4, h / 4, w / 2, h / 2]], np.float32)
                for h, w in (image.shape[:2] for image in images)]


def write_avi(path, frames=None, fps=10, total=None, jpegs=None):
    """An MJPG AVI written by hand: any frame size (OpenCV's writer crops odd ones), and the header's
    frame count ``total`` (0: unknown) independent of the frames.

    Args:
        frames: ``(H, W, 3)`` uint8 RGB arrays, or ``jpegs``: each frame's JPEG bytes as they are.
    """
    from PIL import Image

    def chunk(tag, data):
        return tag + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)

    if jpegs is None:
        jpegs = []
        for frame in frames:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, "JPEG", quality=95)
            jpegs.append(buffer.getvalue())
    w, h = Image.open(io.BytesIO(jpegs[0])).size
    n = len(jpegs) if total is None else total
    avih = struct.pack("<14I", 1_000_000 // fps, 0, 0, 0x10, n, 0, 1, 0, w, h, 0, 0, 0, 0)
    strh = struct.pack("<4s4sIHHIIIIIIIIhhhh", b"vids", b"MJPG", 0, 0, 0, 0, 1, fps, 0, n, 0, 0xFFFFFFFF, 0,
                       0, 0, w, h)
    strf = struct.pack("<IiiHH4sIiiII", 40, w, h, 1, 24, b"MJPG", w * h * 3, 0, 0, 0, 0)
    strl = chunk(b"LIST", b"strl" + chunk(b"strh", strh) + chunk(b"strf", strf))
    hdrl = chunk(b"LIST", b"hdrl" + chunk(b"avih", avih) + strl)
    movi, index, offset = [], [], 4
    for jpeg in jpegs:
        movi.append(chunk(b"00dc", jpeg))
        index.append(struct.pack("<4sIII", b"00dc", 0x10, offset, len(jpeg)))
        offset += len(movi[-1])
    body = b"AVI " + hdrl + chunk(b"LIST", b"movi" + b"".join(movi)) + chunk(b"idx1", b"".join(index))
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def gradient_frames(n, width, height):
    """``n`` smooth RGB frames (lossy codecs keep them close), each a little brighter."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([200 * x / max(width - 1, 1), 200 * y / max(height - 1, 1), np.full(x.shape, 60.0)], -1)
    return [np.clip(base + 5 * i, 0, 255).astype(np.uint8) for i in range(n)]


class WrappedWriter:
    """OpenCV's writer with ``on_write(call_number, frame)`` deciding whether each frame is written."""

    def __init__(self, writer, on_write):
        self.writer, self.on_write, self.calls = writer, on_write, 0

    def write(self, frame):
        self.calls += 1
        if self.on_write(self.calls, frame) is not False:
            self.writer.write(frame)

    def release(self):
        self.writer.release()


def wrap_writer(monkeypatch, on_write):
    real = video._open_writer

    def open_writer(*args):
        writer, codec = real(*args)
        return WrappedWriter(writer, on_write), codec

    monkeypatch.setattr(video, "_open_writer", open_writer)


def test_a_video_written_incompletely_is_an_error_and_nothing_is_left(clip, tmp_path, monkeypatch):
    """OpenCV's writer drops the frames it cannot write (a full disk) without a word: the video is read
    back before the rename. Simulated here by a writer that stops writing after 5 frames."""
    out = tmp_path / "out" / "o.mp4"
    wrap_writer(monkeypatch, lambda call, frame: call <= 5)
    with pytest.raises(VideoWriteError) as info:
        detect_video(Boxes(), clip, out, tmp_path / "out" / "o.jsonl", progress=False)
    assert str(info.value) == f"{out}: the video could not be written completely (disk full?)"
    assert_only(tmp_path, [])  # no video, no JSON lines, no temporary, no folder made for them
    monkeypatch.undo()
    result = detect_video(Boxes(), clip, out, progress=False)  # the same, written whole
    assert result.frames == FRAMES and len(read_frames(out)[0]) == FRAMES


def test_a_corrupt_frame_is_reported_where_the_frame_count_is_unknown(tmp_path):
    """An AVI whose header says 0 frames: a frame that cannot be decoded is not taken for the end."""
    from PIL import Image

    jpegs = []
    for frame in gradient_frames(8, 64, 48):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, "JPEG")
        jpegs.append(buffer.getvalue())
    jpegs[3] = b"\xff\xd8\xff" + bytes(len(jpegs[3]) - 3)  # frame 3: the marker, then zeros
    source = write_avi(tmp_path / "nocount.avi", jpegs=jpegs, total=0)
    capture = cv2.VideoCapture(os.fspath(source))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 0  # OpenCV does not know the count
    capture.release()
    with pytest.raises(VideoReadError, match=r"nocount\.avi: frame 3 cannot be decoded \(corrupt\); "
                                             r"3 frames \(0 to 2\) processed") as info:
        detect_video(Boxes(), source, out_jsonl=tmp_path / "n.jsonl", progress=False)
    assert info.value.result.frames == 3 and info.value.result.frame_count is None
    assert [r["frame"] for r in read_jsonl(tmp_path / "n.jsonl")] == [0, 1, 2]


needs_sigint = pytest.mark.skipif(not hasattr(signal, "pthread_kill") or sys.platform == "win32",
                                  reason="sends SIGINT to itself (POSIX)")


@needs_sigint
def test_interrupted_says_ctrl_c_or_key(clip, tmp_path, monkeypatch, python_sigint):
    """Ctrl-C (SIGINT, or a KeyboardInterrupt where no handler could be set) gives "ctrl-c";
    the window's q gives "key" (test_show_uses_the_window_and_q_stops)."""

    def ctrl_c(call, frame):
        if call == 4:
            signal.raise_signal(signal.SIGINT)  # Python's handler runs before this returns

    wrap_writer(monkeypatch, ctrl_c)
    result = detect_video(Boxes(), clip, tmp_path / "s.mp4", progress=False, batch_size=2)
    assert result.interrupted == "ctrl-c" and result.stopped is None and result.frames == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back

    def keyboard_interrupt(call, frame):
        if call == 4:
            raise KeyboardInterrupt

    wrap_writer(monkeypatch, keyboard_interrupt)
    result = detect_video(Boxes(), clip, tmp_path / "k.mp4", progress=False, batch_size=2)
    assert result.interrupted == "ctrl-c" and result.frames == 3
    assert len(read_frames(tmp_path / "k.mp4")[0]) == 3
    assert not detect_video(Boxes(), clip, tmp_path / "n.mp4", progress=False, max_frames=2).interrupted


@needs_sigint
def test_ctrl_c_keeps_the_video_and_the_json_lines_in_step(clip, tmp_path, monkeypatch, python_sigint):
    """Each JSON line is written after its video frame: Ctrl-C while a frame is written leaves as many
    lines as frames."""

    def ctrl_c(call, frame):
        if call == 6:
            signal.raise_signal(signal.SIGINT)

    wrap_writer(monkeypatch, ctrl_c)
    result = detect_video(Boxes(), clip, tmp_path / "o.mp4", tmp_path / "o.jsonl", progress=False, batch_size=4)
    records = read_jsonl(tmp_path / "o.jsonl")
    assert [r["frame"] for r in records] == list(range(result.frames))
    assert len(read_frames(tmp_path / "o.mp4")[0]) == result.frames == result.processed
    assert result.interrupted == "ctrl-c" and 6 <= result.frames < FRAMES


@needs_sigint
def test_a_second_ctrl_c_while_the_threads_finish(clip, tmp_path, python_sigint):
    """Ctrl-C while the model works on a batch, then again while detect_video waits for it: the outputs
    the first one kept are written, no thread is left running."""

    class Slow(Boxes):
        def detect_arrays(self, images):
            if self.sizes:  # the second batch: both Ctrl-C arrive while the model has it
                time.sleep(0.4)  # the first batch is written
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.4)  # detect_video has stopped its loop and waits for this thread
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.4)
            return super().detect_arrays(images)

    try:
        result = detect_video(Slow(), clip, tmp_path / "o.mp4", tmp_path / "o.jsonl", progress=False, batch_size=2)
    except KeyboardInterrupt:
        pytest.fail("the second Ctrl-C escaped detect_video")
    assert result.interrupted == "ctrl-c" and result.frames in (1, 2)  # 2 unless the first batch was slow
    assert len(read_frames(tmp_path / "o.mp4")[0]) == result.frames
    assert [r["frame"] for r in read_jsonl(tmp_path / "o.jsonl")] == list(range(result.frames))
    assert not [t.name for t in threading.enumerate() if t.name.startswith("ssd300-video")]
    assert_only(tmp_path, ["o.jsonl", "o.mp4"])


def test_a_video_opencv_cannot_write_is_a_video_write_error(clip, tmp_path):
    """Named by its output (not the temporary file), with the frame size and rate; nothing left."""
    source = write_avi(tmp_path / "wide.avi", [np.zeros((16, 9000, 3), np.uint8)] * 2)
    out = tmp_path / "out" / "wide.mp4"
    with pytest.raises(VideoWriteError) as info:
        detect_video(Boxes(), source, out, tmp_path / "out" / "wide.jsonl", progress=False)
    assert str(info.value) == (f"{out}: OpenCV cannot write a .mp4 video of 9000x16 pixels at 10 frames/s "
                               f"(tried codecs avc1, mp4v)")
    assert_only(tmp_path, ["wide.avi"])
    with pytest.raises(VideoWriteError, match="video output would overwrite the input video"):
        detect_video(Boxes(), clip, clip, progress=False)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_while_writing_the_json_lines(clip, tmp_path, monkeypatch):
    """An OSError writing the JSON lines (here /dev/full: ENOSPC) is a VideoWriteError naming the file."""
    monkeypatch.setattr(video, "open", lambda *args, **kwargs: open("/dev/full", "w"), raising=False)
    out = tmp_path / "o.jsonl"
    with pytest.raises(VideoWriteError) as info:
        detect_video(Boxes(), clip, tmp_path / "o.mp4", out, progress=False)
    assert str(info.value) == f"{out}: cannot write (No space left on device)"
    assert_only(tmp_path, [])


def test_odd_frame_sizes_are_padded_not_cropped(tmp_path):
    """The encoders drop an odd last row / column: it is repeated instead, and the result tells the
    source's size."""
    frames = gradient_frames(3, 17, 33)
    source = write_avi(tmp_path / "odd.avi", frames)
    decoded = read_frames(source)[0]
    assert decoded[0].shape == (33, 17, 3)
    for ext in (".mp4", ".avi"):
        result = detect_video(Boxes(), source, tmp_path / f"o{ext}", progress=False, min_score=2.0)
        assert (result.width, result.height, result.frames) == (17, 33, 3)
        written = read_frames(tmp_path / f"o{ext}")[0]
        assert len(written) == 3 and written[0].shape == (34, 18, 3)
        for got, want in zip(written, decoded):
            got = got.astype(int)
            assert np.abs(got[:33, :17] - want).mean() < 6  # the frame where it was, not shifted
            assert np.abs(got[33, :17] - want[32]).mean() < 12 and np.abs(got[:33, 17] - want[:, 16]).mean() < 12
    write_avi(tmp_path / "dot.avi", [np.full((1, 1, 3), 200, np.uint8)] * 2)
    result = detect_video(Boxes(), tmp_path / "dot.avi", tmp_path / "dot.mp4", progress=False)
    assert (result.width, result.height) == (1, 1) and read_frames(tmp_path / "dot.mp4")[0][0].shape == (2, 2, 3)


def test_frames_waiting_for_the_model_are_bounded_in_bytes(tmp_path, monkeypatch):
    """MAX_BUFFERED_BYTES bounds the decoded frames waiting for the model (not only their number),
    and the model still gets full batches."""
    source = tmp_path / "c.avi"
    video.write_synthetic_video(source, frames=30, size=(32, 24), seed=3)
    frame_bytes = 32 * 24 * 3
    monkeypatch.setattr(video, "MAX_BUFFERED_BYTES", 3 * frame_bytes)  # 3 frames (batch 2 would allow 6)
    real = cv2.VideoCapture

    class CountingCapture:
        reads = 0

        def __init__(self, *args):
            self.capture = real(*args)

        def read(self):
            CountingCapture.reads += 1
            return self.capture.read()

        def __getattr__(self, name):
            return getattr(self.capture, name)

    class Holding(Boxes):
        def detect_arrays(self, images):
            if not self.sizes:  # hold the first batch until the reader can read no further
                last, deadline = -1, time.monotonic() + 4
                while CountingCapture.reads != last and time.monotonic() < deadline:
                    last = CountingCapture.reads
                    time.sleep(0.3)
                self.read_while_held = CountingCapture.reads
            return super().detect_arrays(images)

    monkeypatch.setattr(cv2, "VideoCapture", CountingCapture)
    detector = Holding()
    result = detect_video(detector, source, out_jsonl=tmp_path / "c.jsonl", batch_size=2, progress=False)
    assert result.processed == 30 and detector.sizes == [2] * 15
    # The model's 2 frames, 3 waiting in the queue, 1 decoded by the reader waiting for room.
    assert detector.read_while_held <= 2 + 3 + 1


def test_draw_detections_keeps_boxes_and_labels_inside_the_picture():
    from PIL import Image, ImageDraw, ImageFont

    from ssd300.visualize import class_colour, draw_detections

    def label_size(text):
        left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox(
            (0, 0), text, font=ImageFont.load_default())
        return right - left + 4, bottom - top + 4  # the filled box: the text and 2 px margins

    width, height = 300, 150
    drawn = np.asarray(draw_detections(np.full((height, width, 3), 255, np.uint8), [
        [3, 0.91, 270, 45, 300, 150],  # on the right and bottom edges
        [1, 0.8, 5, 5, 5.5, 9]],  # thinner than a pixel
        CLASSES))
    coloured = (drawn == class_colour(3)).all(-1)
    # The 2-pixel outline whole on the right and bottom edges, as on the left and top.
    assert coloured[100, 270:300].tolist() == [True] * 2 + [False] * 26 + [True] * 2
    assert coloured[45:150, 285].tolist() == [True] * 2 + [False] * 101 + [True] * 2
    # The label above the box, moved left so that it ends at the last column.
    label_w, label_h = label_size("triangle 0.91")
    assert coloured[45 - label_h].nonzero()[0].tolist() == list(range(width - 1 - label_w, width))
    text = (drawn[45 - label_h:45].sum(-1) < 200).nonzero()[1]  # the black (anti-aliased) text
    assert text.min() > width - 1 - label_w and text.max() < width - 1
    # A picture too low for the label above or below the box's top: moved up to end at the last row.
    small = np.asarray(draw_detections(np.full((20, 120, 3), 255, np.uint8), [[2, 0.5, 2, 10, 60, 20]], CLASSES))
    label_w, label_h = label_size("square 0.50")
    column = (small[:, 2 + label_w // 2] != 255).any(-1)
    assert column.nonzero()[0].tolist() == list(range(20 - 1 - label_h, 20))


def test_ffmpeg_messages_are_hidden_even_after_an_earlier_capture(clip, tmp_path):
    """FFmpeg reads OPENCV_FFMPEG_LOGLEVEL once, when OpenCV first uses it: a capture opened before
    ssd300.video sets it would let the failed H.264 encoder probe print (on OpenCV builds that probe
    it). The errors raised still show, and stderr works after."""
    wide = write_avi(tmp_path / "wide.avi", [np.zeros((16, 9000, 3), np.uint8)] * 2)
    script = "\n".join([
        "import os, sys, cv2, numpy as np",
        "cv2.VideoCapture(sys.argv[1]).release()",
        "from ssd300 import video",
        "class Nothing:",
        "    classes = ('a',)",
        "    def detect_arrays(self, images): return [np.zeros((0, 6), np.float32) for _ in images]",
        "video.detect_video(Nothing(), sys.argv[1], sys.argv[2], progress=False)",
        "os.write(2, b'stderr works\\n')",
        "video.detect_video(Nothing(), sys.argv[3], sys.argv[4], progress=False)"])
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", script, os.fspath(clip), os.fspath(tmp_path / "o.mp4"),
                          os.fspath(wide), os.fspath(tmp_path / "w.mp4")],
                         cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert not [line for line in run.stderr.splitlines() if line.startswith("[")], run.stderr  # "[h264_v4l2m2m @ 0x..."
    assert run.returncode == 1 and len(read_frames(tmp_path / "o.mp4")[0]) == FRAMES
    assert "stderr works" in run.stderr
    assert f"VideoWriteError: {tmp_path / 'w.mp4'}: OpenCV cannot write a .mp4 video of 9000x16" in run.stderr


def test_a_failed_video_leaves_no_output_folder(clip, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(VideoReadError, match="video not found"):
        detect_video(Boxes(), tmp_path / "nope.mp4", out / "a" / "b" / "o.mp4", out / "c" / "o.jsonl", progress=False)
    assert_only(tmp_path, [])
    write_avi(tmp_path / "in.avi", [np.zeros((16, 9000, 3), np.uint8)])
    (tmp_path / "kept").mkdir()
    with pytest.raises(VideoWriteError, match="cannot write a .mp4 video"):
        detect_video(Boxes(), tmp_path / "in.avi", tmp_path / "kept" / "a" / "o.mp4", out / "c" / "o.jsonl",
                     progress=False)
    assert_only(tmp_path, ["in.avi", "kept"])
    assert_only(tmp_path / "kept", [])


def test_argument_errors_name_the_argument(clip, tmp_path):
    for kwargs, message in ((dict(every=0), "every must be >= 1, got 0"),
                            (dict(batch_size=0), "batch_size must be >= 1, got 0"),
                            (dict(start_frame=-1), "start_frame must be >= 0, got -1"),
                            (dict(max_frames=0), "max_frames must be >= 1, got 0")):
        with pytest.raises(UserError) as info:
            detect_video(Boxes(), clip, out_jsonl=tmp_path / "o.jsonl", progress=False, **kwargs)
        assert str(info.value) == f"detect_video: {message}"
    with pytest.raises(UserError, match=r"^detect_video: min_score must be a finite number, got nan$"):
        detect_video(Boxes(), clip, out_jsonl=tmp_path / "o.jsonl", progress=False, min_score=float("nan"))
    with pytest.raises(UserError, match=r"^detect_video: detector must be a Detector .*got str$"):
        detect_video("w.h5", clip, out_jsonl=tmp_path / "o.jsonl", progress=False)
    assert_only(tmp_path, [])


def test_save_atomic_names_a_picture_it_cannot_write(tmp_path, monkeypatch):
    import errno

    from PIL import Image

    from ssd300.errors import UserError
    from ssd300.visualize import save_atomic

    picture = Image.new("RGB", (4, 4))
    with pytest.raises(UserError, match=rf"^{tmp_path / 'no' / 'x.png'}: cannot write \("):
        save_atomic(picture, tmp_path / "no" / "x.png")
    (tmp_path / "old.png").write_bytes(b"old")

    def full_disk(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(UserError, match=rf"^{tmp_path / 'old.png'}: cannot write \(No space left on device\)$"):
        save_atomic(picture, tmp_path / "old.png")
    assert sorted(os.listdir(tmp_path)) == ["old.png"] and (tmp_path / "old.png").read_bytes() == b"old"


def test_save_atomic_takes_the_format_from_the_extension(tmp_path):
    from PIL import Image

    from ssd300.errors import UserError
    from ssd300.visualize import save_atomic

    picture = Image.new("RGB", (4, 4), (200, 10, 10))
    for name, magic in (("a.png", b"\x89PNG"), ("b.JPG", b"\xff\xd8"), ("c.jpeg", b"\xff\xd8")):
        save_atomic(picture, tmp_path / name)
        assert (tmp_path / name).read_bytes()[:len(magic)] == magic, name
    assert np.asarray(Image.open(tmp_path / "a.png")).tolist() == np.asarray(picture).tolist()
    for name, shown in (("noext", "none"), ("d.txt", ".txt")):
        with pytest.raises(UserError, match=rf"^{tmp_path / name}: cannot tell which picture format .*\({shown}\)"):
            save_atomic(picture, tmp_path / name)
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.JPG", "c.jpeg"]
