"""Data-parallel training (ssd300.distribute): several devices, several processes, failures.

The distributed runs start in subprocesses, because the backend, the XLA
flags (two CPU devices for JAX) and TensorFlow's logical devices must be set
before they are imported. They share a JAX compilation cache, so that the
same programs are compiled once per session.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ssd300.checkpoint import load_checkpoint
from ssd300.distribute import (DataParallelRun, DistributedError, cluster_from_environment,
                               first_slurm_host, tf_config_workers)
from ssd300.errors import UserError
from ssd300.synth import make_synthetic_voc
from tests.conftest import ROOT

# Each worker records the keys of every batch it loads, with the part
# (train/val) and the epoch of the dataset that asked for them.
WORKER = r"""
import json, sys, threading
spec = json.loads(sys.argv[1])
if spec.get("logical_cpus"):
    import tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * spec["logical_cpus"])
from ssd300.generator import SamplePipeline, SSDDataset
loads, where = [], threading.local()
get_item, load_batch = SSDDataset.__getitem__, SamplePipeline.batch
def recording_getitem(self, index):
    where.part = ("train" if self.train else "val", self.epoch)
    return get_item(self, index)
def recording_batch(self, keys, *args, **kwargs):
    loads.append([*where.part, list(keys)])
    return load_batch(self, keys, *args, **kwargs)
SSDDataset.__getitem__, SamplePipeline.batch = recording_getitem, recording_batch
from ssd300.training import TrainConfig, fit
for run in spec["runs"]:
    del loads[:]
    result = fit(TrainConfig(**run["config"]))
    with open(run["report"], "w") as f:
        json.dump({"status": result.status, "history": result.history, "loads": loads}, f)
