"""The command line: train on COCO, detect, evaluate (VOC and COCO), convert, priors, info, synth."""

import json
import os
import shutil
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


def test_onnx_detect_and_evaluate_run_without_keras(dataset, tmp_path):
    """detect --model and evaluate --model (frames from the annotations included) import neither
    Keras nor TensorFlow."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from tests.test_export import fake_onnx_detector

    model = fake_onnx_detector(tmp_path / "m.onnx", metadata={"num_classes": "5"})
    names_file(tmp_path / "classes.txt", ["circle", "square", "triangle", "cross"])
    code = ("import sys; from ssd300.cli import main; "
            f"assert main(['evaluate', '--model', {str(model)!r}, '--voc-root', {str(dataset)!r}, "
            f"'--out', {str(tmp_path / 'r')!r}]) == 0; "
            f"assert main(['detect', '--model', {str(model)!r}, '--out', {str(tmp_path / 'd')!r}, "
            f"{str(dataset / 'JPEGImages')!r}]) == 0; "
            "assert not {'keras', 'tensorflow'} & set(sys.modules), 'imported Keras'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "mAP" in result.stdout and len(os.listdir(tmp_path / "d")) == 13  # 12 pictures + json


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


def test_demo_and_training_options_that_would_be_ignored_are_refused(capsys):
    from ssd300.cli import train_main

    assert train_main(["--demo", "--recipe", "paper", "--voc-root", "x"]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        "error: --demo trains its own recipe on its generated dataset; --voc-root, --recipe would be "
        "ignored (train without --demo to use them)")
    assert train_main(["--demo-minutes", "3", "--demo-images", "40"]) == 2
    assert one_error_line(capsys.readouterr().err) == "error: --demo-images, --demo-minutes apply to --demo only"
    for seed, why in (("-1", "must be 0 or more, got -1"), ("4294967296", "must be below 2**32, got 4294967296")):
        with pytest.raises(SystemExit):
            train_main(["--seed", seed])
        assert f"argument --seed: {why}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(["--help"])
    assert capsys.readouterr().out.startswith("usage: ssd_training.py [-h] [--voc-root VOC_ROOT]")
    status, _, err = run(capsys, "evaluate", "--weights", "never-read.h5", "--coco-json",
                         ROOT / "tests" / "__init__.py", "--split", "valid")
    assert status == 2 and one_error_line(err) == (
        f"error: {ROOT / 'tests' / '__init__.py'} is a COCO JSON file, which has no splits: --split valid is only "
        f"for a dataset folder")


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
def test_export_onnx_and_detect_with_it_without_keras_weights(tmp_path, capsys, cli_exported_onnx):
    """export -> detect --model gives detect --weights's boxes (tests.test_export.peaked_ssd: 64x64, 3 classes)."""
    weights = tmp_path / "w.h5"
    shutil.copy(cli_exported_onnx["weights"], weights)
    shutil.copy(cli_exported_onnx["classes"], tmp_path / "classes.txt")
    onnx = tmp_path / "ssd.onnx"
    shutil.copy(cli_exported_onnx["onnx"], onnx)
    pics = [str(ROOT / "pics" / "cat.jpg"), str(ROOT / "pics" / "boys.jpg")]
    assert "checked on 2 pictures" in cli_exported_onnx["printed"]
    assert main(["detect", "--weights", str(weights), "--input-size", "64", "--min-score", "0.05",
                 "--out", str(tmp_path / "keras"), *pics]) == 0
    assert main(["detect", "--model", str(onnx), "--classes", str(tmp_path / "classes.txt"),
                 "--min-score", "0.05", "--out", str(tmp_path / "onnx"), *pics]) == 0
    # The file records the class count and the names of the classes.txt beside the weights: moved
    # away from that file, it still labels its detections with them.
    from ssd300.onnx_runtime import OnnxDetector

    (tmp_path / "elsewhere").mkdir()
    moved = tmp_path / "elsewhere" / "ssd.onnx"
    os.replace(onnx, moved)
    recorded = OnnxDetector(moved)
    assert (recorded.num_classes, recorded.class_names) == (4, ("a", "b", "c"))
    assert main(["detect", "--model", str(moved), "--min-score", "0.05", "--out", str(tmp_path / "moved"),
                 *pics]) == 0
    keras_report = json.loads((tmp_path / "keras" / "detections.json").read_text())
    onnx_report = json.loads((tmp_path / "onnx" / "detections.json").read_text())
    assert json.loads((tmp_path / "moved" / "detections.json").read_text()) == onnx_report
    for path in pics:
        a, b = keras_report[path], onnx_report[path]
        assert a and len(a) == len(b)
        assert [d["label"] for d in a] == [d["label"] for d in b]
        assert [d["class"] for d in a] == [d["class"] for d in b]
        np.testing.assert_allclose([d["score"] for d in a], [d["score"] for d in b], atol=1e-4)
        np.testing.assert_allclose([d["box"] for d in a], [d["box"] for d in b], atol=1e-2)
    assert main(["export", "--weights", str(weights), "--format", "onnx", "--out", str(tmp_path / "x.onnx"),
                 "--num-classes", "4", "--classes", str(tmp_path / "classes.txt")]) == 2
    # evaluate --model: the devkit's scores of the exported file are the Keras model's. Ground truth:
    # each picture's two best Keras detections (one with its class changed), and one box nothing found.
    voc = tmp_path / "voc"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    for i, path in enumerate(pics):
        (voc / "JPEGImages" / f"{i}.jpg").write_bytes(open(path, "rb").read())
        first, second = keras_report[path][:2]
        objects = [(first["class"], first["box"]), ("abc"[(first["label"]) % 3], second["box"]),
                   ("c", [1, 1, 20, 20])]
        (voc / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.jpg</filename><size><width>{recorded_size(path)[0]}</width>"
            f"<height>{recorded_size(path)[1]}</height><depth>3</depth></size>" + "".join(
                f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{round(b[0]) + 1}</xmin>"
                f"<ymin>{round(b[1]) + 1}</ymin><xmax>{round(b[2])}</xmax><ymax>{round(b[3])}</ymax>"
                f"</bndbox></object>" for name, b in objects) + "</annotation>")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("0\n1\n")
    assert main(["evaluate", "--weights", str(weights), "--input-size", "64", "--voc-root", str(voc),
                 "--out", str(tmp_path / "r_keras")]) == 0
    keras_map = [line for line in capsys.readouterr().out.splitlines() if line.startswith("mAP")]
    assert main(["evaluate", "--model", str(moved), "--voc-root", str(voc), "--out", str(tmp_path / "r_onnx")]) == 0
    onnx_map = [line for line in capsys.readouterr().out.splitlines() if line.startswith("mAP")]
    assert keras_map == onnx_map and 0.1 < float(keras_map[0].split()[1]) < 1.0, keras_map
    for name in ("a", "b", "c"):
        rows = [np.loadtxt(tmp_path / r / f"comp4_det_test_{name}.txt", usecols=range(1, 6), ndmin=2)
                for r in ("r_keras", "r_onnx")]
        assert rows[0].shape == rows[1].shape
        np.testing.assert_allclose(rows[0][:, 0], rows[1][:, 0], atol=1e-4)
    status, _, err = run(capsys, "evaluate", "--model", moved, "--confidence", 0.2, "--voc-root", voc)
    assert status == 2 and one_error_line(err).startswith(
        f"error: --confidence applies to --weights; {moved} keeps the input size and confidence threshold")
    status, _, err = run(capsys, "evaluate", "--model", moved, "--weights", weights, "--voc-root", voc)
    assert status == 2 and one_error_line(err) == (
        "error: evaluate needs --weights FILE.h5 or --model FILE.onnx (one of them)")


