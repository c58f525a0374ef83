"""Per-layer error of an INT8 arm artifact or of any FP16 artifact measured in its own runtime
(report.json: ``artifacts[].extra.layer_error``; report.html draws it per target).

The quantize pass's per-layer SQNR (``passes[quantize[<target>]].stats.layers[].sqnr_db``) is
measured on the target's QDQ IR in onnxruntime; an x86 / cuda INT8 artifact *is* that model. A
.tflite or ncnn file runs other kernels, and an FP16 artifact has no such pass figure at all, so
here the artifact's intermediate tensors are read in its runtime and compared with the FP32
model's tensor of the same name (the emitters and the fp16 pass keep the IR's value names: ncnn
blobs as they are, TFLite tensors with ``_q`` / ``_nhwc`` / ``#n`` suffixes; an NHWC tensor is
compared with the FP32 NCHW one transposed):
  * x86 FP16 .onnx: onnxruntime CPU, every tensor it shares with the FP32 model made a graph
    output (float16 read as is, compared in float64);
  * LiteRT: built-in kernels with ``experimental_preserve_all_tensors`` — no XNNPACK delegate,
    whose fused subgraph need not write its intermediate tensors (results within 1 LSB of it);
  * ncnn: each blob extracted, with the options its verification uses (INT8: int8 inference;
    FP16: fp16 storage); a blob a layer requantizes to int8 (``8=1xx``: int8 codes) and a
    tensor with no FP32 counterpart of the same shape are counted, not compared.
SQNR in dB, summed over at most ``MAX_SAMPLES`` verification samples; cumulative (each tensor
carries the error of everything before it). ``worst`` names the layers where the error arises:
ranked by the noise-to-signal power ratio a tensor adds to the worst one it inherits from its
inputs (``10^(-SQNR/10)``, walking back through tensors not compared; graph inputs and constants
are exact), so a layer after the culprit, which only carries its error, is not named. Bounded cost:
one FP32 and one artifact run per sample. Diagnostics only: a failure is recorded (``error``),
never fails the run.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx_ir as ir

from autoglm_compress.quantization.sensitivity import tensor_runner

__all__ = ["MAX_SAMPLES", "WORST", "runtime_layer_sqnr", "worst_layers"]

logger = logging.getLogger(__name__)

MAX_SAMPLES = 8
WORST = 3  # layers named in ``worst``
_SUFFIX = re.compile(r"(#\d+|_q|_nhwc|_dq|_float)$")


def runtime_layer_sqnr(art, fp32: ir.Model, feeds) -> dict | None:
    """``art`` (an int8 arm artifact or an fp16 x86 / arm one, verified) vs ``fp32`` (the model it
    was lowered from) on ``feeds``: {runtime, samples, tensors: [{value, node, op, sqnr_db}] in
    graph order, worst, not_compared}; None for an artifact measured elsewhere (an int8 .onnx is
    the QDQ model the quantize pass measured) or with no runtime here (cuda)."""
    fmt = (art.extra or {}).get("format") or ("onnx" if art.target == "x86" else None)
    if not (art.precision == "int8" and fmt in ("tflite", "ncnn")
            or art.precision == "fp16" and fmt in ("onnx", "tflite", "ncnn")):
        return None
    feeds = list(feeds)[:MAX_SAMPLES]
    producers = {o.name: n for n in fp32.graph for o in n.outputs if o.name}
    try:
        runner, runtime, excluded = (_onnx(art, producers) if fmt == "onnx" else
                                     _tflite(art) if fmt == "tflite" else _ncnn(art))
        sums: dict[str, list[float]] = {}
        ref_run, names, skipped = None, None, set()
        for feed in feeds:
            got = {v: t for v, t in runner(feed).items() if v in producers}
            if ref_run is None:
                names = sorted(got)
                ref_run = tensor_runner(fp32, names) if names else (lambda f: {})
            ref = ref_run(feed)
            for v in names:
                r, g = _aligned(ref.get(v), got.get(v))
                if r is None:
                    skipped.add(v)
                    continue
                s = sums.setdefault(v, [0.0, 0.0])
                s[0] += float(np.sum(r * r))
                s[1] += float(np.sum((r - g) ** 2))
    except Exception as e:  # noqa: BLE001 - diagnostics: recorded, the run goes on
        logger.info("%s: per-layer error in the runtime not measured: %s", art.path.name, e)
        return {"error": f"{type(e).__name__}: {e}"}
    order = {o.name: i for i, n in enumerate(fp32.graph) for o in n.outputs}
    tensors = [{"value": v, "node": producers[v].name, "op": producers[v].op_type,
                "sqnr_db": _db(*sums[v])} for v in sorted(sums, key=order.get)
               if v not in skipped]
    return {"runtime": runtime, "samples": len(feeds), "tensors": tensors,
            "worst": worst_layers(tensors, fp32),
            "not_compared": len(skipped) + excluded,
            "measure": "SQNR (dB) of each artifact tensor vs the FP32 tensor of the same name "
                       "(null: identical)",
            "worst_measure": "the layers adding the most error: noise-to-signal power ratio "
                             "10^(-SQNR/10) of the tensor minus the worst one among its inputs "
                             "(input_sqnr_db; null: exact), largest first"}


def worst_layers(tensors: list[dict], fp32: ir.Model, n: int = WORST) -> list[dict]:
    """The ``n`` compared tensors that add the most noise-to-signal power over their inputs
    (``tensors`` as ``runtime_layer_sqnr`` lists them), each with the SQNR it inherited and
    ``nodes``: the FP32 nodes since the compared tensors before it (a fused conv + relu whose
    conv output the runtime does not keep: both), in graph order."""
    nsr = {t["value"]: 0.0 if t["sqnr_db"] is None else 10.0 ** (-t["sqnr_db"] / 10.0)
           for t in tensors}
    inherited: dict[str, float] = {}  # value -> NSR, compared or carried from its inputs
    since: dict[str, list[str]] = {}  # value not compared -> the nodes since a compared one
    added: dict[str, tuple[float, float, list[str]]] = {}
    for node in fp32.graph:  # topological order: a node's inputs are known before it
        ins = [v.name for v in node.inputs if v is not None]
        before = max((inherited.get(v, 0.0) for v in ins), default=0.0)
        span = list(dict.fromkeys([x for v in ins for x in since.get(v, ())] + [node.name]))
        for o in node.outputs:
            inherited[o.name] = nsr.get(o.name, before)
            if o.name in nsr:
                added[o.name] = (nsr[o.name] - before, before, span)
            else:
                since[o.name] = span
    ranked = sorted((t for t in tensors if added.get(t["value"], (0.0,))[0] > 0),
                    key=lambda t: -added[t["value"]][0])
    return [{**t, "input_sqnr_db": None if added[t["value"]][1] == 0 else
             round(-10.0 * float(np.log10(added[t["value"]][1])), 2),
             "nodes": added[t["value"]][2]} for t in ranked[:n]]


def _db(signal: float, noise: float):
    return None if noise == 0 else round(10.0 * float(np.log10(max(signal, 1e-30) / noise)), 2)


def _aligned(ref, got):
    """(ref, got) as float64 arrays of one layout, or (None, None) when they do not match."""
    if ref is None or got is None:
        return None, None
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape and ref.ndim == 4 and got.shape == tuple(
            ref.shape[i] for i in (0, 2, 3, 1)):
        ref = ref.transpose(0, 2, 3, 1)  # TFLite NHWC
    if ref.shape != got.shape and ref.ndim >= 1 and ref.shape[0] == 1 \
            and ref.shape[1:] == got.shape:
        ref = ref[0]  # ncnn: no batch axis
    if ref.shape != got.shape:
        return None, None
    return ref, got


def _onnx(art, producers):
    """The x86 FP16 .onnx in onnxruntime CPU, every float tensor named as in the FP32 model a
    graph output."""
    from autoglm_compress.calibration.ort_stats import TensorRunner

    model = ir.load(art.path)
    floats = (ir.DataType.FLOAT16, ir.DataType.FLOAT, ir.DataType.BFLOAT16, None)
    names = [o.name for node in model.graph for o in node.outputs
             if o.name in producers and o.dtype in floats]
    tr = TensorRunner(model, names)
    half = {i.name for i in tr.sess.get_inputs() if i.type == "tensor(float16)"}  # keep_io_types off

    def run(feed):
        got = tr.run({k: np.asarray(v, np.float16) if k in half else v for k, v in feed.items()})
        return {k: v for k, v in got.items() if np.issubdtype(v.dtype, np.floating)}

    return run, "onnxruntime CPU, each shared tensor a graph output", 0


def _tflite(art):
    from ai_edge_litert.interpreter import OpResolverType

    from autoglm_compress.targets.tflite.litert_run import interpreter

    # built-in kernels: a delegate's fused subgraph need not write its intermediate tensors
    it = interpreter(art.path, experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    ins = it.get_input_details()
    acts = [d for d in it.get_tensor_details()
            if d["dtype"] in (np.int8, np.uint8, np.float32) and len(d["shape"]) >= 1]

    def run(feed):
        for d in ins:
            x = np.asarray(feed[d["name"]])
            if d["dtype"] in (np.int8, np.uint8):  # full-integer IO
                s, z = d["quantization"]
                x = np.clip(np.rint(x / s) + z, np.iinfo(d["dtype"]).min, np.iinfo(d["dtype"]).max)
            it.set_tensor(d["index"], x.astype(d["dtype"]))
        it.invoke()
        out = {}
        for d in acts:
            base = d["name"]
            while _SUFFIX.search(base):
                base = _SUFFIX.sub("", base)
            if base in out:
                continue
            try:
                y = np.array(it.get_tensor(d["index"]))
            except ValueError:  # a tensor the interpreter holds no data for
                continue
            if d["dtype"] != np.float32:
                s, z = d["quantization"]
                if not s:
                    continue  # not an activation of a quantized layer
                y = (y.astype(np.float64) - z) * s
            out[base] = y
        return out

    return run, "LiteRT built-in kernels, every intermediate tensor kept (no XNNPACK)", 0


def _ncnn(art):
    import ncnn

    from autoglm_compress.targets.ncnn.requantize import int8_blobs

    int8 = art.precision == "int8"
    net = ncnn.Net()
    net.opt.num_threads, net.opt.use_int8_inference = 1, int8
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = not int8  # as its verification runs
    net.opt.use_fp16_arithmetic = net.opt.use_bf16_storage = False
    net.opt.use_vulkan_compute = False
    if net.load_param(str(art.files["param"])) != 0 or net.load_model(str(art.files["bin"])) != 0:
        raise RuntimeError("ncnn could not load the files")
    blobs = art.extra.get("blobs") or {}
    inputs, recentred = blobs.get("inputs") or {}, blobs.get("recentred") or {}
    text = art.files["param"].read_text()
    int8_codes = int8_blobs(text)  # requantized blobs and the Split / ReLU… that pass them on
    names, excluded = [], 0
    for line in text.splitlines()[2:]:
        f = line.split()
        if len(f) < 4:
            continue
        tops = f[4 + int(f[2]):4 + int(f[2]) + int(f[3])]
        excluded += sum(t in int8_codes for t in tops)
        names += [t for t in tops if t not in int8_codes]

    def run(feed):
        ex, keep = net.create_extractor(), []
        for name, blob in inputs.items():
            x = np.asarray(feed[name], np.int32 if name in blobs.get("int32_inputs", ())
                           else np.float32)
            mat = ncnn.Mat(np.ascontiguousarray(x[0] if x.shape[0] == 1 else x)).clone()
            keep.append(mat)
            ex.input(blob, mat)
        out = {}
        for b in names:
            ret, m = ex.extract(b)
            if ret == 0:  # a re-centred blob holds c − y (targets/ncnn/recentre.py)
                out[b] = recentred[b] - np.array(m) if b in recentred else np.array(m)
        return out

    how = "int8 inference" if int8 else "fp16 storage"
    return run, f"ncnn (each float blob extracted, {how}, 1 thread)", excluded
