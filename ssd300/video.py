"""Detection on video files and cameras (OpenCV): an annotated video, JSON lines, ``VideoTest``.

:func:`detect_video` runs a :class:`ssd300.detect.Detector` on every frame (or
every N-th) of a video file or a camera and writes the video with the
detections drawn (same size and frame rate; MP4 with the H.264 ``avc1`` codec
where OpenCV's writer offers it, else ``mp4v``) and one JSON line per
processed frame. Three stages overlap: a thread decodes frames, a thread runs
the detector on batches of them, and the calling thread draws, encodes,
writes, shows the window and the progress bar, so that the whole runs near
the model's own rate. The detections are ``Detector.detect_arrays``'s, the
same numbers as for the frame saved as a picture.

:class:`VideoTest` is rykov8/ssd_keras's ``testing_utils/videotest.py`` class
with its bugs fixed (see its docstring).

FFmpeg's own messages are silenced unless ``OPENCV_FFMPEG_LOGLEVEL`` is set
(16 shows its errors): by that variable when OpenCV's FFmpeg backend starts
after :func:`import_cv2`, and, since FFmpeg reads it only once, by sending
file descriptor 2 to ``/dev/null`` while the writer probes its codecs.
OpenCV is an optional dependency (``pip install "ssd300[video]"``, which
installs ``opencv-python-headless``): without it the functions that read or
write videos raise a :class:`UserError` saying so.

Boxes in the outputs are in pixels of the frame: ``xmin, ymin, xmax, ymax``.
"""

import contextlib
import dataclasses
import json
import math
import os
import queue
import sys
import threading
import time

import numpy as np

from .atomic import atomic_path, missing_folders, remove_empty_folders, writing
from .ctrl_c import ctrl_c_calls
from .errors import UserError

#: The extra that installs OpenCV, named in the errors.
INSTALL_HINT = 'pip install "ssd300[video]"  (or: pip install opencv-python-headless)'

#: Extensions taken for videos without opening the file (checked before
#: Pillow's picture extensions: Pillow claims ``.mpg`` for MPEG stills).
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
    ".ts", ".mts", ".m2ts", ".ogv", ".mjpeg", ".mjpg", ".asf", ".vob"})

#: Codecs tried in order for each output extension (the first OpenCV's
#: writer opens wins). pip's OpenCV wheels lack an H.264 encoder, so ``mp4v``
#: (MPEG-4 Part 2) is what they write to MP4.
OUTPUT_CODECS = {".mp4": ("avc1", "mp4v"), ".m4v": ("avc1", "mp4v"), ".mov": ("avc1", "mp4v"),
                 ".mkv": ("avc1", "mp4v", "MJPG"), ".avi": ("MJPG", "XVID", "mp4v")}

#: Frame rate written when the source does not tell (cameras often do not).
DEFAULT_FPS = 30.0

#: Frames waiting for the model are flushed as a smaller batch past this many
#: bytes, which bounds the memory ``every=N`` with large ``N`` would take.
MAX_BUFFERED_BYTES = 256 * 2 ** 20

WINDOW_NAME = "SSD result"

#: The user chose FFmpeg's log level: its messages are then not hidden.
_FFMPEG_LOGLEVEL_GIVEN = "OPENCV_FFMPEG_LOGLEVEL" in os.environ

_END = object()  # ends a queue


class VideoReadError(UserError):
    """A video file that cannot be read: missing, not a video, or stopped before its end.

    What a caller going through several inputs reports and skips, as an
    unreadable picture. A video that stopped before its end (truncated, or a
    frame that cannot be decoded) had the frames before it processed and the
    outputs written; ``result`` is the :class:`VideoResult` of those frames.
    For a file that could not be opened (or whose first frame could not be
    read) nothing was written and ``result`` is ``None``. (A camera that
    cannot be opened is a plain :class:`UserError`.)
    """

    def __init__(self, message, result=None):
        super().__init__(message)
        self.result = result


class VideoWriteError(UserError):
    """An output of :func:`detect_video` that cannot be written.

    The annotated video (or the JSON lines) of one input could not be
    written: OpenCV cannot encode that frame size or rate, the video would
    overwrite its input, the disk is full or the write failed part-way. The
    message names the output file. Nothing is left under the output names
    (a file that was there keeps its content), so a caller going through
    several inputs reports it and skips that input, as a
    :class:`VideoReadError`.
    """


