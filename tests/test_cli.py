"""The command line: train on COCO, detect, evaluate (VOC and COCO), convert, priors, info, synth."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from ssd300.cli import main  # noqa: E402
from ssd300.synth import make_synthetic_voc  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

SIZE = 96


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from pathlib import Path

    return Path(make_synthetic_voc(tmp_path_factory.mktemp("voc") / "VOC", images=12, seed=5, style="simple"))


@pytest.fixture(scope="module")
def trained_weights(tmp_path_factory):
    from ssd300 import SSD300
    from ssd300.weights import save_weights_by_name

    path = tmp_path_factory.mktemp("w") / "w.h5"
    save_weights_by_name(SSD300((SIZE, SIZE, 3), num_classes=5), path)
    return path


def cli(*args):
    return subprocess.run([sys.executable, "-m", "ssd300", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT)


@pytest.mark.slow
def test_detect_writes_pictures_and_json(dataset, trained_weights, tmp_path):
    (tmp_path / "classes.txt").write_text("circle\nsquare\ntriangle\ncross\n")
    (tmp_path / "corrupt.jpg").write_bytes(b"garbage")
    images = [f"{dataset}/JPEGImages/000001.jpg", f"{dataset}/JPEGImages/000002.jpg", tmp_path / "corrupt.jpg"]
    result = cli("detect", "--weights", trained_weights, "--classes", tmp_path / "classes.txt",
                 "--input-size", SIZE, "--min-score", 0.0, "--out", tmp_path / "out", *images)
    assert result.returncode == 1, result.stderr
    assert "corrupt.jpg: not a readable image" in result.stderr and "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["000001.png", "000002.png", "detections.json"]
    report = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert len(report) == 2
    for dets in report.values():
        for d in dets:
            assert d["class"] in ("circle", "square", "triangle", "cross") and len(d["box"]) == 4
    missing = cli("detect", "--weights", tmp_path / "nope.h5", images[0])
    assert missing.returncode == 2 and "nope.h5: weights file not found" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.slow
def test_evaluate_command(dataset, trained_weights, tmp_path):
    result = cli("evaluate", "--weights", trained_weights, "--voc-root", dataset, "--split", "test",
                 "--input-size", SIZE, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "mAP" in result.stdout
    files = sorted(os.listdir(tmp_path))
    assert files == [f"comp4_det_test_{c}.txt" for c in sorted(("circle", "square", "triangle", "cross"))]
    bad = cli("evaluate", "--weights", trained_weights, "--voc-root", tmp_path / "none")
    assert bad.returncode == 2 and "Expected a PASCAL VOC folder" in bad.stderr


def test_priors_and_info_commands(tmp_path):
    from ssd300.priors import load_priors

    result = cli("priors", tmp_path / "p.pkl")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(load_priors(tmp_path / "p.pkl"), load_priors(ROOT / "prior_boxes_ssd300.pkl"))
    info = cli("info")
    assert info.returncode == 0 and "parameters: 25,765,497" in info.stdout and "priors: 7308" in info.stdout
    synth = cli("synth", tmp_path / "s", "--images", 3)
    assert synth.returncode == 0 and (tmp_path / "s" / "Annotations" / "000003.xml").is_file()
    again = cli("synth", tmp_path / "s", "--images", 3)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_help_starts_without_keras():
    result = subprocess.run([sys.executable, "-c", "import sys; from ssd300.cli import build_parser; "
                             "build_parser(); import ssd300.box_ops, ssd300.ssd_utils, ssd300.voc, "
                             "ssd300.evaluation, ssd300.coco, ssd300.augment; assert 'keras' not in sys.modules"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_options_given_override_the_demo_even_abbreviated(monkeypatch):
    """``--input 64`` (an abbreviation) is the user's choice, not overwritten by the demo's 128."""
    import ssd300.demo

    seen = {}

    def fake_run_demo(config, images):
        seen["config"], seen["images"] = config, images
        return None, {"map": 0.0, "val_loss": [], "epochs": 0, "test_images": 0, "pictures": "x"}

    monkeypatch.setattr(ssd300.demo, "run_demo", fake_run_demo)
    from ssd300.cli import train_main

    assert train_main(["--demo", "--input", "64", "--epochs", "3", "--demo-images", "40"]) == 0
    config = seen["config"]
    assert (config.input_size, config.epochs, config.batch_size, config.freeze) == (64, 3, 8, ())
    assert seen["images"] == 40
    assert main(["demo", "--images", "30", "--lr", "1e-3"]) == 0
    assert seen["config"].lr == 1e-3 and seen["images"] == 30 and seen["config"].input_size == 128


def test_recipes_and_bad_options(capsys):
    from ssd300.cli import build_parser, training_config

    args = build_parser().parse_args(["train", "--recipe", "paper", "--epochs", "7", "--freeze", "conv1_1,"])
    config = training_config(args)
    assert (config.optimizer, config.lr, config.epochs, config.schedule, config.freeze) == (
        "sgd", 1e-3, 7, "steps", ("conv1_1",))
    for bad in (["--batch-size", "0"], ["--lr", "-1"], ["--val-fraction", "2"], ["--epochs", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(["train", *bad])
        assert exit_info.value.code == 2
        assert "Traceback" not in capsys.readouterr().err
    assert main(["train", "--input-size", "16"]) == 2
    assert "input-size must be at least 32" in capsys.readouterr().err


@pytest.fixture(scope="module")
def roboflow_copy(tmp_path_factory):
    """A small Roboflow-layout export: 12 real images from ../shared in train/ and valid/."""
    from tests.conftest import shared_path

    source = shared_path("voc2007_roboflow_coco", "valid")
    raw = json.loads((source / "_annotations.coco.json").read_text())
    root = tmp_path_factory.mktemp("roboflow")
    for split, images in (("train", raw["images"][:10]), ("valid", raw["images"][10:14])):
        (root / split).mkdir()
        ids = {im["id"] for im in images}
        for im in images:
            os.link(source / im["file_name"], root / split / im["file_name"])
        part = dict(raw, images=images, annotations=[a for a in raw["annotations"] if a["image_id"] in ids])
        (root / split / "_annotations.coco.json").write_text(json.dumps(part))
    return root


@pytest.mark.slow
def test_train_and_evaluate_on_a_roboflow_export(roboflow_copy, tmp_path, capsys):
    from ssd300.checkpoint import load_checkpoint

    from ssd300.voc import VOC_CLASSES

    # The VOC class list fixes the label order, as a model trained on VOC XML has it.
    (tmp_path / "classes.txt").write_text("\n".join(VOC_CLASSES) + "\n")
    out = tmp_path / "run"
    assert main(["train", "--coco-json", str(roboflow_copy), "--out", str(out), "--input-size", str(SIZE),
                 "--batch-size", "2", "--steps-per-epoch", "1", "--epochs", "1", "--workers", "1",
                 "--freeze", "", "--no-progress", "--classes", str(tmp_path / "classes.txt")]) == 0, \
        capsys.readouterr().err
    state = load_checkpoint(out / "checkpoint.npz")[2]
    assert state["epoch"] == 1 and state["classes"] == list(VOC_CLASSES)
    assert "training on 9 images, validating on 1" in capsys.readouterr().out
    assert (out / "classes.txt").read_text().split() == list(VOC_CLASSES)
    # The classes come from classes.txt beside the weights.
    assert main(["evaluate", "--weights", str(out / "last.h5"), "--coco-json", str(roboflow_copy),
                 "--split", "valid", "--input-size", str(SIZE),
                 "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "mAP" in printed and "AP @[.50:.95]" in printed and "AR max 100" in printed
    results = json.loads((tmp_path / "eval" / "detections.coco.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score"} <= set(results[0])


def test_convert_round_trip_through_the_cli(dataset, tmp_path):
    from ssd300.voc import XML_preprocessor

    assert main(["convert", "voc2coco", str(dataset), str(tmp_path / "d.json")]) == 0
    assert main(["convert", "coco2voc", str(tmp_path / "d.json"), str(tmp_path / "VOC"),
                 "--images", str(dataset / "JPEGImages"), "--split", "trainval"]) == 0
    before = XML_preprocessor(dataset / "Annotations")
    after = XML_preprocessor(tmp_path / "VOC" / "Annotations")
    assert before.classes == after.classes and sorted(before.data) == sorted(after.data)
    for key in before.data:
        np.testing.assert_allclose(before.data[key], after.data[key], atol=1e-12)
    assert main(["convert", "voc2coco", str(tmp_path / "none"), str(tmp_path / "x.json")]) == 2


@pytest.mark.slow
def test_detect_on_a_video_and_pictures_together(dataset, trained_weights, tmp_path, capsys):
    pytest.importorskip("cv2")
    from ssd300.video import write_synthetic_video

    video = tmp_path / "clip.avi"
    write_synthetic_video(video, frames=6, size=(160, 120), fps=12.0, seed=1)
    (tmp_path / "classes.txt").write_text("circle\nsquare\ntriangle\ncross\n")
    out = tmp_path / "out"
    assert main(["detect", "--weights", str(trained_weights), "--classes", str(tmp_path / "classes.txt"),
                 "--input-size", str(SIZE), "--min-score", "0", "--every", "2", "--out", str(out),
                 str(video), f"{dataset}/JPEGImages/000001.jpg"]) == 0
    assert sorted(os.listdir(out)) == ["000001.png", "clip.jsonl", "clip.mp4", "detections.json"]
    lines = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == [0, 2, 4]
    assert "clip.avi: 6 frames, detector on 3" in capsys.readouterr().out
    assert main(["detect", "--weights", str(trained_weights), "--out", str(out)]) == 2
    assert "detect needs pictures or videos" in capsys.readouterr().err


@pytest.mark.slow
def test_export_onnx_and_detect_with_it_without_keras_weights(tmp_path, capsys):
    """export -> detect --model gives detect --weights's boxes (a peaked 64x64 model, 3 classes)."""
    pytest.importorskip("onnxruntime")
    from ssd300 import SSD300
    from ssd300.weights import save_weights_by_name

    model = SSD300((64, 64, 3), num_classes=4)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if "mbox_conf" in layer.name and layer.weights:
            kernel, bias = layer.get_weights()
            bias = rng.normal(0, 3, size=bias.shape).astype(bias.dtype)
            layer.set_weights([kernel * 0.01, bias])
    weights = tmp_path / "w.h5"
    save_weights_by_name(model, weights)
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    onnx = tmp_path / "ssd.onnx"
    pics = [str(ROOT / "pics" / "cat.jpg"), str(ROOT / "pics" / "boys.jpg")]
    assert main(["export", "--weights", str(weights), "--input-size", "64", "--format", "onnx",
                 "--out", str(onnx), "--check", *pics]) == 0
    assert "checked on 2 pictures" in capsys.readouterr().out
    assert main(["detect", "--weights", str(weights), "--input-size", "64", "--min-score", "0.05",
                 "--out", str(tmp_path / "keras"), *pics]) == 0
    assert main(["detect", "--model", str(onnx), "--classes", str(tmp_path / "classes.txt"),
                 "--min-score", "0.05", "--out", str(tmp_path / "onnx"), *pics]) == 0
    keras_report = json.loads((tmp_path / "keras" / "detections.json").read_text())
    onnx_report = json.loads((tmp_path / "onnx" / "detections.json").read_text())
    for path in pics:
        a, b = keras_report[path], onnx_report[path]
        assert a and len(a) == len(b)
        assert [d["label"] for d in a] == [d["label"] for d in b]
        np.testing.assert_allclose([d["score"] for d in a], [d["score"] for d in b], atol=1e-4)
        np.testing.assert_allclose([d["box"] for d in a], [d["box"] for d in b], atol=1e-2)
    assert main(["export", "--weights", str(weights), "--format", "onnx", "--out", str(tmp_path / "x.onnx"),
                 "--num-classes", "4", "--classes", str(tmp_path / "classes.txt")]) == 2
