"""Training (ssd300.training.fit through ssd_training.py): learning, exact --resume, NaN, Ctrl-C, bad datasets."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from ssd300.synth import make_synthetic_voc  # noqa: E402
from ssd300.checkpoint import load_checkpoint  # noqa: E402
from ssd300.cli import train_main as main  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

SIZE = 96


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_voc(tmp_path_factory.mktemp("voc") / "VOC", images=12, seed=5, style="simple")


@pytest.mark.slow
def test_a_few_steps_lower_the_loss_markedly(dataset):
    from ssd300 import SSD300, BBoxUtility, MultiboxLoss, priors_from_model
    from ssd300.generator import SSDDataset
    from ssd300.voc import XML_preprocessor

    keras.utils.set_random_seed(0)
    prep = XML_preprocessor(f"{dataset}/Annotations")
    model = SSD300((SIZE, SIZE, 3), num_classes=5)
    util = BBoxUtility(5, priors_from_model(model))
    x, y = SSDDataset(prep.data, util, f"{dataset}/JPEGImages", sorted(prep.data)[:4], (SIZE, SIZE),
                      batch_size=4, train=False)[0]
    model.compile(optimizer=keras.optimizers.Adam(1e-3, clipnorm=10.0), loss=MultiboxLoss(5).compute_loss)
    before = model.evaluate(x, y, verbose=0)
    for _ in range(25):
        model.train_on_batch(x, y)
    after = model.evaluate(x, y, verbose=0)
    assert np.isfinite(after)
    assert after < 0.5 * before, (before, after)


def run_args(dataset, out, *extra):
    return ["--voc-root", str(dataset), "--out", str(out), "--input-size", str(SIZE), "--batch-size", "2",
            "--steps-per-epoch", "2", "--workers", "1", "--optimizer", "adam", "--lr", "1e-4",
            "--freeze", "conv1_1", *extra]


@pytest.mark.slow
def test_resume_restores_epoch_and_optimizer_state(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    # --split all: every annotation file, split 70/30 as the originals did.
    assert main(run_args(dataset, out, "--epochs", "1", "--split", "all", "--val-fraction", "0.3")) == 0
    assert "training on 8 images, validating on 4" in capsys.readouterr().out
    weights, optimizer_values, state = load_checkpoint(out / "checkpoint.npz")
    assert state["epoch"] == 1
    iterations = int(optimizer_values[0])
    assert iterations == 2
    for name in ("best.h5", "last.h5", "log.csv", "loss.png"):
        assert (out / name).is_file(), name
    assert not [f for f in os.listdir(out) if ".tmp" in f]

    assert main(run_args(dataset, out, "--epochs", "2", "--resume")) == 0
    _, optimizer_values2, state2 = load_checkpoint(out / "checkpoint.npz")
    assert state2["epoch"] == 2
    assert int(optimizer_values2[0]) == 4  # continued from 2 steps, not from 0
    with open(out / "log.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]
    assert len(state2["history"]["loss"]) == 2
    # Nothing left to do: a third run with --resume returns at once.
    assert main(run_args(dataset, out, "--epochs", "2", "--resume")) == 0


@pytest.mark.slow
def test_nan_loss_stops_with_message(dataset, tmp_path, capsys):
    out = tmp_path / "nan"
    assert main(run_args(dataset, out, "--epochs", "3", "--lr", "1e30")) == 1
    err = capsys.readouterr().err
    assert "training stopped: loss became" in err and "Try a lower --lr" in err
    assert not (out / "checkpoint.npz").exists() or load_checkpoint(out / "checkpoint.npz")[2]["epoch"] < 3


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint(dataset, tmp_path):
    import signal
    import time

    out = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "ssd_training.py", *run_args(dataset, out, "--epochs", "50")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    seen = ""
    while "epoch 1/" not in seen and time.monotonic() < deadline and proc.poll() is None:
        seen += proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: saved" in err and "--resume" in err
    assert load_checkpoint(out / "checkpoint.npz")[2]["epoch"] >= 1


def test_missing_dataset_message_without_traceback(tmp_path):
    missing = tmp_path / "no" / "VOC2007"
    result = subprocess.run([sys.executable, "ssd_training.py", "--voc-root", str(missing)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert str(missing) in result.stderr and "does not exist" in result.stderr
    assert "Annotations/*.xml" in result.stderr and "VOCtrainval_06-Nov-2007.tar" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "half" / "Annotations").mkdir(parents=True)
    assert main(["--voc-root", str(tmp_path / "half")]) == 2


def test_missing_weights_and_resume_messages(dataset, tmp_path, capsys):
    assert main(run_args(dataset, tmp_path / "r", "--weights", str(tmp_path / "nope.h5"))) == 2
    assert "nope.h5: weights file not found" in capsys.readouterr().err
    assert main(run_args(dataset, tmp_path / "r2", "--resume")) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


def test_a_run_that_fails_before_training_leaves_no_output(dataset, tmp_path, capsys):
    # Bad weights, a bad --freeze: nothing of the run is left, not even the folder (nor those above it).
    (tmp_path / "two.txt").write_text("circle\nsquare\n")
    for extra, message in [(["--weights", str(tmp_path / "two.txt")], "two.txt"),
                           (["--freeze", "conv1_1,no_such_layer"], "the model has no layer 'no_such_layer'")]:
        assert main(run_args(dataset, tmp_path / "new" / "run", *extra)) == 2
        assert message in capsys.readouterr().err
        assert sorted(os.listdir(tmp_path)) == ["two.txt"]
    # An existing folder keeps what it held: its classes.txt is not replaced by the failed run's.
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "classes.txt").write_text("dog\ncat\n")
    (kept / "notes.txt").write_text("mine")
    assert main(run_args(dataset, kept, "--freeze", "no_such_layer")) == 2
    assert sorted(os.listdir(kept)) == ["classes.txt", "notes.txt"]
    assert (kept / "classes.txt").read_text() == "dog\ncat\n"


def test_a_corrupt_picture_in_the_first_batch_leaves_no_output(dataset, tmp_path, capsys):
    import shutil

    broken = tmp_path / "VOC"
    shutil.copytree(dataset, broken)
    for name in os.listdir(broken / "JPEGImages"):
        (broken / "JPEGImages" / name).write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "classes.txt").write_text("dog\n")
    assert main(run_args(broken, tmp_path / "run", "--epochs", "1")) == 2
    assert "not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main(run_args(broken, tmp_path / "kept", "--epochs", "1")) == 2
    assert os.listdir(tmp_path / "kept") == ["classes.txt"]
    assert (tmp_path / "kept" / "classes.txt").read_text() == "dog\n"


def test_vgg16_weights_map_onto_the_base(monkeypatch):
    from ssd300 import SSD300
    from ssd300.weights import load_vgg16_weights

    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    monkeypatch.setattr(keras.applications, "VGG16", lambda **kwargs: vgg)
    model = SSD300((SIZE, SIZE, 3), num_classes=3)
    report = load_vgg16_weights(model, weights=None)
    assert len(report.loaded) == 13 and not report.missing
    np.testing.assert_array_equal(model.get_layer("conv5_3").get_weights()[0],
                                  vgg.get_layer("block5_conv3").get_weights()[0])

    def offline(**kwargs):
        raise OSError("URL fetch failure")

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    from ssd300.weights import WeightFileError

    with pytest.raises(WeightFileError, match="could not get the ImageNet VGG16 weights"):
        load_vgg16_weights(model)


@pytest.mark.slow
def test_resume_gives_the_weights_of_an_uninterrupted_run(dataset, tmp_path):
    """2 epochs straight == 1 epoch, then --resume for the second (data order, optimizer state)."""
    from ssd300.checkpoint import load_checkpoint as load

    args = ["--augment", "original", "--workers", "2"]
    def run(out, *extra):  # 2 steps per epoch of the 5 batches: each epoch picks its own 2
        return main(run_args(dataset, out, *extra, *args))

    assert run(tmp_path / "straight", "--epochs", "2") == 0
    assert run(tmp_path / "resumed", "--epochs", "1") == 0
    assert run(tmp_path / "resumed", "--epochs", "2", "--resume") == 0
    straight, opt_straight, state_straight = load(tmp_path / "straight" / "checkpoint.npz")
    resumed, opt_resumed, state_resumed = load(tmp_path / "resumed" / "checkpoint.npz")
    # float32 training; the same operations in the same order give the same bits on one machine,
    # so the tolerance only absorbs a different thread reduction order.
    for a, b in zip(straight + opt_straight, resumed + opt_resumed):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state_straight["history"]["loss"], state_resumed["history"]["loss"], rtol=1e-5)
    with open(tmp_path / "resumed" / "log.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]


def test_stale_temporaries_are_removed_and_the_log_follows_the_checkpoint(tmp_path):
    from ssd300.checkpoint import remove_stale_temporaries, save_checkpoint, write_log

    (tmp_path / "checkpoint.tmp1234.npz").write_bytes(b"partial")
    (tmp_path / "last.tmp99.h5").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("kept")
    assert remove_stale_temporaries(tmp_path) == ["checkpoint.tmp1234.npz", "last.tmp99.h5"]
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]
    history = {"loss": [3.0, 2.5], "val_loss": [3.5, 2.75]}
    save_checkpoint(tmp_path / "checkpoint.npz", [np.ones((2, 3), np.float32)], [np.int64(7)],
                    {"epoch": 2, "history": history})
    weights, opt, state = load_checkpoint(tmp_path / "checkpoint.npz")
    np.testing.assert_array_equal(weights[0], np.ones((2, 3)))
    assert int(opt[0]) == 7 and state["history"] == history
    write_log(history, tmp_path / "log.csv")
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], float(r["loss"]), float(r["val_loss"])) for r in rows] == [("0", 3.0, 3.5),
                                                                                    ("1", 2.5, 2.75)]
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    from ssd300.errors import UserError

    with pytest.raises(UserError, match="bad.npz: not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.npz")
