"""Run inside the onnx2tf + tensorflow-cpu virtualenv (never a project dependency):

    PEER_PY bench/peers/onnx2tf_quantize.py MODEL.onnx CALIB.npz OUT_DIR N

The usual ONNX → TFLite INT8 route: onnx2tf converts the (static-shape) ONNX to a TensorFlow
SavedModel and the TFLite converter quantizes it per channel, calibrated on the first N samples of
CALIB.npz (NCHW arrays named like the model's inputs, one sample per row; onnx2tf wants them NHWC,
normalised already, so mean 0 / std 1). Writes OUT_DIR/*_float32.tflite, *_float16.tflite and
*_integer_quant.tflite (float IO, int8 inside); prints {"wall_s": ..., "files": {...}} as JSON.
Make the virtualenv with
``python3 -m venv /tmp/peer_o2t && /tmp/peer_o2t/bin/pip install onnx2tf tensorflow-cpu tf_keras
onnx-graphsurgeon sng4onnx psutil onnxsim ai-edge-litert``.
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

src, calib = str(Path(sys.argv[1]).resolve()), sys.argv[2]
out, n = Path(sys.argv[3]).resolve(), int(sys.argv[4])
out.mkdir(parents=True, exist_ok=True)
data = np.load(calib)
cind = []
for k in data.files:
    if k == "labels":
        continue
    x = data[k][:n].astype(np.float32)
    if x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)  # NCHW → NHWC, as onnx2tf's calibration wants
    p = out / f"calib_{k}.npy"
    np.save(p, x)
    c = x.shape[-1]
    cind.append([k, str(p), np.zeros((1, 1, 1, c), np.float32), np.ones((1, 1, 1, c), np.float32)])

# onnx2tf fetches a 20×128×128×3 sample-image file from GitHub for its own output check of any
# 3-channel image model, unless the file is in the working directory: give it our calibration
# images there (nothing is downloaded here; the file is only its check's input).
first = next((c for c in cind if np.load(c[1]).ndim == 4 and np.load(c[1]).shape[-1] == 3), None)
if first is not None:
    imgs = np.load(first[1])
    rows = np.linspace(0, imgs.shape[1] - 1, 128).astype(int)
    cols = np.linspace(0, imgs.shape[2] - 1, 128).astype(int)
    sample = imgs[:, rows][:, :, cols][np.arange(20) % len(imgs)].astype(np.float32)
    np.save(out / "calibration_image_sample_data_20x128x128x3_float32.npy", sample)
os.chdir(out)

import onnx2tf  # noqa: E402 - after the data, so its import time is not counted twice

t0 = time.perf_counter()
onnx2tf.convert(
    input_onnx_file_path=src,
    output_folder_path=str(out),
    output_integer_quantized_tflite=True,
    quant_type="per-channel",
    custom_input_op_name_np_data_path=cind,
    non_verbose=True,
)
wall = time.perf_counter() - t0
files = {p.name: str(p) for p in out.glob("*.tflite")}
print(json.dumps({"wall_s": round(wall, 3), "files": files}))
