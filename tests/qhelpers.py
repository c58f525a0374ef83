"""Short calls of the INT8 lowering API for tests (calibrate, quantize with a target, QAT)."""

from __future__ import annotations

from autoglm_compress import lowering
from autoglm_compress.config import Int8Config
from autoglm_compress.passes.context import PassContext


def calibrate_with(model, data, method="minmax", samples=128, random=False, progress=False):
    """(stats, info) as the compress flow computes them; stats.source is the opened source."""
    from autoglm_compress.calibration.data import open_calibration_source

    src = open_calibration_source(data, model, random=random)
    return lowering.calibrate(model, PassContext(data=src, progress=progress), method, samples)


def _ctx(stats, target):
    return PassContext(data=getattr(stats, "source", None), stats=stats, target=target)


def quantize_with(model, target, stats, keep=(), per_tensor=False, bias_correction=True,
                  fake_weights=False):
    """The target's INT8 pipeline (bias correction, QDQ) on a copy: (model, stats)."""
    int8 = Int8Config(keep_fp32=tuple(keep), per_tensor=per_tensor,
                      bias_correction=bias_correction)
    return lowering.quantizer(target, _ctx(stats, target), int8)(model, fake_weights=fake_weights)


def quantize_for(model, target, stats, keep_fp32=(), per_tensor=False, min_cosine=None,
                 bias_correction=True, reconstruct=False):
    """lowering.quantize (with fallback under ``min_cosine``): (model, record)."""
    int8 = Int8Config(keep_fp32=tuple(keep_fp32), per_tensor=per_tensor,
                      bias_correction=bias_correction, reconstruct=reconstruct)
    return lowering.quantize(model, target, _ctx(stats, target), int8, min_cosine)


def finetune_with(fp32, ptq, target, stats, steps, lr=1e-4, batch=16, samples=256,
                  bias_correction=True, device=None, per_tensor=False):
    """The qat pass on ``ptq``: (model, FP32 model it was quantized from, record)."""
    from autoglm_compress.pipeline import Pipeline, build_passes

    ctx = _ctx(stats, target)
    ctx.teacher = fp32
    int8 = Int8Config(bias_correction=bias_correction, per_tensor=per_tensor)
    qrun = lowering.quantizer(target, ctx, int8)
    ctx.quantizer = lambda m, fake_weights=False, bias_correction=None, ranges=None: qrun(
        m, (), fake_weights, bias_correction, ranges)[0]
    cfg = {"steps": steps, "lr": lr, "batch": batch, "samples": samples, "device": device}
    q, recs = Pipeline(build_passes(["qat"], {"qat": cfg}), progress=False).apply(ptq, ctx)
    return q, ctx.quantized_from or fp32, recs[0]


def int8_weights(model) -> dict:
    """Weight name → its int8 values in a QDQ model (a weight stored uint8 with zero point 128,
    as the x86 AVX2 rule writes it, shifted back)."""
    import onnx_ir as ir

    out = {}
    for v in model.graph.initializers.values():
        dt = v.const_value.dtype if v.const_value is not None else None
        for suffix, shift, want in (("_quantized", 0, ir.DataType.INT8),
                                    ("_quantized_u8", 128, ir.DataType.UINT8)):
            if v.name.endswith(suffix) and dt == want:
                out[v.name[: -len(suffix)]] = v.const_value.numpy().astype("int16") - shift
    return out


def ncnn_extract(param, feeds: dict, blobs, int8: bool = False) -> dict:
    """``blobs`` extracted in that order from one extractor of the ``param`` / ``.bin`` pair, ncnn's
    default light mode, fp16 off (FP32 exact, as verified); ``feeds``: input blob → array with
    its batch axis."""
    import ncnn
    import numpy as np

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_int8_inference = int8
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
    assert net.load_param(str(param)) == 0
    assert net.load_model(str(param.with_suffix(".bin"))) == 0
    ex = net.create_extractor()
    for name, x in feeds.items():
        ex.input(name, ncnn.Mat(np.ascontiguousarray(x[0])).clone())
    got = {}
    for name in blobs:
        ret, m = ex.extract(name)
        assert ret == 0, f"extract {name!r} failed ({ret})"
        got[name] = np.array(m)[None]
    return got
