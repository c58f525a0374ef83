"""Run inside the ai-edge-quantizer virtualenv (never a project dependency):

    PEER_PY bench/peers/aeq_quantize.py FLOAT.tflite CALIB.npz OUT.tflite N

Static INT8 (``recipe.static_wi8_ai8``: int8 weights and activations) of a float .tflite,
calibrated on the first N samples of CALIB.npz (arrays named like the signature's inputs, one sample
per row); prints {"wall_s": ...} as JSON.
"""

import json
import sys
import time

import numpy as np
from ai_edge_quantizer import quantizer, recipe

src, calib, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
data = np.load(calib)
names = [k for k in data.files if k != "labels"]
samples = [{k: data[k][i : i + 1].astype(np.float32) for k in names} for i in range(n)]
qt = quantizer.Quantizer(src, recipe.static_wi8_ai8())
result = qt.calibrate({"serving_default": samples})
qt.quantize(result).export_model(out, overwrite=True)
print(json.dumps({"wall_s": round(time.perf_counter() - t0, 3)}))