def recorded_size(path):
    """``(width, height)`` of a picture file."""
    from PIL import Image

    with Image.open(path) as image:
        return image.size


# --- one-line errors, names that do not collide, ONNX class counts ----------------------------------------


def run(capsys, *argv):
    """``ssd300 ARGV`` in this process: ``(status, stdout, stderr)``; argparse's exits give their status."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    return status, out, err


def one_error_line(err):
    """The only line of ``err``, which must be an ``error: ...`` line."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def picture(path, width, height):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 160, 40)).save(path)
    return path


def names_file(path, names):
    path.write_text("".join(f"{n}\n" for n in names))
    return path


def test_detect_with_an_onnx_model_knows_its_classes(tmp_path, capsys):
    """The class count an ONNX file records (or its graph tells) decides the names; nothing is written
    when they do not fit."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from ssd300.voc import VOC_CLASSES
    from tests.test_export import FAKE_LABELS, fake_onnx_detector

    pic = picture(tmp_path / "p.jpg", 40, 30)
    two = names_file(tmp_path / "two.txt", ["a", "b"])
    four = names_file(tmp_path / "four.txt", ["p", "q", "r", "s"])

    def model(name, **options):
        (tmp_path / name).mkdir()
        return fake_onnx_detector(tmp_path / name / "m.onnx", **options)

    def detected_classes(out):
        (dets,) = json.loads((out / "detections.json").read_text()).values()
        assert [d["label"] for d in dets] == list(FAKE_LABELS)
        return [d["class"] for d in dets]

    named = model("named", metadata={"num_classes": "5", "class_names": '["w", "x", "y", "z"]'})
    assert run(capsys, "detect", "--model", named, "--min-score", 0, "--out", tmp_path / "o1", pic)[0] == 0
    assert detected_classes(tmp_path / "o1") == ["w", "z"]
    # A list given (or classes.txt beside the model) wins over the recorded names; it must fit.
    assert run(capsys, "detect", "--model", named, "--classes", four, "--min-score", 0,
               "--out", tmp_path / "o2", pic)[0] == 0
    assert detected_classes(tmp_path / "o2") == ["p", "s"]
    status, _, err = run(capsys, "detect", "--model", named, "--classes", two, "--out", tmp_path / "o3", pic)
    assert status == 2 and one_error_line(err) == (
        f"error: {named} detects 4 classes + background, but 2 class names were given (a, b); pass "
        f"--classes FILE with 4 names, in the order the model was trained with")
    # A count without names: VOC's names for 21 classes, else the user must give them.
    voc = model("voc", metadata={"num_classes": "21"})
    assert run(capsys, "detect", "--model", voc, "--min-score", 0, "--out", tmp_path / "o4", pic)[0] == 0
    assert detected_classes(tmp_path / "o4") == [VOC_CLASSES[0], VOC_CLASSES[3]] == ["aeroplane", "boat"]
    counted = model("counted", metadata={"num_classes": "5"})
    status, _, err = run(capsys, "detect", "--model", counted, "--out", tmp_path / "o5", pic)
    assert status == 2 and one_error_line(err).startswith(
        f"error: {counted} detects 4 classes + background but records no class names; pass --classes "
        f"FILE with 4 names")
    # Exported before the metadata: the count from the graph, checked up front.
    old = model("old", logits=np.zeros((6, 5)))
    status, _, err = run(capsys, "detect", "--model", old, "--classes", two, "--out", tmp_path / "o6", pic)
    assert status == 2 and f"{old} detects 4 classes + background, but 2 class names" in one_error_line(err)
    # No count at all: every label is checked before anything is written.
    bare = model("bare")
    status, _, err = run(capsys, "detect", "--model", bare, "--classes", two, "--min-score", 0,
                         "--out", tmp_path / "o7", pic, picture(tmp_path / "q.jpg", 20, 20))
    assert status == 2 and one_error_line(err).startswith(
        f"error: {bare} detected label 4, but only 2 class names were given")
    status, _, err = run(capsys, "detect", "--model", bare, "--out", tmp_path / "o8", pic)
    assert status == 2 and "records neither its class count nor its class names" in one_error_line(err)
    assert run(capsys, "detect", "--model", bare, "--classes", four, "--min-score", 0,
               "--out", tmp_path / "o9", pic)[0] == 0
    assert detected_classes(tmp_path / "o9") == ["p", "s"]
    for refused in ("o3", "o5", "o6", "o7", "o8"):
        assert not (tmp_path / refused).exists(), refused


def test_detect_gives_inputs_that_share_a_name_their_own_outputs(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from PIL import Image

    from tests.test_export import FAKE_BOXES, fake_onnx_detector

    model = fake_onnx_detector(tmp_path / "m.onnx", metadata={"num_classes": "5"})
    classes = names_file(tmp_path / "classes.txt", ["w", "x", "y", "z"])
    inputs = {  # input -> (its size, the output it must get)
        picture(tmp_path / "a" / "1.jpg", 40, 30): "1.png",
        picture(tmp_path / "b" / "1.jpg", 50, 20): "1_2.png",
        picture(tmp_path / "a" / "1.png", 30, 36): "1_3.png",
        picture(tmp_path / "c" / "1_2.jpg", 60, 10): "1_2_2.png",
        picture(tmp_path / "c" / "ONE.jpg", 16, 24): "ONE.png",
        picture(tmp_path / "d" / "one.jpg", 24, 16): "one_2.png",  # ONE.png on a file system that ignores case
    }
    out = tmp_path / "out"
    status, printed, err = run(capsys, "detect", "--model", model, "--classes", classes, "--min-score", 0,
                               "--out", out, *inputs)
    assert status == 0, err
    assert sorted(os.listdir(out)) == sorted([*inputs.values(), "detections.json"])
    report = json.loads((out / "detections.json").read_text())
    assert sorted(report) == sorted(map(str, inputs))
    for path, name in inputs.items():
        assert f"{path}: 2 detections -> {out / name}\n" in printed
        with Image.open(path) as source, Image.open(out / name) as drawn:
            assert drawn.size == source.size
            width, height = source.size
        np.testing.assert_allclose([d["box"] for d in report[str(path)]],
                                   np.array(FAKE_BOXES) * [width, height, width, height], rtol=1e-6)


def test_detect_takes_folders(tmp_path, capsys):
    """A folder stands for its pictures (and videos), by extension, in name order; not its sub-folders,
    hidden files or other files. An empty folder is an error that stops nothing else."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from tests.test_export import FAKE_BOXES, fake_onnx_detector

    model = fake_onnx_detector(tmp_path / "m.onnx", metadata={"num_classes": "5"})
    classes = names_file(tmp_path / "classes.txt", ["w", "x", "y", "z"])
    folder = tmp_path / "pics"
    sizes = {"b.PNG": (30, 20), "a.jpg": (40, 30), "c.jpeg": (16, 24)}
    for name, (w, h) in sizes.items():
        picture(folder / name, w, h)
    picture(folder / "sub" / "d.jpg", 8, 8)
    picture(folder / ".hidden.jpg", 8, 8)
    (folder / "notes.txt").write_text("not a picture")
    (folder / "weights.h5").write_bytes(b"\x89HDF\r\n")  # Pillow claims .h5; not a photo
    (tmp_path / "empty").mkdir()
    single = picture(tmp_path / "e.jpg", 10, 12)
    out = tmp_path / "out"
    status, printed, err = run(capsys, "detect", "--model", model, "--classes", classes, "--min-score", 0,
                               "--batch-size", 2, "--out", out, folder, tmp_path / "empty", single)
    assert status == 1
    assert one_error_line(err) == f"error: {tmp_path / 'empty'}: no pictures or videos in this folder"
    assert sorted(os.listdir(out)) == ["a.png", "b.png", "c.png", "detections.json", "e.png"]
    report = json.loads((out / "detections.json").read_text())
    assert list(report) == [str(folder / "a.jpg"), str(folder / "b.PNG"), str(folder / "c.jpeg"), str(single)]
    for name, (w, h) in {**sizes, "../e.jpg": (10, 12)}.items():
        np.testing.assert_allclose([d["box"] for d in report[os.path.normpath(str(folder / name))]],
                                   np.array(FAKE_BOXES) * [w, h, w, h], rtol=1e-6)
    assert printed.count(" detections -> ") == 4
    # Only empty folders: nothing to do, nothing written.
    status, _, err = run(capsys, "detect", "--model", model, "--out", tmp_path / "none", tmp_path / "empty")
    assert status == 1 and "no pictures or videos in this folder" in err and not (tmp_path / "none").exists()


