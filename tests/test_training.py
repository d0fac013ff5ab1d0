"""Training (ssd300.training.fit through ssd_training.py): learning, exact --resume, NaN, Ctrl-C, bad datasets."""

import csv
import json
import os
import re
import shutil
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
    split = ["--split", "all", "--val-fraction", "0.3"]
    assert main(run_args(dataset, out, "--epochs", "1", *split)) == 0
    assert "training on 8 images, validating on 4" in capsys.readouterr().out
    weights, optimizer_values, state = load_checkpoint(out / "checkpoint.npz")
    assert state["epoch"] == 1
    iterations = int(optimizer_values[0])
    assert iterations == 2
    for name in ("best.h5", "last.h5", "log.csv", "loss.png"):
        assert (out / name).is_file(), name
    assert not [f for f in os.listdir(out) if ".tmp" in f]

    # The same options (other epochs, workers may differ): a changed split is refused.
    assert main(run_args(dataset, out, "--epochs", "2", "--resume")) == 2
    assert "split all, this run has trainval; val-fraction 0.3, this run has 0.1" in capsys.readouterr().err
    assert main(run_args(dataset, out, "--epochs", "2", "--resume", *split)) == 0
    _, optimizer_values2, state2 = load_checkpoint(out / "checkpoint.npz")
    assert state2["epoch"] == 2
    assert int(optimizer_values2[0]) == 4  # continued from 2 steps, not from 0
    with open(out / "log.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]
    assert len(state2["history"]["loss"]) == 2
    # Nothing left to do: a third run with --resume returns at once.
    assert main(run_args(dataset, out, "--epochs", "2", "--resume", *split)) == 0


@pytest.mark.slow
def test_nan_loss_stops_with_message(dataset, tmp_path, capsys):
    out = tmp_path / "nan"
    assert main(run_args(dataset, out, "--epochs", "3", "--lr", "1e30")) == 1
    err = capsys.readouterr().err
    assert "training stopped: loss became" in err and "Try a lower --lr" in err
    assert not (out / "checkpoint.npz").exists() or load_checkpoint(out / "checkpoint.npz")[2]["epoch"] < 3


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint(dataset, tmp_path, python_sigint):
    """A terminal's Ctrl-C after epoch 1 (SIGINT to the process group, data workers included):
    training stops at a step's end (StopOnCtrlC), exit 130, the checkpoint of the last whole epoch
    (>= 1) is kept, and no worker prints a traceback."""
    import re
    import signal
    import time

    out = tmp_path / "interrupted"
    # faulthandler: a crash on the way out (once seen in CI, before StopOnCtrlC) shows its stack.
    args = run_args(dataset, out, "--epochs", "50", "--workers", "2", "--multiprocessing")
    proc = subprocess.Popen([sys.executable, "ssd_training.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"},
                            start_new_session=True)
    deadline = time.monotonic() + 300
    seen = ""
    while "epoch 1/" not in seen and time.monotonic() < deadline and proc.poll() is None:
        seen += proc.stdout.readline()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-4000:]
    assert "Ctrl-C: stopping at the end of this step (press it again to stop at once)" in err
    # Without fit's gc.collect, TensorFlow finalized the data iterator Keras leaves on the model
    # in the finished interpreter at exit ("Python interpreter state is not initialized").
    assert "Traceback" not in err and "interpreter state is not initialized" not in err
    # (?m)^: on a line of its own, not after the progress bar's
    kept = re.search(r"(?m)^interrupted in epoch (\d+): checkpoint of epoch (\d+) kept, --resume continues exactly",
                     err)
    after = re.search(r"(?m)^interrupted after epoch (\d+): its checkpoint is saved, --resume continues", err)
    assert kept or after, err[-2000:]
    epoch = int(kept.group(2)) if kept else int(after.group(1))
    assert epoch >= 1
    assert load_checkpoint(out / "checkpoint.npz")[2]["epoch"] == epoch
    with open(out / "log.csv") as f:
        assert len(list(csv.DictReader(f))) == epoch  # the log follows the checkpoint, not the cut epoch
    assert (out / "interrupted.h5").is_file() == bool(kept)


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

    dead = 9_999_999  # above Linux's largest pid (2**22): never a running process
    (tmp_path / f"checkpoint.tmp{dead}.npz").write_bytes(b"partial")
    (tmp_path / f"last.tmp{dead}.h5").write_bytes(b"partial")
    (tmp_path / f"classes.tmp{dead}.txt").write_bytes(b"partial")
    # Kept: the user's own files named like temporaries, and a running process's temporary.
    mine = ["notes.txt", "thesis.tmp2.tex", "photo.tmp1", f"last.tmp{dead}.npz", f"last.tmp{os.getpid()}.h5"]
    for name in mine:
        (tmp_path / name).write_text("kept")
    assert remove_stale_temporaries(tmp_path) == [f"checkpoint.tmp{dead}.npz", f"classes.tmp{dead}.txt",
                                                  f"last.tmp{dead}.h5"]
    assert sorted(os.listdir(tmp_path)) == sorted(mine)
    for name in mine:
        os.remove(tmp_path / name)
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


