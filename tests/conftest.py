import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_path(*parts):
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is not beside this checkout)")
    return path


@pytest.fixture(scope="session")
def priors():
    from ssd300.priors import load_priors

    return load_priors(ROOT / "prior_boxes_ssd300.pkl")


@pytest.fixture(scope="session")
def cli_exported_onnx(tmp_path_factory):
    """``ssd300 export --format onnx --check`` of ``tests.test_export.peaked_ssd``'s weights, run once.

    One tf2onnx conversion of a whole SSD takes most of a minute, so the export
    and command-line tests share this one. Returns a dict: ``weights`` (HDF5)
    with ``classes`` (the ``classes.txt`` beside them: a, b, c), ``onnx`` (the
    exported file; copy it before changing it) and ``printed`` (the command's
    standard output).
    """
    pytest.importorskip("onnxruntime")
    from ssd300.cli import main
    from ssd300.weights import save_weights_by_name
    from tests.test_export import SIZE, peaked_ssd

    folder = tmp_path_factory.mktemp("cli_export")
    weights, classes, onnx = folder / "w.h5", folder / "classes.txt", folder / "ssd.onnx"
    save_weights_by_name(peaked_ssd(), weights)
    classes.write_text("a\nb\nc\n")
    pictures = [str(ROOT / "pics" / "cat.jpg"), str(ROOT / "pics" / "boys.jpg")]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["export", "--weights", str(weights), "--input-size", str(SIZE), "--format", "onnx",
                       "--out", str(onnx), "--check", *pictures])
    assert status == 0, printed.getvalue()
    return dict(weights=weights, classes=classes, onnx=onnx, printed=printed.getvalue())


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler during the test, then the one before.

    A job a shell starts in the background (``cmd &``) begins with SIGINT
    ignored, and so do the processes it starts: Ctrl-C tests need the
    handler a terminal's Python has (a caught signal is reset to the
    default in a child, which then installs Python's handler too).
    """
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def random_boxes(rng, n, min_size=0.02, max_size=0.6):
    """``(n, 4)`` normalised boxes inside the unit square."""
    wh = rng.uniform(min_size, max_size, size=(n, 2))
    xy = rng.uniform(0, 1, size=(n, 2)) * (1 - wh)
    return np.concatenate([xy, xy + wh], axis=1)