@dataclasses.dataclass
class VideoResult:
    """What :func:`detect_video` did.

    Attributes:
        source: the file path or camera index read.
        frames: frames read and written (from ``start_frame`` on).
        processed: frames the detector ran on (one JSON line each).
        width, height: the source's frame size in pixels (the boxes' frame).
            Video encoders need even sizes: an odd width or height is written
            with one more column or row, a copy of the last, so that no
            pixel of the frame is cut off.
        fps: the frame rate written (the source's, else ``DEFAULT_FPS``).
        frame_count: the frames the source announces, ``None`` when unknown.
        codec: the FourCC of the video written, ``None`` without ``out_video``.
        out_video, out_jsonl: the files written (``None`` when not asked for).
        seconds: wall time from the first frame read to the last written.
        stopped: why reading stopped before the end, or ``None``.
        interrupted: ``False``, or why the user stopped it before its end:
            ``"ctrl-c"`` (Ctrl-C: a caller should stop altogether) or ``"key"``
            (the window's ``q`` / Esc key, or the window closed). Both are
            true; the frames done are kept in either case.
        shown: a window showed the frames.
    """

    source: object
    frames: int = 0
    processed: int = 0
    width: int = 0
    height: int = 0
    fps: float = DEFAULT_FPS
    frame_count: int = None
    codec: str = None
    out_video: str = None
    out_jsonl: str = None
    seconds: float = 0.0
    stopped: str = None
    interrupted: object = False  # False, "ctrl-c" or "key"
    shown: bool = False

    @property
    def frames_per_second(self):
        """Frames read, processed and written per second of wall time."""
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


def import_cv2(what="reading and writing videos"):
    """The ``cv2`` module.

    Raises:
        UserError: OpenCV is not installed; the message names the extra.
    """
    # FFmpeg prints its own errors to stderr (a failed H.264 encoder probe,
    # each undecodable packet); the errors raised here say what matters.
    # OpenCV reads this once, when its FFmpeg backend starts.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")  # AV_LOG_FATAL
    try:
        import cv2
    except ImportError as e:
        raise UserError(f"{what} needs OpenCV, which is not installed ({e}); install it with: "
                        f"{INSTALL_HINT}") from None
    return cv2


@contextlib.contextmanager
def _quiet(cv2):
    """Silence OpenCV's (and FFmpeg's) log while probing codecs and cameras."""
    logging = cv2.utils.logging
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(level)


def is_video_path(path, probe=True):
    """Whether ``path`` names a video rather than a picture.

    By extension first (:data:`VIDEO_EXTENSIONS`, then Pillow's picture
    extensions); for another extension, when ``probe`` and the file exists:
    not a picture to Pillow and OpenCV decodes a frame of it. Without OpenCV
    an unknown extension is taken for a picture.

    Args:
        path: a file path.
        probe: open a file whose extension tells nothing.

    Returns:
        bool.
    """
    from PIL import Image

    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_EXTENSIONS:
        return True
    if ext in Image.registered_extensions() or not probe or not os.path.isfile(path):
        return False
    try:
        with Image.open(path):
            return False
    except Exception:  # noqa: BLE001 - anything Pillow cannot read may be a video
        pass
    try:
        cv2 = import_cv2()
    except UserError:
        return False
    with _quiet(cv2):
        capture = cv2.VideoCapture(path)
        try:
            return bool(capture.isOpened() and capture.grab())
        finally:
            capture.release()


def display_available(cv2=None):
    """``(True, None)`` when a window can be shown, else ``(False, reason)``.

    A window needs a display (``DISPLAY`` or ``WAYLAND_DISPLAY`` on Linux and
    the BSDs) and an OpenCV built with a GUI (``opencv-python``, not
    ``opencv-python-headless``).
    """
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")) and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY is not set)"
    cv2 = cv2 or import_cv2("showing a video")
    gui = [line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
           if line.strip().startswith("GUI:")]
    if gui and gui[0].upper().startswith("NONE"):
        return False, ("this OpenCV has no window support (opencv-python-headless); "
                       "install opencv-python to show videos")
    return True, None


def _camera_index(source):
    if isinstance(source, (bool, np.bool_)):
        raise UserError(f"video source must be a file path or a camera index, got {source!r}")
    if isinstance(source, (int, np.integer)):
        if source < 0:
            raise UserError(f"camera index must be >= 0, got {source}")
        return int(source)
    return None


def _source_name(source):
    return f"camera {source}" if _camera_index(source) is not None else os.fspath(source)