def test_detect_into_the_pictures_own_folder_overwrites_no_input(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from PIL import Image

    from tests.test_export import fake_onnx_detector

    model = fake_onnx_detector(tmp_path / "m.onnx", metadata={"num_classes": "5"})
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "a.jpg")
    Image.new("RGB", (40, 30), (0, 0, 255)).save(folder / "a.png")
    Image.new("RGB", (40, 30), (0, 255, 0)).save(folder / "a_2.png")
    status, printed, _ = run(capsys, "detect", "--model", model, "--classes",
                             names_file(tmp_path / "c.txt", ["w", "x", "y", "z"]), "--out", folder, folder)
    assert status == 0
    assert sorted(os.listdir(folder)) == ["a.jpg", "a.png", "a_2.png", "a_2_2.png", "a_3.png", "a_4.png",
                                          "detections.json"]
    colours = {name: Image.open(folder / name).convert("RGB").getpixel((39, 29))
               for name in ("a.png", "a_2.png", "a_3.png", "a_4.png", "a_2_2.png")}
    # The inputs are untouched; each output shows its own picture (a corner no box reaches).
    assert colours == {"a.png": (0, 0, 255), "a_2.png": (0, 255, 0), "a_3.png": (254, 0, 0),
                       "a_4.png": (0, 0, 255), "a_2_2.png": (0, 255, 0)}, colours
    assert f"{folder / 'a.jpg'}: 2 detections -> {folder / 'a_3.png'}" in printed
    status, _, err = run(capsys, "detect", "--model", model, "--start-frame", -1, folder)
    assert status == 2 and "argument --start-frame: must be 0 or more, got -1" in err