"""

# Variables that would make a subprocess join some other cluster.
_CLUSTER_VARS = ("SLURM_", "SSD300_", "KERAS_DISTRIBUTION_", "TF_CONFIG", "JOB_COMPLETION_INDEX",
                 "XLA_FLAGS", "KERAS_BACKEND")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # trainval has 10 images: 8 for training (two global batches of 4), 2 for validation.
    return make_synthetic_voc(tmp_path_factory.mktemp("voc") / "VOC", images=12, seed=5, style="simple")


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


def run_config(dataset, out, **extra):
    return {"voc_root": str(dataset), "out": str(out), "input_size": 64, "batch_size": 4, "epochs": 2,
            "workers": 1, "optimizer": "sgd", "lr": 3e-3, "val_fraction": 0.2, "progress": False,
            "seed": 0, **extra}


def environment(backend, jax_cache=None, devices=None, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLUSTER_VARS)}
    env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", **extra)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    if jax_cache:
        env.update(JAX_COMPILATION_CACHE_DIR=str(jax_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def start_worker(runs, env, logical_cpus=0):
    spec = json.dumps({"runs": runs, "logical_cpus": logical_cpus})
    return subprocess.Popen([sys.executable, "-c", WORKER, spec], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc, timeout=900):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (out + err)[-3000:]
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report(path):
    with open(path) as f:
        return json.load(f)


def assert_same_training(a, b, rtol, atol):
    """The checkpoints of two runs: weights, optimizer state, epoch and losses."""
    wa, oa, sa = load_checkpoint(a / "checkpoint.npz")
    wb, ob, sb = load_checkpoint(b / "checkpoint.npz")
    assert sa["epoch"] == sb["epoch"] and len(wa) == len(wb) and len(oa) == len(ob)
    assert int(oa[0]) == int(ob[0])  # the optimizer's step count
    for x, y in zip(wa + oa, wb + ob):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(sa["history"][key], sb["history"][key], rtol=1e-4)
    return wa, wb


# ----------------------------------------------------------------------------- cluster description


def test_first_slurm_host_of_compressed_node_lists():
    assert first_slurm_host("gpu[003-008,011],cpu1") == "gpu003"
    assert first_slurm_host("node7,node8") == "node7"
    assert first_slurm_host("rack[2-3]-n[10,12]") == "rack2-n10"
    assert first_slurm_host("single") == "single"


def triple(cluster):
    return cluster.coordinator, cluster.num_processes, cluster.process_id


def test_cluster_values_come_from_options_then_environment():
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_STEP_NODELIST": "gpu[017-020]",
             "SLURM_JOB_ID": "4100"}
    # SLURM alone: JAX's port rule, 61440 + job id % 4096.
    assert triple(cluster_from_environment(environ=slurm)) == ("gpu017:61444", 4, 3)
    assert cluster_from_environment(environ={**slurm, "SSD300_COORDINATOR_PORT": "5000"}).coordinator == "gpu017:5000"
    # SSD300_* before KERAS_DISTRIBUTION_* before SLURM; options before everything.
    env = {**slurm, "KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234,10.0.0.2:1234",
           "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "1"}
    assert triple(cluster_from_environment(environ=env)) == ("10.0.0.1:1234", 2, 1)
    env.update(SSD300_COORDINATOR="head:9", SSD300_NUM_PROCESSES="8", SSD300_PROCESS_ID="5")
    assert triple(cluster_from_environment(environ=env)) == ("head:9", 8, 5)
    assert triple(cluster_from_environment("h:1", 2, 0, environ=env)) == ("h:1", 2, 0)
    # A Kubernetes indexed Job gives the index; the manifest the rest.
    k8s = {"JOB_COMPLETION_INDEX": "2", "SSD300_NUM_PROCESSES": "3", "SSD300_COORDINATOR": "job-0.svc:1234"}
    assert triple(cluster_from_environment(environ=k8s)) == ("job-0.svc:1234", 3, 2)
    # Nothing: one process, no coordinator.
    assert triple(cluster_from_environment(environ={})) == (None, 1, 0)


def test_bad_cluster_descriptions_are_user_errors():
    with pytest.raises(UserError, match="need the coordinator"):
        cluster_from_environment(num_processes=2, process_id=0, environ={})
    with pytest.raises(UserError, match="process id 2 is not in 0 .. 1"):
        cluster_from_environment("h:1", 2, 2, environ={})
    with pytest.raises(UserError, match="num-processes must be an integer, got 'four'"):
        cluster_from_environment(environ={"SLURM_PROCID": "0", "SLURM_NTASKS": "four"})
    assert tf_config_workers({}) == (1, 0)
    tf_config = {"cluster": {"worker": ["a:1", "b:1", "c:1"]}, "task": {"type": "worker", "index": 2}}
    assert tf_config_workers({"TF_CONFIG": json.dumps(tf_config)}) == (3, 2)
    with pytest.raises(UserError, match="TF_CONFIG is not"):
        tf_config_workers({"TF_CONFIG": "{not json"})


def test_batch_checks_and_description():
    run = DataParallelRun("jax", engine=None, replicas=4, num_processes=2, process_id=1, timeout=30)
    assert not run.is_chief
    assert run.shard() == {"drop_last": True, "num_shards": 2, "shard_index": 1}
    with pytest.raises(UserError, match="batch-size 6 does not split over 4 devices"):
        run.check_batch(6, 100, "training")
    with pytest.raises(UserError, match="3 training images cannot fill one global batch of 8"):
        run.check_batch(8, 3, "training")
    assert run.validation_batch(8, 100) == 8 and run.validation_batch(8, 6) == 4
    with pytest.raises(UserError, match="raise --val-fraction"):
        run.validation_batch(8, 3)
    text = run.describe(8)
    assert "over 4 devices in 2 processes" in text and "4 loaded by each process, 2 per device" in text
    error = run.failure(ValueError("UNKNOWN: Gloo AllGather failed: Connection closed by peer"))
    assert isinstance(error, DistributedError) and "process 1 of 2 stopped: ValueError" in str(error)
    assert "Gloo AllGather failed" in str(error) and "after 30 s" in str(error)


def test_options_and_config_checks(capsys):
    from ssd300.cli import build_parser, main, training_config
    from ssd300.training import TrainConfig

    args = build_parser().parse_args(["train", "--distribute", "data-parallel", "--coordinator", "h:7",
                                      "--num-processes", "2", "--process-id", "1",
                                      "--distribute-timeout", "30"])
    config = training_config(args)
    assert (config.distribute, config.coordinator, config.num_processes, config.process_id,
            config.distribute_timeout) == ("data-parallel", "h:7", 2, 1, 30.0)
    assert training_config(build_parser().parse_args(["train"])).distribute is None
    with pytest.raises(UserError, match="distribute must be one of"):
        TrainConfig(distribute="model-parallel")
    with pytest.raises(UserError, match="skip-bad-images cannot be used with distribute"):
        TrainConfig(distribute="data-parallel", skip_bad_images=True)
    with pytest.raises(UserError, match="need distribute"):
        TrainConfig(num_processes=2)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "Keras 3.15 has no distribution for it" in " ".join(capsys.readouterr().out.split())


def test_shards_of_a_global_batch_are_disjoint_parts_of_it(dataset, priors):
    pytest.importorskip("keras")
    from ssd300.generator import SSDDataset
    from ssd300.ssd_utils import BBoxUtility
    from ssd300.voc import XML_preprocessor

    gt = XML_preprocessor(f"{dataset}/Annotations").data
    util = BBoxUtility(5, priors)
    keys = sorted(gt)[:10]

    def data(**shard):
        return SSDDataset(gt, util, f"{dataset}/JPEGImages", keys, (32, 32), batch_size=4, seed=3,
                          drop_last=True, **shard)

    whole = data()
    parts = [data(num_shards=2, shard_index=i) for i in range(2)]
    assert len(whole) == len(parts[0]) == 2  # 10 images: two whole batches, 2 left out
    for epoch in (0, 1):
        for d in (whole, *parts):
            d.epoch = epoch
        for b in range(len(whole)):
            x, y = whole[b]
            pieces = [p[b] for p in parts]
            # The same pixels and targets (same per-image augmentation draws), in order.
            np.testing.assert_array_equal(np.concatenate([p[0] for p in pieces]), x)
            np.testing.assert_array_equal(np.concatenate([p[1] for p in pieces]), y)
    with pytest.raises(ValueError, match="drop_last"):
        SSDDataset(gt, util, f"{dataset}/JPEGImages", keys, (32, 32), batch_size=4, num_shards=2)
    with pytest.raises(ValueError, match="multiple of num_shards"):
        data(num_shards=3, shard_index=0)


def test_several_tensorflow_processes_are_refused(monkeypatch, tmp_path):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the TensorFlow backend's check")
    from ssd300.distribute import start
    from ssd300.training import TrainConfig

    workers = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(workers))
    with pytest.raises(UserError, match=r"2 processes on TensorFlow.*keras-team/keras#20585.*KERAS_BACKEND=jax"):
        start(TrainConfig(distribute="data-parallel", out=str(tmp_path)))


@pytest.mark.slow
def test_pytorch_backend_says_keras_has_no_distribution(dataset, tmp_path):
    result = subprocess.run([sys.executable, "ssd_training.py", "--voc-root", str(dataset), "--out",
                             str(tmp_path / "run"), "--distribute", "data-parallel"],
                            cwd=ROOT, env=environment("torch"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Keras 3.15 has no distribution for the PyTorch backend" in result.stderr
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- JAX


@pytest.fixture(scope="module")
def jax_single(dataset, jax_cache, tmp_path_factory):
    """One process with two CPU devices: a plain run (one device) and a DataParallel run, 2 epochs each;
    then an epoch of the paper recipe's loss and augmentation in bfloat16 over the two devices."""
    out = tmp_path_factory.mktemp("jax_single")
    paper = dict(mixed_precision="bfloat16", augment="paper", per_image_mining=True, neg_pos_ratio=3.0,
                 epochs=1)
    runs = [{"config": run_config(dataset, out / "plain"), "report": str(out / "plain.json")},
            {"config": run_config(dataset, out / "two_devices", distribute="data-parallel"),
             "report": str(out / "two_devices.json")},
            {"config": run_config(dataset, out / "mixed", distribute="data-parallel", **paper),
             "report": str(out / "mixed.json")}]
    start = time.monotonic()
    log = finish(start_worker(runs, environment("jax", jax_cache, devices=2)))
    print(f"JAX single process, three runs: {time.monotonic() - start:.0f} s")
    return out, log