def _open_source(cv2, source, start_frame):
    """Open a file or camera and read its first frame.

    Returns:
        ``(capture, first_frame_bgr, first_time_s, frame_count, fps)``;
        ``frame_count`` and ``fps`` are ``None`` when the source does not tell.
    """
    camera = _camera_index(source)
    name = _source_name(source)
    if camera is None:
        path = os.fspath(source)
        if not os.path.exists(path):
            raise VideoReadError(f"{path}: video not found")
        if os.path.isdir(path):
            raise VideoReadError(f"{path}: is a folder, not a video")
        with _quiet(cv2):
            capture = cv2.VideoCapture(path)
        if not capture.isOpened():
            raise VideoReadError(f"{path}: not a readable video (OpenCV cannot open it)")
    else:
        with _quiet(cv2):
            capture = cv2.VideoCapture(camera)
        if not capture.isOpened():
            raise UserError(f"{name}: no camera at this index (OpenCV cannot open it)")
    try:
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        frame_count = int(count) if camera is None and 0 < count < 2 ** 40 else None
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = float(fps) if math.isfinite(fps) and 0 < fps <= 1000 else None
        if start_frame:
            if frame_count is not None and start_frame >= frame_count:
                raise VideoReadError(f"{name}: start_frame {start_frame} is past the last frame "
                                     f"({frame_count} frames)")
            if camera is None:
                capture.set(cv2.CAP_PROP_POS_FRAMES, start_frame)
            else:
                for _ in range(start_frame):  # a camera cannot seek: drop frames
                    capture.grab()
        ok, frame = capture.read()
        if not ok or frame is None:
            where = f" at frame {start_frame}" if start_frame else ""
            error = UserError if camera is not None else VideoReadError
            raise error(f"{name}: no frame could be read{where} "
                        f"({'the camera gave none' if camera is not None else 'empty or not a video'})")
        return capture, frame, _frame_time(cv2, capture, camera, start_frame, fps), frame_count, fps
    except BaseException:
        capture.release()
        raise


def _frame_time(cv2, capture, camera, index, fps, clock_start=None):
    """Time stamp in seconds of the frame just read: the file's own, else from the frame number."""
    if camera is not None:
        return 0.0 if clock_start is None else time.monotonic() - clock_start
    msec = capture.get(cv2.CAP_PROP_POS_MSEC)
    if math.isfinite(msec) and msec >= 0:
        return msec / 1000.0
    return index / (fps or DEFAULT_FPS)


def _check_output(path, source, kind):
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{path}: {kind} output is a folder")
    if (_camera_index(source) is None and os.path.exists(path) and os.path.exists(source)
            and os.path.samefile(path, os.fspath(source))):
        raise VideoWriteError(f"{path}: {kind} output would overwrite the input video")
    parent = os.path.dirname(os.path.abspath(path))
    blocker = parent
    while not os.path.exists(blocker) and os.path.dirname(blocker) != blocker:
        blocker = os.path.dirname(blocker)
    if not os.path.isdir(blocker):
        raise UserError(f"{path}: cannot write there, {blocker} is a file, not a folder")
    return path


def _make_folders(paths, created):
    """Create the folders of the output ``paths``; each chain created is appended to ``created``."""
    for path in paths:
        parent = os.path.dirname(os.path.abspath(path))
        created.append(missing_folders(parent))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            raise UserError(f"{path}: cannot create the folder {parent} ({e.strerror or e})") from None
        if not os.access(parent, os.W_OK):
            raise UserError(f"{path}: the folder {parent} is not writable")


def _close_quietly(file):
    try:
        file.close()
    except OSError:  # the error that made us give up was reported already
        pass


@contextlib.contextmanager
def _stderr_silenced():
    """Send file descriptor 2 (where FFmpeg prints) to ``/dev/null`` inside the block.

    ``OPENCV_FFMPEG_LOGLEVEL`` only counts if it is set before OpenCV's FFmpeg
    backend starts (a ``cv2.VideoCapture`` before :func:`import_cv2` starts
    it), so the failed H.264 encoder probes would print. Nothing is hidden
    when the user set the variable; errors raised after the block show.
    """
    saved = None
    if not _FFMPEG_LOGLEVEL_GIVEN:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            sys.stderr.flush()  # Python's own pending output goes where it was meant to
        try:
            saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
        except OSError:
            if saved is not None:
                os.close(saved)
            saved = None
        else:
            os.dup2(devnull, 2)
            os.close(devnull)
    try:
        yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)


def _open_writer(cv2, tmp, fps, size, path):
    """``(cv2.VideoWriter, codec)`` on ``tmp``, trying ``path``'s extension's codecs in order.

    Raises:
        VideoWriteError: no codec opens for this frame size and rate; the
            message names ``path`` (the output, not the temporary file).
    """
    ext = os.path.splitext(path)[1].lower()
    with _quiet(cv2), _stderr_silenced():
        for codec in OUTPUT_CODECS[ext]:
            writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*codec), fps, size)
            if writer.isOpened():
                return writer, codec
            writer.release()
    raise VideoWriteError(f"{path}: OpenCV cannot write a {ext} video of {size[0]}x{size[1]} pixels at "
                          f"{fps:g} frames/s (tried codecs {', '.join(OUTPUT_CODECS[ext])})")