def test_detect_videos_that_share_a_name_and_an_unreadable_video(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    pytest.importorskip("cv2")
    from ssd300.video import write_synthetic_video
    from tests.test_export import fake_onnx_detector

    model = fake_onnx_detector(tmp_path / "m.onnx", metadata={"num_classes": "5"})
    classes = names_file(tmp_path / "classes.txt", ["w", "x", "y", "z"])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_synthetic_video(tmp_path / "a" / "x.avi", frames=3, size=(32, 24), seed=1)
    write_synthetic_video(tmp_path / "b" / "x.avi", frames=5, size=(32, 24), seed=2)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 50)
    pic = picture(tmp_path / "x.jpg", 20, 20)
    out = tmp_path / "out"
    status, printed, err = run(capsys, "detect", "--model", model, "--classes", classes, "--min-score", 0,
                               "--out", out, tmp_path / "a" / "x.avi", garbage, tmp_path / "missing.mp4",
                               tmp_path / "b" / "x.avi", pic)
    # The unreadable and the missing video are reported and skipped, as pictures are; exit status 1.
    assert status == 1
    assert [line for line in err.splitlines() if "error" in line] == [  # (and the progress bars)
        f"error: {garbage}: not a readable video (OpenCV cannot open it)",
        f"error: {tmp_path / 'missing.mp4'}: video not found"]
    assert sorted(os.listdir(out)) == ["detections.json", "x.jsonl", "x.mp4", "x.png", "x_2.jsonl", "x_2.mp4"]
    assert f"{tmp_path / 'a' / 'x.avi'}: 3 frames, detector on 3 -> {out / 'x.mp4'}, {out / 'x.jsonl'}" in printed
    assert f"{tmp_path / 'b' / 'x.avi'}: 5 frames, detector on 5 -> {out / 'x_2.mp4'}" in printed
    assert len((out / "x.jsonl").read_text().splitlines()) == 3
    assert len((out / "x_2.jsonl").read_text().splitlines()) == 5
    # A camera that is not there: an error, and no empty output folder left.
    status, _, err = run(capsys, "detect", "--model", model, "--classes", classes, "--camera", 97,
                         "--out", tmp_path / "cam")
    assert status == 2 and one_error_line(err) == "error: camera 97: no camera at this index (OpenCV cannot open it)"
    assert not (tmp_path / "cam").exists()


