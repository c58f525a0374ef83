"""Per-layer error of an INT8 arm artifact measured in its own runtime (report.json:
``artifacts[].extra.layer_error``; report.html draws it beside the QDQ simulation's figures).

The quantize pass's per-layer SQNR (``passes[quantize[<target>]].stats.layers[].sqnr_db``) is
measured on the target's QDQ IR in onnxruntime; an x86 / cuda artifact *is* that model. A .tflite
or ncnn file runs other kernels, so here its intermediate tensors are read in the runtime itself
and compared with the FP32 model's tensor of the same name (the emitters keep the IR's value
names: ncnn blobs as they are, TFLite tensors with ``_q`` / ``_nhwc`` / ``#n`` suffixes; an NHWC
tensor is compared with the FP32 NCHW one transposed):
  * LiteRT: built-in kernels with ``experimental_preserve_all_tensors`` — no XNNPACK delegate,
    whose fused subgraph need not write its intermediate tensors (results within 1 LSB of it);
  * ncnn: each blob extracted; a blob a layer requantizes to int8 (``8=1xx``: int8 codes) and a
    tensor with no FP32 counterpart of the same shape are counted, not compared.
SQNR in dB, summed over at most ``MAX_SAMPLES`` verification samples; cumulative (each tensor
carries the error of everything before it). Bounded cost: one FP32 and one artifact run per
sample. Diagnostics only: a failure is recorded (``error``), never fails the run.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx_ir as ir

from autoglm_compress.quantization.sensitivity import tensor_runner

__all__ = ["MAX_SAMPLES", "runtime_layer_sqnr"]

logger = logging.getLogger(__name__)

MAX_SAMPLES = 8
_SUFFIX = re.compile(r"(#\d+|_q|_nhwc|_dq|_float)$")


def runtime_layer_sqnr(art, fp32: ir.Model, feeds) -> dict | None:
    """``art`` (an int8 arm artifact, verified) vs ``fp32`` (the model it was quantized from) on
    ``feeds``: {runtime, samples, tensors: [{value, node, op, sqnr_db}], not_compared} in graph
    order; None for a format that has no runtime of its own (onnx)."""
    fmt = (art.extra or {}).get("format")
    if art.precision != "int8" or fmt not in ("tflite", "ncnn"):
        return None
    feeds = list(feeds)[:MAX_SAMPLES]
    producers = {o.name: n for n in fp32.graph for o in n.outputs if o.name}
    try:
        runner, runtime, excluded = (_tflite(art) if fmt == "tflite" else _ncnn(art))
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
            "not_compared": len(skipped) + excluded,
            "measure": "SQNR (dB) of each artifact tensor vs the FP32 tensor of the same name "
                       "(null: identical)"}


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


def _tflite(art):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # built-in kernels: a delegate's fused subgraph need not write its intermediate tensors
    it = Interpreter(model_path=str(art.path), experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
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

    net = ncnn.Net()
    net.opt.num_threads, net.opt.use_int8_inference = 1, True
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
    net.opt.use_vulkan_compute = False
    if net.load_param(str(art.files["param"])) != 0 or net.load_model(str(art.files["bin"])) != 0:
        raise RuntimeError("ncnn could not load the files")
    blobs = art.extra.get("blobs") or {}
    inputs = blobs.get("inputs") or {}
    names, excluded = [], 0
    for line in art.files["param"].read_text().splitlines()[2:]:
        f = line.split()
        if len(f) < 4:
            continue
        tops = f[4 + int(f[2]):4 + int(f[2]) + int(f[3])]
        if any(t.startswith("8=") and int(t[2:]) >= 100 for t in f):  # requantized: int8 tops
            excluded += len(tops)
        else:
            names += tops

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
            if ret == 0:
                out[b] = np.array(m)
        return out

    return run, "ncnn (each float blob extracted, int8 inference, 1 thread)", excluded
