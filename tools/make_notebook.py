"""Write SSD.ipynb (run: python tools/make_notebook.py). The notebook's source of truth."""

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell("""# SSD300 on Keras 3

The original notebook's story (wikke/SSD_Keras, rykov8/ssd_keras) on this library: build the
model, compile it with `MultiboxLoss`, the priors and `BBoxUtility`, parse VOC annotations, the
`Generator`, a short training, load weights, predict on pictures, `detection_out`, and draw the
boxes with matplotlib."""),
    new_code_cell("""import os
import pickle

import keras
import matplotlib.pyplot as plt
import numpy as np

from ssd300 import SSD300, BBoxUtility, MultiboxLoss, priors_from_model
from ssd300.demo import cache_dir
from ssd300.generator import Generator
from ssd300.image_io import load_image, preprocess_input, resize
from ssd300.synth import make_synthetic_voc
from ssd300.voc import XML_preprocessor, random_split
from ssd300.weights import load_weights_by_name

print("Keras", keras.__version__, "on", keras.backend.backend())"""),
    new_markdown_cell("""## Data and weights

With PASCAL VOC2007 in `VOCdevkit/VOC2007` (or `$VOC_ROOT`) and the originals' converted weights
`weights_SSD300.hdf5`, the notebook works on them at 300×300 with the 20 VOC classes. Without
them it uses the synthetic shapes dataset (written to the cache on first use) at 128×128, and the
weights of `make demo` (`runs/demo/best.h5`) where they exist. The next cell says which."""),
    new_code_cell("""VOC_ROOT = os.environ.get("VOC_ROOT", "VOCdevkit/VOC2007")
WEIGHTS = os.environ.get("SSD_WEIGHTS", "weights_SSD300.hdf5")

if os.path.isdir(os.path.join(VOC_ROOT, "Annotations")) and os.path.isfile(WEIGHTS):
    data_root, input_shape, weights = VOC_ROOT, (300, 300, 3), WEIGHTS
    pictures = sorted(os.path.join("pics", f) for f in os.listdir("pics"))
    min_score = 0.6  # the original notebook's
    print(f"Using PASCAL VOC in {VOC_ROOT} and the weights {WEIGHTS}.")
else:
    data_root = os.path.join(cache_dir(), "synth-simple-400-seed0")
    if not os.path.isdir(data_root):
        make_synthetic_voc(data_root, images=400, seed=0, style="simple")
    input_shape = (128, 128, 3)
    weights = "runs/demo/best.h5" if os.path.isfile("runs/demo/best.h5") else None
    min_score = 0.25  # a few minutes of training leave modest scores
    test_ids = open(os.path.join(data_root, "ImageSets", "Main", "test.txt")).read().split()
    pictures = [os.path.join(data_root, "JPEGImages", f"{i}.jpg") for i in test_ids[:4]]
    print(f"PASCAL VOC or {WEIGHTS} not found: using the synthetic dataset in {data_root}",
          f"and {'the demo weights ' + weights if weights else 'the weights of the short training below'}.")"""),
    new_code_cell("""gt = XML_preprocessor(os.path.join(data_root, "Annotations"))
classes = gt.classes
NUM_CLASSES = len(classes) + 1  # with the background
keys = sorted(gt.data)
train_keys, val_keys = random_split(keys, 0.8, seed=0)
print(f"{len(keys)} annotated images, classes: {', '.join(classes)}")"""),
    new_markdown_cell("## The model, the loss, the priors"),
    new_code_cell("""model = SSD300(input_shape, num_classes=NUM_CLASSES)
model.compile(optimizer=keras.optimizers.Adam(3e-4),
              loss=MultiboxLoss(NUM_CLASSES, neg_pos_ratio=2.0).compute_loss)

priors = priors_from_model(model)
if input_shape[:2] == (300, 300):
    # The original notebook read the priors from this file; they are the same.
    with open("prior_boxes_ssd300.pkl", "rb") as f:
        assert np.allclose(pickle.load(f), priors)
bbox_util = BBoxUtility(NUM_CLASSES, priors)
print(f"{model.count_params():,} parameters, {len(priors)} priors")"""),
    new_markdown_cell("## The generator and a short training"),
    new_code_cell("""gen = Generator(gt.data, bbox_util, 4, os.path.join(data_root, "JPEGImages"), train_keys, val_keys,
                input_shape[:2], vflip_prob=0, seed=0)
x, y = next(gen.generate(train=True))
print("inputs", x.shape, "targets", y.shape, "positive priors per image", y[:, :, -8].sum(1))

history = model.fit(gen.generate(True), steps_per_epoch=3, epochs=1,
                    validation_data=gen.generate(False), validation_steps=1, verbose=2)"""),
    new_markdown_cell("## Load weights and detect"),
    new_code_cell("""if weights:
    print(load_weights_by_name(model, weights))

images = [load_image(p) for p in pictures]
inputs = preprocess_input(np.stack([resize(im, input_shape[:2]) for im in images]))
preds = model.predict(inputs, batch_size=4, verbose=0)
results = bbox_util.detection_out(preds)
print([len(r) for r in results], "detections per picture")"""),
    new_code_cell("""colors = plt.cm.hsv(np.linspace(0, 1, NUM_CLASSES)).tolist()
for img, result in zip(images, results):
    top = result[result[:, 1] >= min_score][:10]
    plt.figure(figsize=(6, 5))
    plt.imshow(img)
    ax = plt.gca()
    for label, conf, xmin, ymin, xmax, ymax in top:
        xmin, xmax = xmin * img.shape[1], xmax * img.shape[1]
        ymin, ymax = ymin * img.shape[0], ymax * img.shape[0]
        color = colors[int(label)]
        ax.add_patch(plt.Rectangle((xmin, ymin), xmax - xmin, ymax - ymin, fill=False,
                                   edgecolor=color, linewidth=2))
        ax.text(xmin, ymin, f"{classes[int(label) - 1]} {conf:.2f}", bbox={"facecolor": color, "alpha": 0.5})
    plt.axis("off")
    plt.show()"""),
]

nb = new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
})
nbformat.write(nb, "SSD.ipynb")
