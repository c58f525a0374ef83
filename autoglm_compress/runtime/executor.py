"""Run the IR with torch ops: reference outputs, calibration hooks on every tensor, gradients.

The graph is walked once in topological order; op semantics come from the tables in ``ops_*.py``.
Initializers become ``torch.nn.Parameter`` (floats) so that distillation / QAT loops can train them
and ``sync_to_model`` writes them back. QuantizeLinear runs as fake-quant with a straight-through
estimator when gradients are on. Unknown ops fail at construction, naming the op and node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import torch

from autoglm_compress.errors import UnsupportedOpError
from autoglm_compress.runtime.ops_attention import ATTENTION_OPS
from autoglm_compress.runtime.ops_index import INDEX_OPS
from autoglm_compress.runtime.ops_math import MATH_OPS
from autoglm_compress.runtime.ops_nn import NN_OPS
from autoglm_compress.runtime.ops_recurrent import RECURRENT_OPS
from autoglm_compress.runtime.ops_tensor import TENSOR_OPS, _constant, to_torch

__all__ = ["OPS", "TorchExecutor", "run_model"]

logger = logging.getLogger(__name__)

OPS: dict[str, Callable] = {
    **MATH_OPS,
    **NN_OPS,
    **TENSOR_OPS,
    **INDEX_OPS,
    **RECURRENT_OPS,
    **ATTENTION_OPS,
}
Hook = Callable[[str, "ir.Node | None", torch.Tensor], "torch.Tensor | None"]


class TorchExecutor:
    def __init__(
        self, model: ir.Model, device: str | torch.device | None = None, dtype_policy=None
    ):
        from autoglm_compress.runtime.device import default_device

        self.model, self.graph = model, model.graph
        self.device = torch.device(device) if device is not None else default_device()
        if self.device.type == "cuda":  # the executor is the FP32 reference: no TF32 shortcuts
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.nodes = list(self.graph)
        for node in self.nodes:
            if node.domain not in ("", "ai.onnx") or (
                node.op_type not in OPS and node.op_type != "Constant"
            ):
                raise UnsupportedOpError(
                    f"{node.domain + '::' if node.domain else ''}{node.op_type}",
                    node.name or "?",
                    "torch executor",
                    "keep it out of the model or add it to runtime/ops_*.py",
                )
        self._params: dict[str, torch.nn.Parameter] = {}
        self._consts: dict[str, torch.Tensor] = {}
        for name, v in self.graph.initializers.items():
            if v.const_value is None:
                continue
            t = to_torch(v.const_value, self.device)
            if t.is_floating_point():
                self._params[name] = torch.nn.Parameter(t, requires_grad=True)
            else:
                self._consts[name] = t
        for node in self.nodes:
            if node.op_type == "Constant":
                self._consts[node.outputs[0].name] = to_torch(_constant([], node), self.device)
        self._last_use = self._last_uses()

    def _last_uses(self) -> dict[str, int]:
        """Index of the last node reading each value, so intermediates can be freed early."""
        last: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for v in node.inputs:
                if v is not None:
                    last[v.name] = i
        for v in self.graph.outputs:
            last[v.name] = len(self.nodes)
        return last

    def parameters(self) -> dict[str, torch.nn.Parameter]:
        return self._params

    def sync_to_model(self) -> None:
        for name, p in self._params.items():
            v = self.graph.initializers[name]
            arr = p.detach().cpu().numpy()
            v.const_value = ir.tensor(arr.astype(v.const_value.numpy().dtype), name=name)

    def _feed(self, feeds) -> dict[str, torch.Tensor]:
        env: dict[str, torch.Tensor] = {}
        for v in self.graph.inputs:
            if v.name in self._params or v.name in self._consts:
                continue
            if v.name not in feeds:
                raise KeyError(f"missing input {v.name!r}")
            x = feeds[v.name]
            if isinstance(x, (np.ndarray, np.generic)):  # keep 0-d: ascontiguousarray makes 1-d
                arr = np.ascontiguousarray(x).reshape(np.shape(x))
                x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
            env[v.name] = x.to(self.device)
        return env

    def run(
        self, feeds: dict, *, hook: Hook | None = None, keep_grad: bool = False,
        extra: tuple[str, ...] = (),
    ) -> dict[str, torch.Tensor]:
        """The graph outputs (and the intermediate values named in ``extra``) for ``feeds``."""
        with torch.set_grad_enabled(keep_grad):
            return self._run(feeds, hook, keep_grad, extra)

    def _run(self, feeds, hook, keep_grad, extra=()):
        env = self._feed(feeds)
        if hook is not None:
            for name in list(env):
                r = hook(name, None, env[name])
                if r is not None:
                    env[name] = r
        lookup = {**self._consts, **self._params}
        for i, node in enumerate(self.nodes):
            if node.op_type == "Constant":
                env[node.outputs[0].name] = lookup[node.outputs[0].name]
                continue
            args = [
                None if v is None else env[v.name] if v.name in env else lookup[v.name]
                for v in node.inputs
            ]
            out = OPS[node.op_type](args, node)
            outs = out if isinstance(out, tuple) else (out,)
            for v, t in zip(node.outputs, outs):
                if hook is not None:
                    r = hook(v.name, node, t)
                    t = r if r is not None else t
                env[v.name] = t
            if not keep_grad:
                for v in node.inputs:
                    if v is not None and self._last_use.get(v.name) == i and v.name in env \
                            and v.name not in extra:
                        del env[v.name]
        names = [v.name for v in self.graph.outputs] + [n for n in extra]
        return {n: env[n] if n in env else lookup[n] for n in names}


def run_model(model: ir.Model, feeds: dict) -> dict[str, np.ndarray]:
    out = TorchExecutor(model).run(feeds)
    return {k: v.detach().cpu().numpy() for k, v in out.items()}