def _check_written(cv2, tmp, path, frames):
    """Raise unless the closed video ``tmp`` opens and holds ``frames`` frames.

    OpenCV's writer drops what it cannot write (a full disk) without a word;
    the container's frame count, read back, tells. It equals the frames
    written for every extension of :data:`OUTPUT_CODECS`.
    """
    with _quiet(cv2):
        capture = cv2.VideoCapture(tmp)
    try:
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT) if capture.isOpened() else -1
    finally:
        capture.release()
    if count != frames:
        raise VideoWriteError(f"{path}: the video could not be written completely (disk full?)")


def _even(cv2, bgr):
    """``bgr`` with its last row / column repeated where its height / width is odd.

    The encoders (``mp4v``, ``MJPG``, ``XVID``; 4:2:0 chroma) silently drop
    an odd last row or column.
    """
    height, width = bgr.shape[:2]
    if height % 2 or width % 2:
        bgr = cv2.copyMakeBorder(bgr, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)
    return bgr


def _ctrl_c_stops(stop, result):
    """Inside the block, Ctrl-C sets ``stop`` and ``result.interrupted = "ctrl-c"`` instead of raising.

    No frame is then half-written (its video frame without its JSON line),
    and a second Ctrl-C cannot break the cleanup (the threads' join, the
    checks and renames of the outputs). Where :func:`~ssd300.ctrl_c.ctrl_c_calls`
    cannot take over SIGINT, a ``KeyboardInterrupt`` is caught where it lands.
    """

    def handler():
        result.interrupted = "ctrl-c"
        stop.set()

    return ctrl_c_calls(handler)


def _get(q, stop):
    """``q.get`` that returns ``_END`` once ``stop`` is set and nothing comes."""
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return _END


