"""Run inside the NNCF virtualenv (never a project dependency):

    PEER_PY bench/peers/nncf_quantize.py FP32.onnx CALIB.npz OUT.onnx N [--transformer]

``nncf.quantize`` (ONNX backend, default preset, fast bias correction on) of an FP32 ONNX model,
calibrated on the first N samples of CALIB.npz (arrays named like the graph inputs, one sample per
row); ``--transformer`` sets ``model_type=TRANSFORMER`` as NNCF advises for encoders. Prints
{"wall_s": ..., "peak_mb": ...} as JSON (model load and save included, imports not).
"""

import json
import resource
import sys
import time

import nncf
import numpy as np
import onnx

src, calib, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
model = onnx.load(src)
data = np.load(calib)
inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
names = [k for k in data.files if k in inputs]
samples = [{k: data[k][i : i + 1] for k in names} for i in range(n)]
kw = {"model_type": nncf.ModelType.TRANSFORMER} if "--transformer" in sys.argv else {}
q = nncf.quantize(model, nncf.Dataset(samples), subset_size=n, **kw)
onnx.save(q, out)
# VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork + exec)
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")]
peak = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall_s": round(time.perf_counter() - t0, 3), "peak_mb": round(peak)}))