@pytest.mark.slow
def test_jax_two_devices_give_the_weights_of_one(jax_single):
    out, log = jax_single
    assert "DataParallel (jax) over 2 devices in 1 process: global batch 4" in log
    # One SPMD program over the global batch: the same operations as on one device, but
    # reductions over the batch are summed per device and then across the devices, so float32
    # round-off differs (relative 1e-7 per reduction) and grows over 4 SGD steps through the
    # network. Measured: 1.1e-8 apart, while the second epoch moves the weights by 0.01; we
    # allow 1e-6 absolute + 1e-4 relative.
    assert_same_training(out / "plain", out / "two_devices", rtol=1e-4, atol=1e-6)
    assert report(out / "plain.json")["status"] == report(out / "two_devices.json")["status"] == "done"


@pytest.mark.slow
def test_jax_two_devices_with_mixed_precision_and_the_paper_recipe(jax_single):
    out, log = jax_single
    mixed = report(out / "mixed.json")
    assert mixed["status"] == "done" and np.isfinite(mixed["history"]["loss"]).all()
    weights, _, state = load_checkpoint(out / "mixed" / "checkpoint.npz")
    assert state["epoch"] == 1 and all(w.dtype == np.float32 for w in weights)  # float32 variables
    assert "augment paper" in log