def _put(q, item, stop):
    """``q.put`` that gives up when ``stop`` is set (the consumer has gone)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _read_frames(cv2, capture, camera, name, first, first_time, start_frame, frame_count, fps,
                 max_frames, out_q, stop, state):
    """Reader thread: ``(index, time_s, rgb_frame)`` items into ``out_q``, then ``_END``."""
    try:
        clock = time.monotonic() - first_time
        index, frame, stamp = start_frame, first, first_time
        while True:
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            if not _put(out_q, (index, stamp, rgb), stop):
                return
            index += 1
            if max_frames is not None and index - start_frame >= max_frames:
                return
            if stop.is_set():
                return
            ok, frame = capture.read()
            if not ok or frame is None:
                if camera is not None:
                    state["stopped"] = f"{name}: no frame after frame {index - 1} (camera disconnected?)"
                elif frame_count is None or index < frame_count:
                    # A frame that fails to decode is followed by frames that do (also
                    # where the container does not tell its frame count).
                    if capture.grab():
                        state["stopped"] = f"{name}: frame {index} cannot be decoded (corrupt)"
                    elif frame_count is not None and index < frame_count - 1:
                        # counts estimated from the duration can be 1 off
                        state["stopped"] = (f"{name}: the video ends at frame {index}, before the "
                                            f"{frame_count} frames its header announces (truncated?)")
                return
            stamp = _frame_time(cv2, capture, camera, index, fps, clock)
    except BaseException as e:  # noqa: BLE001 - handed to the calling thread
        state["error"] = e
        stop.set()
    finally:
        _put(out_q, _END, stop)


def _run_detector(detector, every, start_frame, batch_size, in_q, out_q, stop, state):
    """Model thread: batches of frames through ``detector.detect_arrays``.

    Puts lists of ``(index, time_s, rgb, detections, processed)`` into
    ``out_q`` in frame order; a frame not processed (``every > 1``) carries
    the detections of the last processed frame before it.
    """
    last = np.zeros((0, 6), np.float32)
    pending, todo, nbytes = [], [], 0

    def flush():
        nonlocal last, pending, todo, nbytes
        found = iter(detector.detect_arrays([item[2] for item in todo]))
        batch = []
        for index, stamp, rgb, processed in pending:
            if processed:
                last = next(found)
            batch.append((index, stamp, rgb, last, processed))
        pending, todo, nbytes = [], [], 0
        return _put(out_q, batch, stop)

    try:
        while True:
            item = _get(in_q, stop)
            if item is _END or stop.is_set():
                break
            index, stamp, rgb = item
            processed = (index - start_frame) % every == 0
            pending.append((index, stamp, rgb, processed))
            nbytes += rgb.nbytes
            if processed:
                todo.append(item)
            # Frames before the batch's first processed one are ready now.
            if not todo or len(todo) >= batch_size or nbytes > MAX_BUFFERED_BYTES:
                if not flush():
                    return
        if pending and not stop.is_set():
            flush()
    except BaseException as e:  # noqa: BLE001 - handed to the calling thread
        state["error"] = e
        stop.set()
    finally:
        _put(out_q, _END, stop)


def detection_record(index, stamp, detections, classes):
    """The JSON-lines record of one frame.

    Args:
        index: frame number (0 = the video's first frame).
        stamp: time stamp in seconds.
        detections: ``(K, 6)`` ``[label, score, xmin, ymin, xmax, ymax]`` in pixels.
        classes: class names without the background.

    Returns:
        ``{"frame", "time", "detections": [{"label", "class", "score", "box"}]}``,
        as ``ssd300 detect`` writes for a picture.
    """
    return {"frame": int(index), "time": round(float(stamp), 6), "detections": [
        {"label": int(d[0]), "class": classes[int(d[0]) - 1] if 0 < int(d[0]) <= len(classes) else str(int(d[0])),
         "score": float(d[1]), "box": [float(v) for v in d[2:6]]} for d in detections]}


def _draw_fps(image, text):
    """The original's frame-rate counter: black text on a white box, top left."""
    from PIL import ImageDraw, ImageFont

    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    _, _, right, bottom = draw.textbbox((3, 2), text, font=font)
    draw.rectangle((0, 0, right + 3, bottom + 3), fill=(255, 255, 255))
    draw.text((3, 2), text, fill=(0, 0, 0), font=font)


def detect_video(detector, source, out_video=None, out_jsonl=None, every=1, batch_size=8, show=False,
                 progress=True, min_score=0.5, start_frame=0, max_frames=None, fps_overlay=False):
    """Detect on every (or every N-th) frame of a video file or camera.

    Decoding, the detector and drawing/encoding run in three threads, so the
    whole goes near the detector's own rate. Each output is written to a
    temporary name and renamed when complete; the video is first read back,
    and must hold every frame written. Each JSON line is written after its
    frame of the video, so the two agree also after a Ctrl-C.

    Args:
        detector: a :class:`ssd300.detect.Detector`.
        source: a video file path, or a camera index (``int``).
        out_video: the annotated video to write (``.mp4``, ``.m4v``, ``.mov``,
            ``.mkv`` or ``.avi``), with the source's frame size and rate
            (an odd width or height gets one more column or row, a copy of
            the last: the encoders would cut one off); ``None`` for none.
        out_jsonl: the JSON-lines file of detections, one line per processed
            frame (see :func:`detection_record`); ``None`` for none.
        every: run the detector on every ``every``-th frame (frame numbers
            ``start_frame``, ``start_frame + every``, ...); the frames between
            are written with the last processed frame's boxes drawn, and get
            no JSON line.
        batch_size: frames per model call; 1 keeps a camera's lag lowest.
        show: also show the frames in a window (``q`` or Esc stops); without
            a display or a GUI-enabled OpenCV it warns and carries on.
        progress: a tqdm progress bar (frames/s, and the ETA when the frame
            count is known).
        min_score: detections scored below this are neither drawn nor written.
        start_frame: the number of the first frame to read.
        max_frames: stop after this many frames (``None``: to the end; a
            camera runs until Ctrl-C or the window is closed).
        fps_overlay: draw the frames/s counter in the top left corner.

    Returns:
        a :class:`VideoResult`. Ctrl-C (or the window's ``q`` / Esc) stops
        reading; the frames done so far are kept, each with its JSON line,
        and ``interrupted`` says which (``"ctrl-c"`` or ``"key"``). While the
        outputs are finished a further Ctrl-C is ignored.

    Raises:
        VideoReadError: a video file that is missing, cannot be opened, or
            has no frame (at ``start_frame``): nothing is written, ``result``
            is ``None``; or that stopped early (truncated or a corrupt frame):
            the frames before it are written, and the message says which
            frame it stopped at.
        VideoWriteError: an output that cannot be written: OpenCV cannot
            encode this frame size or rate, it would overwrite the input,
            the disk is full, or the video came out incomplete. Nothing is
            left under the output names, nor any folder made for them.
        UserError: bad arguments, OpenCV missing, no camera, an output
            folder that cannot be made (nothing is left under its name).
    """
    if not (out_video or out_jsonl or show):
        raise UserError("detect_video: nothing to do (give out_video, out_jsonl or show)")
    every, batch_size, start_frame = int(every), int(batch_size), int(start_frame)
    for argument, value, least in (("every", every, 1), ("batch_size", batch_size, 1),
                                   ("start_frame", start_frame, 0), ("max_frames", max_frames, 1)):
        if value is not None and value < least:
            raise UserError(f"detect_video: {argument} must be >= {least}, got {value}")
    name = _source_name(source)
    cv2 = import_cv2(f"{name}: reading videos")
    if not all(hasattr(detector, attribute) for attribute in ("detect_arrays", "classes")):
        raise UserError(f"detect_video: detector must be a Detector (ssd300.Detector(model, classes)) or an "
                        f"OnnxDetector, got {type(detector).__name__}")
    if not math.isfinite(min_score):
        raise UserError(f"detect_video: min_score must be a finite number, got {min_score}")
    if out_video is not None:
        out_video = _check_output(out_video, source, "video")
        if os.path.splitext(out_video)[1].lower() not in OUTPUT_CODECS:
            raise UserError(f"{out_video}: unsupported video extension; use one of "
                            f"{', '.join(sorted(OUTPUT_CODECS))}")
    if out_jsonl is not None:
        out_jsonl = _check_output(out_jsonl, source, "JSON lines")
        if out_video is not None and os.path.abspath(out_video) == os.path.abspath(out_jsonl):
            raise UserError(f"{out_video}: the video and the JSON lines cannot be the same file")
    if show:
        show, reason = display_available(cv2)
        if not show and not (out_video or out_jsonl):
            raise UserError(f"{name}: nothing to do: cannot show the video ({reason}) and no output file given")
        if not show:
            print(f"warning: not showing the video: {reason}", file=sys.stderr)

    # The source first: a video that cannot be read leaves no output folder behind.
    capture, first, first_time, frame_count, fps = _open_source(cv2, source, start_frame)
    result = VideoResult(source=source, width=first.shape[1], height=first.shape[0], fps=fps or DEFAULT_FPS,
                         frame_count=frame_count, out_video=out_video, out_jsonl=out_jsonl, shown=bool(show))
    stop = threading.Event()
    created = []  # chains of folders made for the outputs, removed again on a failure
    try:
        # Renames happen when the ExitStack closes, still under _ctrl_c_stops.
        with _ctrl_c_stops(stop, result), contextlib.ExitStack() as stack:
            _make_folders([p for p in (out_video, out_jsonl) if p is not None], created)
            writer = jsonl = None
            if out_video is not None:
                video_tmp = stack.enter_context(atomic_path(out_video))
                size = (result.width + result.width % 2, result.height + result.height % 2)  # see _even
                writer, result.codec = _open_writer(cv2, video_tmp, result.fps, size, out_video)
                stack.callback(writer.release)
            if out_jsonl is not None:
                jsonl_tmp = stack.enter_context(atomic_path(out_jsonl))
                with writing(out_jsonl, VideoWriteError):
                    jsonl = open(jsonl_tmp, "w", encoding="utf8")
                stack.callback(_close_quietly, jsonl)
            _pipeline(cv2, detector, capture, source, first, first_time, frame_count, fps, every, batch_size,
                      min_score, start_frame, max_frames, fps_overlay, progress, writer, jsonl, result, stop)
            # Every output is checked before any is renamed onto its name.
            if writer is not None:
                writer.release()
                if result.frames:
                    _check_written(cv2, video_tmp, out_video, result.frames)
            if jsonl is not None:
                with writing(out_jsonl, VideoWriteError):
                    jsonl.close()
    except BaseException:
        for chain in reversed(created):
            remove_empty_folders(chain)
        raise
    finally:
        capture.release()  # after the reader thread ended: _pipeline joins it whatever happens
    if result.stopped and not result.interrupted:
        done = [f"{result.frames} frames ({start_frame} to {start_frame + result.frames - 1}) processed"]
        done += [f"written to {p}" for p in (out_video, out_jsonl) if p]
        raise VideoReadError(f"{result.stopped}; {' and '.join(done)}", result)
    return result


def _pipeline(cv2, detector, capture, source, first, first_time, frame_count, fps, every, batch_size, min_score,
              start_frame, max_frames, fps_overlay, progress, writer, jsonl, result, stop):
    """Run the reader and model threads and do the drawing, writing and showing here.

    Returns once both threads have ended, whatever happens (a Ctrl-C while
    waiting for them is absorbed), so the caller may release ``capture``.
    """
    from tqdm import tqdm

    from .visualize import draw_detections

    name = _source_name(source)
    state = {}
    # Bounded in bytes, not only frames (a 4K frame is 25 MB): at most MAX_BUFFERED_BYTES of decoded
    # frames wait for the model, and two batches to be drawn (one where two would pass it). Within
    # that, two batches' worth of frames wait, so the detector still gets full batches.
    frame_bytes = max(1, first.nbytes)
    frames_q = queue.Queue(maxsize=max(2, min(2 * batch_size + 2, MAX_BUFFERED_BYTES // frame_bytes)))
    batches_q = queue.Queue(maxsize=max(1, min(2, MAX_BUFFERED_BYTES // (batch_size * frame_bytes))))
    threads = [
        threading.Thread(target=_read_frames, name="ssd300-video-reader", daemon=True, args=(
            cv2, capture, _camera_index(source), name, first, first_time, start_frame, frame_count, fps,
            max_frames, frames_q, stop, state)),
        threading.Thread(target=_run_detector, name="ssd300-video-model", daemon=True, args=(
            detector, every, start_frame, batch_size, frames_q, batches_q, stop, state))]
    total = frame_count - start_frame if frame_count is not None else None
    if max_frames is not None:
        total = max_frames if total is None else min(total, max_frames)
    bar = tqdm(total=total, unit="frame", desc=os.path.basename(name) if _camera_index(source) is None else name,
               disable=not progress, dynamic_ncols=True)
    window = False
    if result.shown:
        try:
            cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
            window = True
        except cv2.error as e:
            print(f"warning: not showing the video: {e}", file=sys.stderr)
            result.shown = False
    classes = detector.classes
    started = time.perf_counter()
    ticks, fps_text = [], "FPS: ??"
    try:
        for thread in threads:
            thread.start()
        while True:
            batch = _get(batches_q, stop)
            if batch is _END:
                break
            for index, stamp, rgb, found, processed in batch:
                found = found[found[:, 1] >= min_score]
                if writer is not None or window:
                    image = draw_detections(rgb, found, classes) if len(found) or fps_overlay else None
                    if fps_overlay:
                        now = time.perf_counter()
                        ticks = [t for t in ticks if now - t < 1.0] + [now]
                        if now - started >= 1.0:
                            fps_text = f"FPS: {len(ticks)}"
                        _draw_fps(image, fps_text)
                    bgr = cv2.cvtColor(np.asarray(image) if image is not None else rgb, cv2.COLOR_RGB2BGR)
                    if writer is not None:
                        writer.write(_even(cv2, bgr))
                    if window:
                        cv2.imshow(WINDOW_NAME, bgr)
                        key = cv2.waitKey(1) & 0xFF
                        if key in (ord("q"), 27) or cv2.getWindowProperty(WINDOW_NAME, cv2.WND_PROP_VISIBLE) < 1:
                            result.interrupted = result.interrupted or "key"
                            stop.set()
                # The JSON line after the video frame: an interrupt never leaves a line without its frame.
                if processed:
                    if jsonl is not None:
                        with writing(result.out_jsonl, VideoWriteError):
                            jsonl.write(json.dumps(detection_record(index, stamp, found, classes)) + "\n")
                    result.processed += 1
                result.frames += 1
                bar.update(1)
                if stop.is_set():
                    break
            # Not held while waiting for the next batch (8 frames of 4K take 200 MB).
            del batch
            if stop.is_set():
                break
    except KeyboardInterrupt:  # where _ctrl_c_stops could not take over SIGINT
        result.interrupted = "ctrl-c"
    finally:
        stop.set()
        for thread in threads:
            # A second Ctrl-C must not leave the threads running (the reader on a released capture).
            while thread.is_alive():
                try:
                    thread.join(0.1)
                except KeyboardInterrupt:
                    result.interrupted = "ctrl-c"
        bar.close()
        result.seconds = time.perf_counter() - started
        if window:
            cv2.destroyWindow(WINDOW_NAME)
            cv2.waitKey(1)
    if "error" in state:
        raise state["error"]
    result.stopped = state.get("stopped")


class VideoTest:
    """rykov8/ssd_keras's ``VideoTest``: a trained SSD on a video file or a camera.

    One object per model, used on any number of videos and cameras. The
    same arguments as the original; the differences (its bugs fixed):

    * ``start_frame`` is a frame number (the original seeked to that many
      milliseconds);
    * the current OpenCV API (the original used OpenCV 2's ``cv2.cv``);
    * without a display (or with a headless OpenCV) no window: the annotated
      video is written instead (``out_path``, by default
      ``<video name>_ssd.mp4`` in the current folder), and a line says so;
    * ``run`` returns a :class:`VideoResult` at the end of the video, on
      ``q`` / Esc in the window, or on Ctrl-C;
    * frames go through the model in batches while the next ones are decoded;
      the detections are the library's ``Detector``'s, drawn on the
      full-size frame (the original drew on the frame shrunk to the
      network's height).

    Args:
        class_names: class names, the background first (as the original).
        model: an SSD model (``SSD300``) for ``len(class_names)`` classes.
        input_shape: the model's input shape, ``(height, width, 3)``.
    """

    def __init__(self, class_names, model, input_shape):
        from .detect import Detector
        from .layout import num_classes_of, num_columns
        from .visualize import class_colour

        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.model = model
        self.input_shape = tuple(input_shape)
        if tuple(model.input_shape[1:3]) != self.input_shape[:2]:
            raise UserError(f"VideoTest: input_shape {self.input_shape} is not the model's "
                            f"{tuple(model.input_shape[1:])}")
        if model.output_shape[-1] != num_columns(self.num_classes):
            raise UserError(f"VideoTest: {self.num_classes} class names (with the background) for a "
                            f"model of {num_classes_of(model.output_shape[-1])} classes")
        self.detector = Detector(model, self.class_names[1:])
        self.bbox_util = self.detector.bbox_util
        self.class_colors = [class_colour(i) for i in range(self.num_classes)]  # RGB

    def run(self, video_path=0, start_frame=0, conf_thresh=0.6, *, out_path=None, show=None, batch_size=None,
            every=1, max_frames=None, progress=True):
        """Run the model on a video file or a camera and show or write the result.

        Args:
            video_path: a video file, or a camera index (``int``).
            start_frame: the number of the first frame processed.
            conf_thresh: detections scored below this are not drawn.
            out_path: also (without a display: instead) write the annotated
                video here.
            show: show a window; ``None``: when a display exists.
            batch_size: frames per model call (default: 1 for a camera, 8
                for a file).
            every, max_frames, progress: as for :func:`detect_video`.

        Returns:
            a :class:`VideoResult`.
        """
        cv2 = import_cv2(f"VideoTest on {_source_name(video_path)}")
        can_show, reason = display_available(cv2)
        show = can_show if show is None else bool(show)
        if show and not can_show:
            print(f"warning: not showing the video: {reason}", file=sys.stderr)
            show = False
        camera = _camera_index(video_path) is not None
        if not show and out_path is None:
            stem = f"camera{video_path}" if camera else os.path.splitext(os.path.basename(video_path))[0]
            out_path = f"{stem}_ssd.mp4"
            print(f"VideoTest: {reason or 'no window'}; writing the annotated video to {out_path}",
                  file=sys.stderr)
        return detect_video(self.detector, video_path, out_video=out_path, every=every,
                            batch_size=batch_size or (1 if camera else 8), show=show, progress=progress,
                            min_score=conf_thresh, start_frame=start_frame, max_frames=max_frames,
                            fps_overlay=True)


def write_synthetic_video(path, frames=48, size=(320, 240), fps=12.0, seed=0):
    """Write a short video of coloured shapes moving over a synthetic scene (for tests and benches).

    The first frame is a picture from :func:`ssd300.synth.synthetic_image`
    resized to ``size``; three shapes (circle, square, triangle, in the
    "simple" style's colours) move across it and bounce off the edges.

    Args:
        path: ``.mp4``, ``.m4v``, ``.mov``, ``.mkv`` or ``.avi``.
        frames: number of frames.
        size: ``(width, height)`` in pixels.
        fps: frame rate.
        seed: the same seed writes the same frames.

    Returns:
        the codec used.

    Raises:
        VideoWriteError: OpenCV cannot write this size or rate, or the video
            came out incomplete (nothing is left under ``path``).
    """
    from PIL import Image, ImageDraw

    from .synth import SIMPLE_COLOURS, synthetic_image

    cv2 = import_cv2("writing a video")
    width, height = size
    rng = np.random.default_rng(seed)
    scene = synthetic_image(rng, size_range=(min(size), max(size)))[0].resize((width, height))
    side = rng.uniform(0.2, 0.35, 3) * min(size)
    pos = rng.uniform(0, 1, (3, 2)) * ([width, height] - side[:, None])
    vel = rng.uniform(-0.04, 0.04, (3, 2)) * [width, height]
    with atomic_path(path) as tmp:
        writer, codec = _open_writer(cv2, tmp, fps, (width, height), os.fspath(path))
        try:
            for t in range(frames):
                # Positions bounce between 0 and the far edge (a triangle wave).
                span = np.array([width, height]) - side[:, None]
                p = np.abs((pos + vel * t) % (2 * span) - span)
                p = span - p
                img = scene.copy()
                draw = ImageDraw.Draw(img)
                for (x, y), s, kind in zip(p, side, ("circle", "square", "triangle")):
                    colour = SIMPLE_COLOURS[kind]
                    if kind == "circle":
                        draw.ellipse((x, y, x + s, y + s), fill=colour)
                    elif kind == "square":
                        draw.rectangle((x, y, x + s, y + s), fill=colour)
                    else:
                        draw.polygon([(x + s / 2, y), (x + s, y + s), (x, y + s)], fill=colour)
                writer.write(cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
        if frames:
            _check_written(cv2, tmp, os.fspath(path), frames)
    return codec


__all__ = ["VideoTest", "VideoResult", "VideoReadError", "VideoWriteError", "detect_video", "detection_record",
           "is_video_path", "display_available", "import_cv2", "write_synthetic_video", "VIDEO_EXTENSIONS",
           "OUTPUT_CODECS"]
