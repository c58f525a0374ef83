"""TensorRT engine build and run (only where ``tensorrt`` imports and a CUDA GPU is present).

Builds strongly-typed engines (TensorRT ≥ 10: precision comes from the ONNX types, Q/DQ is the INT8
path) for the FP32 reference and the artifact, runs both on the sample feeds with torch CUDA tensors
as I/O buffers, and compares outputs and latency (CUDA events, median of repeated runs).
"""

from __future__ import annotations

import logging
import statistics

import numpy as np

from autoglm_compress.ir_utils import to_proto
from autoglm_compress.metrics import fidelity

__all__ = ["tensorrt_available", "build_engine", "build_and_compare"]

logger = logging.getLogger(__name__)


def tensorrt_available() -> tuple[bool, str]:
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError as e:
        return False, f"tensorrt not importable ({e.name})"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    return True, ""


def build_engine(onnx_bytes: bytes, workspace_gb: float = 4.0):
    import tensorrt as trt

    logger_ = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger_)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger_)
    if not parser.parse(onnx_bytes):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT ONNX parser: {errs}")
    cfg = builder.create_builder_config()
    cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    blob = builder.build_serialized_network(network, cfg)
    if blob is None:
        raise RuntimeError("TensorRT engine build failed")
    engine = trt.Runtime(logger_).deserialize_cuda_engine(blob)
    return engine, len(blob)


class _Runner:
    def __init__(self, engine):
        import tensorrt as trt
        import torch

        self.engine, self.ctx = engine, engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self.buf = {}
        for n in self.names:
            dt = torch.from_numpy(np.zeros(1, dtype=trt.nptype(engine.get_tensor_dtype(n)))).dtype
            self.buf[n] = torch.empty(tuple(engine.get_tensor_shape(n)), dtype=dt, device="cuda")
            self.ctx.set_tensor_address(n, self.buf[n].data_ptr())

    def __call__(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        for n in self.inputs:
            self.buf[n].copy_(torch.from_numpy(feed[n]))
        self.ctx.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return [self.buf[n].float().cpu().numpy() for n in self.outputs]

    def latency_ms(self, repeats: int = 100) -> float:
        import torch

        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(self.stream)
            self.ctx.execute_async_v3(self.stream.cuda_stream)
            end.record(self.stream)
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)


def build_and_compare(artifact, ctx) -> dict:
    ok, why = tensorrt_available()
    if not ok:
        logger.warning("TensorRT engine not built: %s", why)
        return {"status": "skipped", "reason": why}
    ref_engine, ref_size = build_engine(to_proto(ctx.reference_model).SerializeToString())
    art_engine, art_size = build_engine(artifact.path.read_bytes())
    ref, art = _Runner(ref_engine), _Runner(art_engine)
    got = [art(f) for f in ctx.feeds]
    for f in ctx.feeds[:3]:
        ref(f)
    fid = fidelity(ctx.reference_outputs, got, ctx.output_names, ctx.labels, ctx.batch)
    lat_ref, lat_art = ref.latency_ms(), art.latency_ms()
    return {
        "status": "built",
        "engine_bytes": {"fp32": ref_size, artifact.precision: art_size},
        "fidelity": fid,
        "latency_ms": {"fp32": round(lat_ref, 4), artifact.precision: round(lat_art, 4)},
        "speedup_vs_fp32": round(lat_ref / max(lat_art, 1e-9), 3),
    }