def test_ctrl_c_in_a_video_stops_the_whole_detect_run(tmp_path, capsys, monkeypatch):
    """detect_video returns (outputs kept) on Ctrl-C; the command then stops with status 130, where q in
    the window only ends that video."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import ssd300.video
    from ssd300.video import VideoResult
    from tests.test_export import fake_onnx_detector

    model = fake_onnx_detector(tmp_path / "m.onnx", metadata={"num_classes": "21"})
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"")
    pic = picture(tmp_path / "p.jpg", 20, 20)
    calls = []

    def fake_detect_video(detector, source, out_video, out_jsonl, **options):
        calls.append(os.path.basename(source))
        result = VideoResult(source, frames=3, processed=3, width=20, height=20, fps=10.0)
        result.interrupted = why
        return result

    monkeypatch.setattr(ssd300.video, "detect_video", fake_detect_video)
    for why, status, seen in (("ctrl-c", 130, ["a.mp4"]), ("key", 0, ["a.mp4", "b.mp4"])):
        calls.clear()
        code, printed, err = run(capsys, "detect", "--model", model, "--out", tmp_path / why,
                                 tmp_path / "a.mp4", tmp_path / "b.mp4", pic)
        assert (code, calls) == (status, seen), err
        assert f"{tmp_path / 'a.mp4'}: 3 frames, detector on 3" in printed and "(interrupted; outputs kept)" in printed
        assert (tmp_path / why / "p.png").exists() == (why == "key")
        assert ("interrupted" in err) == (why == "ctrl-c")


def test_detect_leaves_no_empty_output_folder_when_every_input_fails(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from tests.test_export import fake_onnx_detector

    model = fake_onnx_detector(tmp_path / "m.onnx", metadata={"num_classes": "21"})
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    status, _, err = run(capsys, "detect", "--model", model, "--out", tmp_path / "new" / "out",
                         tmp_path / "bad.jpg", tmp_path / "gone.jpg")
    assert status == 1 and err.count("error: ") == 2
    assert sorted(os.listdir(tmp_path)) == ["bad.jpg", "m.onnx"]
    (tmp_path / "kept").mkdir()  # a folder that was there stays
    assert run(capsys, "detect", "--model", model, "--out", tmp_path / "kept", tmp_path / "bad.jpg")[0] == 1
    assert (tmp_path / "kept").is_dir()


def test_evaluate_checks_its_output_folder_before_anything_runs(dataset, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    # The weights do not exist: the output folder is refused before they are read.
    for out, problem in ((tmp_path / "afile", "cannot create the output folder: a file of that name exists"),
                         (tmp_path / "afile" / "sub", "cannot create the output folder (Not a directory)"),
                         ("/proc/ssd300-results", "cannot create the output folder (No such file or directory)")):
        status, _, err = run(capsys, "evaluate", "--weights", tmp_path / "none.h5", "--voc-root", dataset,
                             "--input-size", SIZE, "--out", out)
        assert status == 2 and one_error_line(err) == f"error: {out}: {problem}"
    status, _, err = run(capsys, "evaluate", "--weights", tmp_path / "none.h5", "--voc-root", dataset,
                         "--input-size", SIZE, "--out", tmp_path / "new" / "results")
    assert status == 2 and one_error_line(err) == f"error: {tmp_path / 'none.h5'}: weights file not found"
    assert sorted(os.listdir(tmp_path)) == ["afile"]  # the output folders it made are gone again


def test_writers_report_an_output_that_cannot_be_written(dataset, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    assert run(capsys, "convert", "voc2coco", dataset, tmp_path / "d.json")[0] == 0
    cases = [
        (["convert", "voc2coco", dataset], "/proc/ssd300-x/out.json", "the COCO JSON"),
        (["convert", "voc2coco", dataset], tmp_path / "adir", "the COCO JSON"),
        (["convert", "coco2voc", tmp_path / "d.json", "--images", dataset / "JPEGImages"], tmp_path / "afile",
         "the VOC dataset"),
        (["convert", "coco2voc", tmp_path / "d.json", "--images", dataset / "JPEGImages"], "/proc/ssd300-x/voc",
         "the VOC dataset"),
        (["priors", "--size", 32], "/proc/ssd300-x/p.pkl", "the priors"),
        (["priors", "--size", 32], tmp_path / "adir", "the priors"),
        (["synth", "--images", 2], "/proc/ssd300-x/s", "the dataset"),
        (["synth", "--images", 2], tmp_path / "afile" / "s", "the dataset"),
    ]
    for args, out, what in cases:
        command = [*args[:3], out, *args[3:]] if args[0] == "convert" else [args[0], out, *args[1:]]
        status, _, err = run(capsys, *command)
        assert status == 2, (command, err)
        assert one_error_line(err).startswith(f"error: {out}: cannot write {what}"), (command, err)
    assert sorted(os.listdir(tmp_path)) == ["adir", "afile", "d.json"] and not os.listdir(tmp_path / "adir")


def test_bad_class_counts_and_sizes_are_refused_by_the_parser(tmp_path, capsys):
    for argv, message in [
        (["info", "--num-classes", "1"], "argument --num-classes: must be at least 2 (the classes counting "
                                         "the background), got 1"),
        (["export", "--weights", "w.h5", "--format", "onnx", "--out", "x.onnx", "--num-classes", "1"],
         "argument --num-classes: must be at least 2"),
        (["info", "--size", "8"], "argument --size: must be at least 32 (SSD300's five poolings), got 8"),
        (["priors", str(tmp_path / "p.pkl"), "--size", "16"], "argument --size: must be at least 32"),
    ]:
        status, _, err = run(capsys, *argv)
        assert status == 2 and message in err.strip().splitlines()[-1], (argv, err)
    assert os.listdir(tmp_path) == []


def test_export_reads_the_check_pictures_before_exporting(tmp_path, capsys, monkeypatch):
    import ssd300.export

    def export_started(*args, **kwargs):
        raise AssertionError("the export started")

    monkeypatch.setattr(ssd300.export, "export_detector", export_started)
    good = picture(tmp_path / "good.jpg", 20, 20)
    (tmp_path / "garbage.jpg").write_bytes(b"garbage")
    status, _, err = run(capsys, "export", "--weights", tmp_path / "none.h5", "--format", "onnx",
                         "--out", tmp_path / "x.onnx", "--check", good, tmp_path / "garbage.jpg")
    assert status == 2 and one_error_line(err).startswith(f"error: {tmp_path / 'garbage.jpg'}: not a readable image")
    assert sorted(os.listdir(tmp_path)) == ["garbage.jpg", "good.jpg"]
