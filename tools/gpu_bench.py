"""SSD300 on a GPU in one call: training-step speed, torchvision's SSD300, the input pipeline, a short training.

Run by ``tools/gpu_bench.sh run`` on the GPU machine (see that script's
header for the one call and what it carries), or here on the CPU with tiny
settings: ``.venv/bin/python tools/gpu_bench.py --dry-run``.

Sections, each in its own process (so one failing, or holding GPU memory,
leaves the others alone):

1. ``step``: images/s and TFLOP/s of SSD300's training step (model +
   ``MultiboxLoss(21, neg_pos_ratio=2.0)`` + Adam, ``train_on_batch`` on NumPy
   batches, host-to-device copies included) on the JAX and PyTorch backends,
   in float32 and ``mixed_bfloat16`` (``bench/bench_train.py``'s child).
2. ``torchvision``: torchvision's ``ssd300_vgg16`` (``weights=None``,
   ``weights_backbone=None``, 21 classes) training step at the same size and
   batch, Adam, float32 and ``torch.autocast`` bfloat16; its FLOPs counted
   from its convolutions with forward hooks.
3. ``pipeline``: ``ssd300.generator.SSDDataset`` batches/s with N worker
   processes on real JPEGs (the carried Roboflow VOC2007 ``valid`` split; the
   synthetic set where it did not travel, said so), original and paper
   augmentation, against the training step's images/s.
4. ``train``: ``python ssd_training.py --coco-json ... --epochs ...
   --steps-per-epoch ... --time-limit ...`` on those images, and the loss of
   each epoch from its ``log.csv``.

Prints a markdown table and writes ``gpu_bench.json`` and ``gpu_bench.md``
to ``--out`` (``$OUT`` on the GPU machine).
"""

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CARRIED_DATA = os.path.join(ROOT, ".cache", "gpu_bench", "data", "voc2007_roboflow_coco", "valid")
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "voc2007_roboflow_coco", "valid")
ANNOTATIONS = "_annotations.coco.json"
START = time.monotonic()


# --- helpers -------------------------------------------------------------------------------------