@pytest.fixture(scope="module")
def killed_run(dataset, jax_cache, tmp_path_factory):
    """Two JAX processes (CLI, options on one, environment on the other); process 1 killed after epoch 1."""
    out = tmp_path_factory.mktemp("killed")
    port = free_port()
    config = run_config(dataset, out)
    common = ["ssd_training.py", "--voc-root", config["voc_root"], "--input-size", "64", "--batch-size", "4",
              "--epochs", "3", "--workers", "1", "--optimizer", "sgd", "--lr", "3e-3", "--val-fraction", "0.2",
              "--no-progress", "--distribute", "data-parallel", "--distribute-timeout", "20"]
    env = environment("jax", jax_cache)
    p0 = subprocess.Popen([sys.executable, *common, "--out", str(out / "p0"), "--coordinator",
                           f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "0"],
                          cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    env1 = dict(env, SSD300_COORDINATOR=f"127.0.0.1:{port}", SSD300_NUM_PROCESSES="2", SSD300_PROCESS_ID="1")
    p1 = subprocess.Popen([sys.executable, *common, "--out", str(out / "p1")], cwd=ROOT, env=env1, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 900
        while not (out / "p0" / "log.csv").exists() and time.monotonic() < deadline \
                and p0.poll() is None and p1.poll() is None:
            time.sleep(0.5)
        alive = p0.poll() is None and p1.poll() is None
        files_of_1 = sorted(os.listdir(out / "p1")) if (out / "p1").exists() else None
        epoch_1 = load_checkpoint(out / "p0" / "checkpoint.npz") if alive else None
        p1.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, err = p0.communicate(timeout=300)
        stopped_after = time.monotonic() - killed
        p1.communicate()
    finally:
        for p in (p0, p1):
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert alive, f"a process ended before the first epoch: {err[-3000:]}"
    return {"out": out, "err": err, "returncode": p0.returncode, "stopped_after": stopped_after,
            "files_of_1": files_of_1, "epoch_1": epoch_1}


@pytest.mark.slow
def test_jax_killed_worker_stops_the_others_with_a_message(killed_run):
    print(f"process 0 stopped {killed_run['stopped_after']:.1f} s after process 1 was killed")
    assert killed_run["returncode"] != 0
    err = killed_run["err"]
    assert "error: process 0 of 2 stopped:" in err, err[-3000:]
    assert "If another process died or hung, this follows from it" in err
    assert killed_run["stopped_after"] < 20 + 60  # the timeout, and the time to write the message
    # Only process 0 wrote: process 1's output folder is empty after its first epoch.
    assert killed_run["files_of_1"] == []
    weights, optimizer_values, state = killed_run["epoch_1"]
    assert state["epoch"] == 1 and int(optimizer_values[0]) == 2  # 8 images, 2 global batches of 4
    assert sorted(os.listdir(killed_run["out"] / "p0")) >= ["best.h5", "checkpoint.npz", "classes.txt",
                                                             "last.h5", "log.csv", "loss.png"]


@pytest.mark.slow
def test_jax_two_processes_resume_and_match_one_process(killed_run, jax_single, dataset, jax_cache):
    """Resume the killed run's epoch-1 checkpoint on 2 processes; epoch 2 ends with the single run's weights."""
    out = killed_run["out"]
    resumed = out / "resumed"
    for p in ("p0", "p1"):  # each process reads the same checkpoint (a copy, as on machines without NFS)
        (resumed / p).mkdir(parents=True)
        shutil.copy(out / "p0" / "checkpoint.npz", resumed / p / "checkpoint.npz")
    port = free_port()
    procs = [start_worker([{"config": run_config(dataset, resumed / f"p{i}", distribute="data-parallel",
                                                 resume=True, coordinator=f"127.0.0.1:{port}",
                                                 num_processes=2, process_id=i, distribute_timeout=60),
                            "report": str(resumed / f"p{i}.json")}], environment("jax", jax_cache))
             for i in (0, 1)]
    logs = [finish(p) for p in procs]
    assert "resuming from" in logs[0] and "in 2 processes: global batch 4, 2 loaded by each process" in logs[0]
    assert "training on" not in logs[1] and "resuming" not in logs[1]  # process 1 prints nothing
    single, _ = jax_single
    # The killed run's first epoch and this second epoch, on two processes, give the single
    # process's weights (tolerance as for two devices: only the reduction order differs).
    final, _ = assert_same_training(single / "plain", resumed / "p0", rtol=1e-4, atol=1e-6)
    # The comparison is sensitive: the second epoch moved the weights far more than the tolerance.
    moved = max(float(np.abs(a - b).max()) for a, b in zip(final, killed_run["epoch_1"][0]))
    assert moved > 1e-4, moved
    assert sorted(os.listdir(resumed / "p1")) == ["checkpoint.npz"]  # only the copy it read

    # Each process loaded its half of every global batch of epoch 2: disjoint halves that together
    # are exactly what the single process loaded in that epoch. (Keras also reads the first batch
    # once before training, to learn the data's shapes: the "train" loads of epoch 0 here.)
    reference = report(single / "plain.json")["loads"]
    parts = [report(resumed / f"p{i}.json")["loads"] for i in (0, 1)]
    train = sorted(k for p, e, keys in reference if (p, e) == ("train", 1) for k in keys)
    val = sorted({k for p, _, keys in reference if p == "val" for k in keys})  # the same each epoch
    for part, expected in (("train", train), ("val", val)):
        seen = [sorted(k for p, e, keys in loads if p == part and (p == "val" or e == 1) for k in keys)
                for loads in parts]
        assert not set(seen[0]) & set(seen[1]), (part, seen)
        assert sorted(seen[0] + seen[1]) == expected and len(seen[0]) == len(seen[1]), (part, seen, expected)


# ----------------------------------------------------------------------------- TensorFlow


@pytest.mark.slow
def test_tensorflow_mirrored_strategy_on_two_cpus_gives_the_weights_of_one(dataset, tmp_path):
    # Each replica computes the loss of its part of the batch: with per-image mining the loss is a
    # mean of per-image losses, the same as the loss of the whole batch on one device.
    extra = {"per_image_mining": True, "neg_pos_ratio": 3.0}
    runs = [{"config": run_config(dataset, tmp_path / "plain", **extra), "report": str(tmp_path / "plain.json")},
            {"config": run_config(dataset, tmp_path / "mirrored", distribute="data-parallel", **extra),
             "report": str(tmp_path / "mirrored.json")}]
    # oneDNN's CPU kernels choose their blocking by batch size, so batches of 4 and of 2 round
    # differently (2.7e-5 apart after 2 steps, on one device as on two): TensorFlow's own
    # kernels, like XLA's, round the same whatever the batch.
    env = environment("tensorflow", TF_ENABLE_ONEDNN_OPTS="0")
    start = time.monotonic()
    log = finish(start_worker(runs, env, logical_cpus=2))
    print(f"TensorFlow, two runs: {time.monotonic() - start:.0f} s")
    assert "MirroredStrategy (tensorflow) over 2 devices in 1 process: global batch 4" in log
    # Gradients are summed over the replicas instead of over one batch: round-off as for JAX
    # (measured: 1.5e-8 apart).
    assert_same_training(tmp_path / "plain", tmp_path / "mirrored", rtol=1e-4, atol=1e-6)
