"""Detection on videos (ssd300.video): outputs, equality with picture detection, VideoTest, bad input.

A "peaked" SSD300 at 96x96 (random weights, the background bias lowered)
gives a few dozen confident, content-dependent detections per frame.
"""

import json
import os
import sys

import numpy as np
import pytest

from ssd300.errors import UserError

cv2 = pytest.importorskip("cv2", reason="OpenCV (the video extra) is not installed")

from ssd300 import video  # noqa: E402
from ssd300.video import VideoReadError, VideoTest, detect_video, is_video_path  # noqa: E402

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
    import subprocess

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
    assert result.shown and result.interrupted and result.stopped is None
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
