"""The demo end to end, in short: synthetic set, training, evaluation, pictures, summary."""

import json

import pytest

pytest.importorskip("keras")


@pytest.mark.slow
def test_a_short_demo_runs_end_to_end(tmp_path, monkeypatch, capsys):
    from ssd300.cli import main
    from ssd300.demo import DEMO

    monkeypatch.setenv("SSD300_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--images", "24", "--epochs", "2", "--steps-per-epoch", "2", "--input-size", "64",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 2/2" in printed and "test mAP" in printed
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["epochs"] == 2 and len(summary["val_loss"]) == 2 and 0.0 <= summary["map"] <= 1.0
    assert set(summary["ap"]) <= {"circle", "square", "triangle", "cross"}
    pictures = list((out / "detections").iterdir())
    assert pictures and all(p.suffix == ".png" for p in pictures)
    for name in ("best.h5", "last.h5", "checkpoint.npz", "log.csv", "loss.png", "classes.txt"):
        assert (out / name).is_file(), name
    # The demo's own budget: whole epochs, not minutes.
    assert DEMO.epochs == 5 and DEMO.time_limit is None and DEMO.input_size == 128