# ----- Interruptions, the time limit, resume checks, output folder (64 px, 2 steps per epoch) -----

SMALL = 64


def small_config(dataset, out, **overrides):
    from ssd300.training import TrainConfig

    settings = dict(voc_root=str(dataset), out=str(out), input_size=SMALL, batch_size=2, steps_per_epoch=2,
                    workers=1, epochs=2, progress=False, freeze=("conv1_1",))
    return TrainConfig(**{**settings, **overrides})


def assert_same_run(a, b):
    """Two output folders hold the same checkpoint (weights, optimizer, history) and ``last.h5``."""
    import h5py

    wa, oa, sa = load_checkpoint(a / "checkpoint.npz")
    wb, ob, sb = load_checkpoint(b / "checkpoint.npz")
    assert sa["epoch"] == sb["epoch"] and len(wa) == len(wb) and len(oa) == len(ob)
    for x, y in zip(wa + oa, wb + ob):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sa["history"]["loss"], sb["history"]["loss"], rtol=1e-5)
    with h5py.File(a / "last.h5", "r") as fa, h5py.File(b / "last.h5", "r") as fb:
        names = []
        fa.visit(lambda name: names.append(name) if isinstance(fa[name], h5py.Dataset) else None)
        assert names
        for name in names:
            np.testing.assert_allclose(fa[name][()], fb[name][()], rtol=1e-5, atol=1e-6)
    with open(a / "log.csv") as fa, open(b / "log.csv") as fb:
        assert [r["epoch"] for r in csv.DictReader(fa)] == [r["epoch"] for r in csv.DictReader(fb)]


@pytest.fixture(scope="module")
def straight_run(dataset, tmp_path_factory):
    """Two epochs without a stop, to compare interrupted and resumed runs with."""
    from ssd300.training import fit

    out = tmp_path_factory.mktemp("straight") / "run"
    assert fit(small_config(dataset, out)).status == "done"
    return out


