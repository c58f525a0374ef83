"""cleanup: constant folding, dead-code removal, identity/duplicate elimination on the IR.

Rewrites (all exact — outputs are bit-identical up to float re-association in folded constants):
  * constant folding (onnxscript ``fold_constants``: subgraphs whose inputs are all constant become
    initializers) and onnxscript's default simplification rules (Cast∘Cast, Transpose∘Transpose,
    Min/Max→Clip, Pad into Conv …) except BatchNorm fusion, which is ``fold_bn``'s job and count;
  * Identity elimination, common-subexpression elimination, duplicate-initializer merging, unused
    node/opset removal: onnx_ir's common passes;
  * no-op reshapes: a Reshape / Flatten / Squeeze / Unsqueeze whose fully static output shape equals
    its input's (Hugging Face's ``reshape(b, -1, s, d)`` of a tensor already [b, h, s, d] — with
    ``--static-shapes`` it is an identity, but its −1 hides the heads axis from the pruner).
The front end already ran onnx-simplifier once; this pass is the in-place, IR-level equivalent
that can run again after other passes.
"""

from __future__ import annotations

import dataclasses
import logging

import onnx_ir as ir
from onnx_ir.passes import PassResult
from onnx_ir.passes import common as ir_common

from autoglm_compress.passes.base import CompressPass, PassConfig, field, register

__all__ = ["CleanupPass", "CleanupConfig"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CleanupConfig(PassConfig):
    fold_constants: bool = field(True, help="fold subgraphs of constants into initializers")
    cse: bool = field(True, help="merge identical nodes (common-subexpression elimination)")


_RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def _static(v: ir.Value) -> list[int] | None:
    if v is None or v.shape is None or not all(isinstance(d, int) for d in v.shape):
        return None
    return [int(d) for d in v.shape]


def drop_noop_reshapes(model: ir.Model) -> int:
    """Remove top-level reshapes that keep their input's static shape; how many."""
    removed = 0
    for node in list(model.graph):
        if node.op_type not in _RESHAPES or node.domain not in ("", "ai.onnx"):
            continue
        x, y = node.inputs[0], node.outputs[0]
        shape = _static(x)
        if shape is None or shape != _static(y) or y.is_graph_output():
            continue
        y.replace_all_uses_with(x)
        model.graph.remove(node, safe=True)
        removed += 1
    return removed


def _counts(model: ir.Model) -> tuple[int, int]:
    return sum(1 for _ in model.graph), len(model.graph.initializers)


@register
class CleanupPass(CompressPass):
    name = "cleanup"
    config_class = CleanupConfig

    def call(self, model: ir.Model) -> PassResult:
        nodes0, inits0 = _counts(model)
        if self.config.fold_constants:
            import onnxscript.optimizer
            from onnxscript import rewriter

            onnxscript.optimizer.fold_constants(model)
            rules = [
                r
                for r in rewriter._DEFAULT_REWRITE_RULES
                if "BatchNorm" not in (getattr(r, "name", None) or "")
            ]
            rewriter.RewritePass(rules)(model)
        noop = drop_noop_reshapes(model)
        steps = [
            ir_common.IdentityEliminationPass(),
            ir_common.DeduplicateInitializersPass(),
            ir_common.RemoveUnusedNodesPass(),
            ir_common.RemoveUnusedOpsetsPass(),
            ir_common.TopologicalSortPass(),
        ]
        if self.config.cse:
            steps.insert(1, ir_common.CommonSubexpressionEliminationPass())
        ir.passes.Sequential(*steps)(model)
        nodes1, inits1 = _counts(model)
        self.stats.update(
            nodes_before=nodes0,
            nodes_after=nodes1,
            nodes_removed=nodes0 - nodes1,
            initializers_before=inits0,
            initializers_after=inits1,
            noop_reshapes_removed=noop,
        )
        logger.info("cleanup: %d → %d nodes", nodes0, nodes1)
        return PassResult(model, modified=(nodes0, inits0) != (nodes1, inits1))