def section(args, name, extra=(), env=None, timeout=None):
    """Run ``--section name`` in a child process; returns its JSON result or ``{"error": ...}``.

    The child gets at most ``timeout`` seconds and never more than what is left of ``--deadline``.
    """
    left = args.deadline - (time.monotonic() - START)
    timeout = max(1.0, min(timeout or left, left))
    if left < 5:
        return {"error": "skipped: --deadline reached"}
    command = [sys.executable, os.path.abspath(__file__), "--section", name, *_forward(args), *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    t = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        return {"error": f"exit {done.returncode}: {(done.stderr or done.stdout)[-1500:]}"}
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"  {name} {' '.join(extra)}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return result


def _forward(args):
    """The options a child needs to see the same settings."""
    forwarded = ["--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps),
                 "--workers", str(args.workers), "--data", args.data, "--out", args.out,
                 "--train-minutes", str(args.train_minutes), "--train-epochs", str(args.train_epochs),
                 "--train-steps", str(args.train_steps)]
    return forwarded + (["--dry-run"] if args.dry_run else [])


def emit(result):
    print("RESULT " + json.dumps(result), flush=True)


def data_source(args):
    """``(annotation file, description)`` of the real JPEGs, or a synthetic VOC set made now."""
    if args.data and os.path.isfile(os.path.join(args.data, ANNOTATIONS)):
        return os.path.join(args.data, ANNOTATIONS), f"real JPEGs: {args.data}"
    return None, (f"{args.data or CARRIED_DATA} is absent (../shared does not travel to the GPU machine; "
                  "carry .cache/gpu_bench, made by tools/gpu_bench.sh prepare): synthetic VOC set instead")


def scratch_dir(args):
    """A folder for what should not come back under --out (weights, the synthetic set)."""
    path = os.path.join(tempfile.gettempdir(), "ssd300_gpu_bench" + ("_dry" if args.dry_run else ""))
    os.makedirs(path, exist_ok=True)
    return path


def synthetic_root(args):
    from ssd300.synth import make_synthetic_voc

    root = os.path.join(scratch_dir(args), "synthetic_voc")
    if not os.path.isdir(root):
        make_synthetic_voc(root, images=64 if args.dry_run else 400, seed=0)
    return root


def environment(dry_run):
    """Versions (from the installed metadata: no import) and, on the GPU machine, the GPU's name."""
    from importlib import metadata

    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    for name in ("keras", "jax", "jaxlib", "torch", "torchvision", "numpy"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "missing"
    if not dry_run:
        try:
            import torch

            info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        except Exception as e:  # noqa: BLE001 - report it, go on
            info["gpu"] = f"unknown ({type(e).__name__})"
    return info


# --- sections (each runs in its own process) ------------------------------------------------------


def run_step(args, backend, precision):
    """Keras SSD300 training step on this process's backend (bench/bench_train.py's child)."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench_train

    child = ["--sizes", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps),
             "--warmup", "2"]
    if precision == "bfloat16":
        child += ["--mixed-precision", "bfloat16"]
    row = bench_train.run_backend(bench_train.parse_args(child))[0]
    row["precision"] = precision
    row["tflops"] = row["gflops"] / 1e3
    return row


def conv_flops_hook(total):
    """Forward hooks adding 2 x multiply-adds of each Conv2d / Linear call to ``total[0]``."""
    import torch

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total[0] += 2 * output.numel() * kh * kw * module.in_channels // module.groups
        elif isinstance(module, torch.nn.Linear):
            total[0] += 2 * output.numel() * module.in_features

    return hook


def run_torchvision(args, precision):
    """torchvision ``ssd300_vgg16`` training step: images/s and TFLOP/s."""
    import numpy as np
    import torch
    import torchvision

    if args.size != 300:
        return {"skipped": "torchvision's ssd300_vgg16 resizes to 300x300; compared only at --size 300"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None,
                                                      num_classes=21).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), 3e-4)
    rng = np.random.default_rng(0)
    images = torch.tensor(rng.uniform(0, 1, (args.batch, 3, args.size, args.size)), dtype=torch.float32)
    targets = []
    for _ in range(args.batch):
        n = int(rng.integers(1, 5))
        wh = rng.uniform(0.1, 0.6, (n, 2)) * args.size
        xy = rng.uniform(0, 1, (n, 2)) * (args.size - wh)
        targets.append({"boxes": torch.tensor(np.hstack([xy, xy + wh]), dtype=torch.float32, device=device),
                        "labels": torch.tensor(rng.integers(1, 21, n), device=device)})

    def step():
        batch = list(images.to(device))  # the host-to-device copy, as the Keras step has
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            losses = model(batch, targets)
            loss = sum(losses.values())
        loss.backward()
        optimizer.step()
        return float(loss)  # waits for the GPU

    total = [0]
    handles = [m.register_forward_hook(conv_flops_hook(total)) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    step()
    for h in handles:
        h.remove()
    forward_flops = total[0] / args.batch
    step()
    times, cpu = [], []
    for _ in range(args.steps):
        t, c = time.perf_counter(), time.process_time()
        loss = step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    seconds = float(np.median(times))
    # CPU time per step (all threads): on a shared CPU it moves less with the load than wall time.
    return {"model": "torchvision ssd300_vgg16", "precision": precision, "size": args.size,
            "batch": args.batch, "step_s": seconds, "best_step_s": min(times), "images_per_s": args.batch / seconds,
            "cpu_step_s": float(np.median(cpu)), "gflop_per_image": 3 * forward_flops / 1e9,
            "tflops": args.batch * 3 * forward_flops / seconds / 1e12, "loss": loss, "device": device,
            "threads": torch.get_num_threads()}


def run_pipeline(args, augment, workers):
    """SSDDataset batches on ``workers`` processes: images/s."""
    import multiprocessing

    import numpy as np

    from ssd300.coco import load_coco
    from ssd300.generator import SSDDataset
    from ssd300.ssd_utils import BBoxUtility

    annotation_file, source = data_source(args)
    if annotation_file:
        dataset = load_coco(annotation_file)
        image_dir = dataset.image_dir
    else:
        from ssd300.voc import XML_preprocessor

        root = synthetic_root(args)
        dataset = XML_preprocessor(os.path.join(root, "Annotations"))
        image_dir = os.path.join(root, "JPEGImages")
    keys = sorted(dataset.data)
    num_classes = len(dataset.classes) + 1
    data = SSDDataset(dataset.data, BBoxUtility(num_classes, model_priors(args.size)), image_dir, keys,
                      (args.size, args.size), args.batch, train=True, augment=augment, drop_last=True)
    batches = min(len(data), max(2 * workers, 4 if args.dry_run else 24))
    global _PIPELINE
    _PIPELINE = data  # inherited by the forked workers, not pickled per batch
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        list(pool.map(_load_batch, range(min(workers, batches))))  # workers started and warm
        t = time.perf_counter()
        # Batches come back through pipes, as PyDataset's worker processes send them.
        images = sum(len(x) for x, _ in pool.imap_unordered(_load_batch, range(batches)))
        seconds = time.perf_counter() - t
    return {"augment": augment, "workers": workers, "images": images, "seconds": seconds,
            "images_per_s": images / seconds, "source": source, "num_images": len(keys)}


_PIPELINE = None


def _load_batch(index):
    return _PIPELINE[index]


def model_priors(size):
    """The prior boxes of SSD300 at ``size`` x ``size`` (the Keras NumPy backend builds it, no GPU)."""
    from ssd300.priors import priors_from_model
    from ssd300.ssd_v2 import SSD300v2

    return priors_from_model(SSD300v2((size, size, 3)))


def run_training(args, backend):
    """``python ssd_training.py`` for a few minutes; the loss of each epoch from its log.csv."""
    annotation_file, source = data_source(args)
    # Weights (100 MB) stay out of --out; its log.csv and loss.png are copied there.
    out = os.path.join(scratch_dir(args), "train")
    data = ["--coco-json", annotation_file] if annotation_file else ["--voc-root", synthetic_root(args),
                                                                      "--split", "all"]
    command = [sys.executable, os.path.join(ROOT, "ssd_training.py"), *data,
               "--input-size", str(args.size), "--batch-size", str(args.batch),
               "--epochs", str(args.train_epochs), "--steps-per-epoch", str(args.train_steps),
               "--time-limit", str(args.train_minutes), "--workers", str(args.workers),
               "--out", out, "--no-progress"]
    if args.train_multiprocessing:
        # Forks the trainer; with JAX holding the GPU that may hang, hence threads by default.
        command.append("--multiprocessing")
    env = dict(os.environ, KERAS_BACKEND=backend)
    t = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    for name in ("log.csv", "loss.png"):
        if os.path.isfile(os.path.join(out, name)):
            shutil.copy(os.path.join(out, name), os.path.join(args.out, f"train_{name}"))
    epochs = []
    log = os.path.join(out, "log.csv")
    if os.path.isfile(log):
        with open(log, newline="") as f:
            epochs = [{k: float(v) if k != "epoch" else int(float(v)) for k, v in row.items() if v != ""}
                      for row in csv.DictReader(f)]
    return {"backend": backend, "command": " ".join(command[1:]), "returncode": done.returncode,
            "seconds": seconds, "epochs": epochs, "source": source,
            "output_tail": (done.stdout + done.stderr)[-1500:]}


# --- report ---------------------------------------------------------------------------------------


def markdown(report):
    lines = [f"# SSD300 GPU benchmark ({report['mode']})", "",
             "Environment: " + ", ".join(f"{k} {v}" for k, v in report["environment"].items()), "",
             f"## Training step, {report['size']}x{report['size']}, batch {report['batch']}", "",
             "| model | backend | precision | step s | images/s | TFLOP/s | GFLOP/image (3x fwd) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["steps"]:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r.get('model', 'keras ssd300')} | {r.get('backend', '')} | {r.get('precision', '')} "
                         f"| {r.get('error', r.get('skipped'))[:200]!r} | | | |")
            continue
        lines.append(f"| {r.get('model', 'keras ssd300')} | {r.get('backend', 'torch')} | {r['precision']} "
                     f"| {r['step_s']:.4f} | {r['images_per_s']:.1f} | {r['tflops']:.2f} "
                     f"| {r['gflop_per_image']:.1f} |")
    best = max((r["images_per_s"] for r in report["steps"] if "images_per_s" in r and "model" not in r),
               default=None)
    lines += ["", f"## Input pipeline (SSDDataset, worker processes), batch {report['batch']}", "",
              "| augment | workers | images/s | vs fastest Keras step |", "| --- | --- | --- | --- |"]
    for r in report["pipeline"]:
        if "error" in r:
            lines.append(f"| {r.get('augment', '')} | {r.get('workers', '')} | {r['error'][:200]!r} | |")
            continue
        ratio = f"{r['images_per_s'] / best:.2f}" if best else "n/a"
        lines.append(f"| {r['augment']} | {r['workers']} | {r['images_per_s']:.1f} | {ratio} |")
    if report["pipeline"] and "source" in report["pipeline"][0]:
        lines.append(f"\nData: {report['pipeline'][0]['source']}")
    t = report.get("training") or {}
    lines += ["", "## Training run", ""]
    if "error" in t:
        lines.append(f"error: {t['error']}")
    elif t:
        lines += [f"`{t['command']}` (KERAS_BACKEND={t['backend']}): exit {t['returncode']}, "
                  f"{t['seconds']:.0f} s; {t['source']}", "", "| epoch | loss | val_loss |", "| --- | --- | --- |"]
        for e in t["epochs"]:
            lines.append(f"| {e.get('epoch')} | {e.get('loss', float('nan')):.4f} "
                         f"| {e.get('val_loss', float('nan')):.4f} |")
        if t["returncode"]:
            lines.append("\n```\n" + t["output_tail"] + "\n```")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", "--cpu", action="store_true",
                   help="tiny settings on the CPU: batch 2, 64x64, 2 steps, a 2-step training")
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "runs", "gpu_bench"))
    p.add_argument("--data", default=CARRIED_DATA if os.path.isdir(CARRIED_DATA) else SHARED_DATA,
                   help="a Roboflow COCO split folder (default: the carried copy, else ../shared's)")
    p.add_argument("--backends", default="jax,torch")
    p.add_argument("--precisions", default="float32,bfloat16")
    p.add_argument("--size", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--steps", type=int, help="timed steps (median reported)")
    p.add_argument("--workers", type=int, help="pipeline worker processes")
    p.add_argument("--train-backend", default="jax")
    p.add_argument("--train-minutes", type=float)
    p.add_argument("--train-epochs", type=int)
    p.add_argument("--train-steps", type=int, help="steps per epoch of the training run")
    p.add_argument("--train-multiprocessing", action="store_true",
                   help="load the training run's data in processes (default: threads)")
    p.add_argument("--deadline", type=float,
                   help="seconds after which no section starts or runs on (default: 560, as the device "
                        "tool stops a command at 600; 3600 for --dry-run)")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out: step,torchvision,pipeline,train")
    p.add_argument("--section", help=argparse.SUPPRESS)
    p.add_argument("--section-args", nargs="*", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    tiny = dict(size=64, batch=2, steps=2, workers=2, train_minutes=1.0, train_epochs=2, train_steps=2,
                deadline=3600.0)
    full = dict(size=300, batch=32, steps=15, workers=min(12, os.cpu_count() or 1), train_minutes=3.0,
                deadline=560.0,
                train_epochs=40, train_steps=20)
    for name, value in (tiny if args.dry_run else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def run_section(args):
    name, extra = args.section, args.section_args
    if name == "step":
        emit(run_step(args, extra[0], extra[1]))
    elif name == "torchvision":
        emit(run_torchvision(args, extra[0]))
    elif name == "pipeline":
        emit(run_pipeline(args, extra[0], int(extra[1])))
    elif name == "train":
        emit(run_training(args, extra[0]))
    elif name == "environment":
        emit(environment(args.dry_run))


def save(report, args):
    """Write gpu_bench.json and gpu_bench.md (after each section: a cut-off run keeps what it did)."""
    text = markdown(report)
    with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
        f.write(text + "\n")
    return text


def main(argv=None):
    args = parse_args(argv)
    if args.section:
        run_section(args)
        return 0
    os.makedirs(args.out, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    report = {"mode": "dry run on the CPU" if args.dry_run else "GPU", "size": args.size, "batch": args.batch,
              "environment": section(args, "environment"), "steps": [], "pipeline": [], "training": None}
    print(json.dumps(report["environment"]), file=sys.stderr, flush=True)
    has_torchvision = report["environment"].get("torchvision", "missing") != "missing"
    for precision in args.precisions.split(","):
        if "step" not in skip:
            for backend in args.backends.split(","):
                row = section(args, "step", ["--section-args", backend, precision],
                              env={"KERAS_BACKEND": backend})
                report["steps"].append({"backend": backend, "precision": precision, **row})
                save(report, args)
        if "torchvision" not in skip:
            row = (section(args, "torchvision", ["--section-args", precision]) if has_torchvision
                   else {"skipped": "torchvision is not installed here"})
            report["steps"].append({"model": "torchvision ssd300_vgg16", "precision": precision, **row})
            save(report, args)
    if "pipeline" not in skip:
        for augment in ("original", "paper"):
            row = section(args, "pipeline", ["--section-args", augment, str(args.workers)],
                          env={"KERAS_BACKEND": "numpy"})
            report["pipeline"].append({"augment": augment, "workers": args.workers, **row})
            save(report, args)
    if "train" not in skip:
        left = args.deadline - (time.monotonic() - START)
        # Keras stops at the end of a batch past --time-limit; leave time to start and to validate.
        args.train_minutes = max(0.5, min(args.train_minutes, (left - 150) / 60))
        report["training"] = section(args, "train", ["--section-args", args.train_backend])
    print(save(report, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