def ctrl_c_at(monkeypatch, epoch, batch):
    """Make the next fit raise KeyboardInterrupt after ``batch`` of ``epoch`` (0-based), as Ctrl-C would."""
    from ssd300 import training

    class CtrlC(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            self.epoch = e

        def on_train_batch_end(self, b, logs=None):
            if (self.epoch, b) == (epoch, batch):
                raise KeyboardInterrupt

    make = training.make_callbacks
    monkeypatch.setattr(training, "make_callbacks", lambda *a, **k: [CtrlC(), *make(*a, **k)])


@pytest.mark.slow
def test_ctrl_c_mid_epoch_keeps_the_checkpoint_and_resume_is_exact(dataset, tmp_path, straight_run, monkeypatch):
    from ssd300.training import fit

    out = tmp_path / "run"
    ctrl_c_at(monkeypatch, epoch=1, batch=0)
    result = fit(small_config(dataset, out))
    assert result.status == "interrupted" and result.epochs == 1
    assert result.message == ("interrupted in epoch 2: checkpoint of epoch 1 kept, --resume continues exactly "
                              f"from it; the partial epoch's weights are in {out / 'interrupted.h5'}")
    assert (out / "interrupted.h5").is_file()
    weights, optimizer_values, state = load_checkpoint(out / "checkpoint.npz")
    assert state["epoch"] == 1 and int(optimizer_values[0]) == 2  # epoch 1's 2 steps, not the cut epoch's 3rd
    monkeypatch.undo()
    assert fit(small_config(dataset, out, resume=True)).status == "done"
    assert_same_run(straight_run, out)


@pytest.mark.slow
def test_ctrl_c_during_the_epoch_end_writes_completes_them(dataset, tmp_path, monkeypatch):
    from ssd300 import callbacks
    from ssd300.training import fit

    calls = []
    write_log = callbacks.write_log

    def interrupted_once(*args):  # Ctrl-C after checkpoint.npz is committed, before log.csv
        calls.append(args)
        if len(calls) == 1:
            raise KeyboardInterrupt
        write_log(*args)

    monkeypatch.setattr(callbacks, "write_log", interrupted_once)
    out = tmp_path / "run"
    result = fit(small_config(dataset, out, epochs=1, steps_per_epoch=1))
    assert result.status == "interrupted" and result.epochs == 1
    assert result.message.startswith("interrupted after epoch 1: its checkpoint is saved")
    assert load_checkpoint(out / "checkpoint.npz")[2]["epoch"] == 1
    with open(out / "log.csv") as f:
        assert len(list(csv.DictReader(f))) == 1
    assert (out / "last.h5").is_file() and (out / "loss.png").is_file()
    assert not (out / "interrupted.h5").exists()


def count_validation_batches(monkeypatch):
    """Make the following fits count, in the returned list's first item, the validation batches they run."""
    from ssd300 import training

    counted = [0]

    class Count(keras.callbacks.Callback):
        def on_test_batch_begin(self, batch, logs=None):
            counted[0] += 1

    make = training.make_callbacks
    monkeypatch.setattr(training, "make_callbacks", lambda *a, **k: [*make(*a, **k), Count()])
    return counted


@pytest.mark.slow
def test_time_limit_inside_an_epoch_does_not_save_it(dataset, tmp_path, straight_run, monkeypatch, capsys):
    from ssd300.training import TIME_LIMIT, fit

    # Before the first epoch ends: nothing saved, the folder's previous classes.txt kept (beside
    # the weights it names), not replaced by this run's; the cut epoch is not validated.
    validated = count_validation_batches(monkeypatch)
    out = tmp_path / "run"
    out.mkdir()
    (out / "classes.txt").write_text("dog\ncat\n")
    result = fit(small_config(dataset, out, time_limit=1e-9))
    assert (result.status, result.epochs) == (TIME_LIMIT, 0)
    assert result.message == "time limit reached in epoch 1 after 1 step; no epoch had finished: nothing saved"
    assert sorted(os.listdir(out)) == ["classes.txt"] and (out / "classes.txt").read_text() == "dog\ncat\n"
    assert validated[0] == 0
    assert "epoch 1/2: stopped by the time limit after 1 step, not saved" in capsys.readouterr().out

    # Inside epoch 2: epoch 1's checkpoint and log kept; --resume redoes epoch 2 whole.
    assert fit(small_config(dataset, out, epochs=1)).status == "done"
    assert validated[0] > 0  # the count sees validation where it runs
    validated[0] = 0
    result = fit(small_config(dataset, out, resume=True, time_limit=1e-9))
    assert (result.status, result.epochs) == (TIME_LIMIT, 1)
    assert result.message == ("time limit reached in epoch 2 after 1 step; checkpoint of epoch 1 kept; "
                              "--resume continues")
    assert validated[0] == 0
    assert "epoch 2/2: stopped by the time limit after 1 step, not saved" in capsys.readouterr().out
    _, optimizer_values, state = load_checkpoint(out / "checkpoint.npz")
    assert state["epoch"] == 1 and int(optimizer_values[0]) == 2
    with open(out / "log.csv") as f:
        assert len(list(csv.DictReader(f))) == 1
    assert fit(small_config(dataset, out, resume=True)).status == "done"
    assert_same_run(straight_run, out)


def test_resume_refuses_other_options(dataset, tmp_path):
    from ssd300.checkpoint import save_checkpoint
    from ssd300.datasets import load_training_data
    from ssd300.errors import UserError
    from ssd300.training import fit, run_definition

    out = tmp_path / "run"
    out.mkdir()
    config = small_config(dataset, out)
    data = load_training_data(config)
    classes = list(data.classes)
    state = {"epoch": 1, "classes": classes, "input_size": SMALL, "config": run_definition(config)}
    save_checkpoint(out / "checkpoint.npz", [], [], state)
    (out / "classes.txt").write_text("kept\n")
    changed = small_config(dataset, out, resume=True, batch_size=4, seed=5, lr=0.01, augment=None,
                           freeze=("conv1_2",), per_image_mining=True, val_fraction=0.5,
                           epochs=9, workers=2, time_limit=5.0, progress=True)  # the last four may change
    with pytest.raises(UserError) as error:
        fit(changed)
    message = str(error.value)
    assert message.startswith(f"--resume: {out / 'checkpoint.npz'} was trained with ")
    for difference in ("batch-size 2, this run has 4", "seed 0, this run has 5", "lr 0.0003, this run has 0.01",
                       "augment original, this run has none", "freeze conv1_1, this run has conv1_2",
                       "per-image-mining False, this run has True", "val-fraction 0.1, this run has 0.5"):
        assert difference in message
    assert "epochs" not in message and "workers" not in message and "time-limit" not in message
    assert (out / "classes.txt").read_text() == "kept\n"
    # A relative dataset path naming the same folder is the same dataset.
    same = small_config(os.path.relpath(dataset), out, resume=True, epochs=9, workers=2)
    from ssd300.training import read_resume_state

    assert read_resume_state(same, data)[2]["epoch"] == 1
    # A checkpoint written before the options were stored resumes as before.
    del state["config"]
    save_checkpoint(out / "checkpoint.npz", [], [], state)
    assert read_resume_state(changed, data)[2]["epoch"] == 1


@pytest.mark.slow
def test_resume_follows_a_dataset_that_moved(dataset, tmp_path, straight_run, capsys):
    """The same images and boxes in another folder (a copy on a node's scratch disk) resume; other data does not."""
    from ssd300.datasets import load_training_data
    from ssd300.errors import UserError
    from ssd300.training import fit, read_resume_state

    moved = tmp_path / "scratch" / "VOC"
    shutil.copytree(dataset, moved)
    out = tmp_path / "run"
    shutil.copytree(straight_run, out)
    config = small_config(moved, out, resume=True)
    result = fit(config)
    assert (result.status, result.epochs) == ("up_to_date", 2)
    printed = capsys.readouterr().out
    assert f"the dataset moved: --voc-root {os.path.abspath(dataset)} is now {moved} (the same images and boxes)" \
        in printed, printed
    state = read_resume_state(config, load_training_data(config))[2]
    assert state["moved"] == [("voc_root", os.path.abspath(dataset), str(moved))]
    assert state["config"]["voc_root"] == str(moved)
    # The next saved epoch records the new place.
    assert fit(small_config(moved, out, resume=True, epochs=3)).status == "done"
    state = read_resume_state(config, load_training_data(config))[2]
    assert "moved" not in state and state["config"]["voc_root"] == str(moved) and state["epoch"] == 3
    # A copy with one box moved by a pixel is other data: refused, the paths named.
    other = tmp_path / "other"
    shutil.copytree(moved, other)
    xml = sorted((other / "Annotations").glob("*.xml"))[0]
    text = xml.read_text()
    start = text.index("<xmin>") + len("<xmin>")
    end = text.index("</xmin>", start)
    xml.write_text(text[:start] + str(int(text[start:end]) + 1) + text[end:])
    config = small_config(other, out, resume=True)
    with pytest.raises(UserError, match=rf"was trained with voc-root {re.escape(str(moved))}, "
                                        rf"this run has {re.escape(str(other))}"):
        read_resume_state(config, load_training_data(config))


def test_restore_optimizer_names_the_checkpoint_when_the_state_does_not_fit():
    from ssd300.errors import UserError
    from ssd300.training import restore_optimizer

    def model(frozen):
        inputs = keras.Input((3,))
        first = keras.layers.Dense(4, name="a")
        m = keras.Model(inputs, keras.layers.Dense(4, name="b")(first(inputs)))
        first.trainable = not frozen
        m.compile(optimizer=keras.optimizers.Adam(), loss="mse")
        m.optimizer.build(m.trainable_variables)
        return m

    values = [np.asarray(v) + 1 for v in model(False).optimizer.variables]
    restored = model(False)
    restore_optimizer(restored, values, "ckpt.npz")
    for variable, value in zip(restored.optimizer.variables, values):
        np.testing.assert_array_equal(np.asarray(variable), value)
    with pytest.raises(UserError, match=r"ckpt.npz: its optimizer state \(\d+ variables\) does not fit"):
        restore_optimizer(model(True), values, "ckpt.npz")  # a layer frozen since: fewer variables
    swapped = values[:1] + [np.zeros((4,), np.float32) if v.shape == (3, 4) else v for v in values[1:]]
    with pytest.raises(UserError, match="other shapes"):
        restore_optimizer(model(False), swapped, "ckpt.npz")


def test_seed_must_fit_the_random_generators():
    from ssd300.errors import UserError
    from ssd300.training import TrainConfig

    assert TrainConfig(seed=2**32 - 1).seed == 2**32 - 1
    for seed in (-1, 2**32, 1.5):
        with pytest.raises(UserError, match="seed must be an integer in"):
            TrainConfig(seed=seed)


def test_train_config_refuses_values_fit_would_misuse():
    from ssd300.errors import UserError
    from ssd300.training import TrainConfig

    refused = [(dict(batch_size=2.5), r"^batch-size must be a positive integer, got 2.5$"),  # ran as batch 2
               (dict(epochs=1.5), r"^epochs must be a positive integer, got 1.5$"),
               (dict(input_size="300"), r"^input-size must be a positive integer, got '300'$"),
               (dict(workers=0), r"^workers must be a positive integer, got 0$"),
               (dict(steps_per_epoch=0), r"^steps-per-epoch must be a positive integer, got 0$"),
               (dict(input_size=16), r"^input-size must be at least 32"),
               (dict(neg_pos_ratio=float("nan")), r"^neg-pos-ratio must be a positive number, got nan$"),
               (dict(clipnorm=-1.0), r"^clipnorm must be a positive number, got -1.0$"),  # had no effect
               (dict(time_limit=-5), r"^time-limit must be a positive number, got -5$"),  # trained on
               (dict(lr=float("inf")), r"^lr must be a positive number, got inf$"),
               (dict(freeze="conv1_1"), r"^freeze must be a list of layer names, got the string 'conv1_1'$"),
               (dict(classes="circle"), r"^classes: a list of class names is needed, got the string 'circle'$")]
    for options, message in refused:
        with pytest.raises(UserError, match=message):
            TrainConfig(**options)
    config = TrainConfig(batch_size=np.int64(4), clipnorm=10, time_limit=0.5, steps_per_epoch=None)
    assert (config.batch_size, config.clipnorm, config.time_limit) == (4, 10, 0.5)


def test_an_unwritable_output_folder_is_a_user_error(dataset, tmp_path, monkeypatch):
    import tempfile

    from ssd300.errors import UserError
    from ssd300.training import fit

    out = tmp_path / "read-only"
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: make the probe fail as it would for a user
        def refused(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    try:
        with pytest.raises(UserError, match=f"{out}: cannot write in the output folder \\(Permission denied\\)"):
            fit(small_config(dataset, out))
    finally:
        out.chmod(0o755)
    assert os.listdir(out) == []


def test_a_failing_write_is_a_user_error_naming_the_file(tmp_path):
    from ssd300.callbacks import save_weights
    from ssd300.checkpoint import save_checkpoint, write_log
    from ssd300.errors import UserError

    missing = tmp_path / "gone"  # writing into a folder that vanished: FileNotFoundError, an OSError
    for write, name in [(lambda p: save_checkpoint(p, [], [], {}), "checkpoint.npz"),
                        (lambda p: write_log({"loss": [1.0]}, p), "log.csv"),
                        (lambda p: save_weights(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), p),
                         "last.h5")]:
        with pytest.raises(UserError, match=f"{missing / name}: cannot write"):
            write(missing / name)


@pytest.mark.slow
def test_checkpoint_is_written_before_last_h5(dataset, tmp_path, monkeypatch, capsys):
    """A failing last.h5 (disk full) leaves the checkpoint and log of the epoch before, never behind last.h5."""
    import errno

    from ssd300 import callbacks
    from ssd300.errors import UserError
    from ssd300.training import fit

    out = tmp_path / "run"
    assert fit(small_config(dataset, out, epochs=1, steps_per_epoch=1)).status == "done"
    save = callbacks.save_weights_by_name

    def full(model, path):
        if os.path.basename(path) == "last.h5":
            raise OSError(errno.ENOSPC, "No space left on device")
        save(model, path)

    monkeypatch.setattr(callbacks, "save_weights_by_name", full)
    capsys.readouterr()
    with pytest.raises(UserError, match=f"{out / 'last.h5'}: cannot write \\(No space left on device\\)"):
        fit(small_config(dataset, out, epochs=2, steps_per_epoch=1, resume=True, progress=True))
    bar = capsys.readouterr().err
    assert "training:" in bar and bar.endswith("\n")  # the bar's line is ended before the caller's message
    assert load_checkpoint(out / "checkpoint.npz")[2]["epoch"] == 2  # committed before last.h5
    with open(out / "log.csv") as f:
        assert len(list(csv.DictReader(f))) == 2  # the log follows the checkpoint
    assert not [f for f in os.listdir(out) if ".tmp" in f]
