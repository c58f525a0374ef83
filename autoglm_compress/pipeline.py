"""The pass pipeline: run passes in order, check the IR after each, record what each changed."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import onnx_ir as ir
from tqdm import tqdm

from autoglm_compress.errors import CompressError, PassError
from autoglm_compress.ir_utils import check, save_atomic
from autoglm_compress.passes.base import CompressPass, get_pass
from autoglm_compress.passes.context import PassContext
from autoglm_compress.progress_lines import step

__all__ = ["Pipeline", "PassRecord", "PassContext", "build_passes", "infer_shapes"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PassRecord:
    name: str
    stats: dict
    seconds: float
    modified: bool
    config: dict


def build_passes(names: list[str], configs: dict[str, dict] | None = None) -> list[CompressPass]:
    """Passes by registered name, each with its config built from ``configs[name]`` (kwargs)."""
    out = []
    for name in names:
        cls = get_pass(name)
        kwargs = (configs or {}).get(name, {})
        out.append(cls(cls.config_class(**kwargs)))
    return out


def infer_shapes(model: ir.Model) -> ir.Model:
    """Value shapes re-inferred (onnx shape inference) after a pass that changed them: in place
    when possible (the same model object, so in-place passes stay in place)."""
    import onnx

    from autoglm_compress.ir_utils import from_proto, to_proto

    proto = to_proto(model)
    del proto.graph.value_info[:]  # the old intermediate shapes would contradict the new ones
    for out in proto.graph.output:
        out.type.tensor_type.ClearField("shape")
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    inferred = from_proto(proto)
    shapes = {v.name: (v.shape, v.dtype) for v in _values(inferred.graph)}
    for v in _values(model.graph):
        if v.name in shapes:
            v.shape, v.dtype = shapes[v.name][0], shapes[v.name][1] or v.dtype
    return model


def _values(g: ir.Graph):
    for node in g:
        yield from (o for o in node.outputs)


def _config_dict(config) -> dict:
    """The pass config for the report: plain values (schemes by name, callables and arrays as
    their kind), so a record is JSON."""
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if hasattr(v, "name") and dataclasses.is_dataclass(v):
            v = v.name
        elif callable(v) or (isinstance(v, dict) and len(v) > 16):
            v = f"<{type(v).__name__}>"
        elif isinstance(v, dict):
            v = {k: (x.tolist() if hasattr(x, "tolist") else x) for k, x in v.items()}
        out[f.name] = v
    return out


class Pipeline:
    def __init__(
        self,
        passes: list[CompressPass],
        *,
        dump_ir_after: tuple[str, ...] = (),
        dump_dir: str | Path | None = None,
        check_ir: bool = True,
        progress: bool = True,
    ):
        self.passes = passes
        self.dump_ir_after = set(dump_ir_after)
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.check_ir = check_ir
        self.progress = progress
        unknown = self.dump_ir_after - {p.name for p in passes}
        if unknown:
            from autoglm_compress.errors import ConfigError

            raise ConfigError(
                f"--dump-ir-after {sorted(unknown)}: not in this pipeline "
                f"({', '.join(p.name for p in passes) or 'no passes'})"
            )

    def check_needs(self, ctx: PassContext | None) -> None:
        """Every pass's needs against ``ctx``, before the first pass runs."""
        ctx = ctx if ctx is not None else PassContext()
        for p in self.passes:
            ctx.check(p.name, p.required())

    def run(self, model: ir.Model, ctx: PassContext | None = None) -> list[PassRecord]:
        """Run the passes in place on ``model`` (in-place passes only); the records."""
        out, records = self.apply(model, ctx)
        if out is not model:
            raise PassError("pipeline", [r.name for r in records], "a pass replaced the model")
        return records

    def apply(
        self, model: ir.Model, ctx: PassContext | None = None
    ) -> tuple[ir.Model, list[PassRecord]]:
        """Run the passes (a pass may return a new model); the final model and the records."""
        ctx = ctx if ctx is not None else PassContext()
        self.check_needs(ctx)
        records: list[PassRecord] = []
        bar = tqdm(
            self.passes,
            desc="passes",
            unit="pass",
            disable=not self.progress or not self.passes,
            leave=False,
        )
        for p in bar:
            bar.set_postfix_str(p.name)
            t0 = time.perf_counter()
            p.ctx = ctx
            try:
                with step(f"pass {p.name}"):
                    result = p(model)
                model = result.model
                if result.modified and p.changes_shapes:
                    model = infer_shapes(model)
                if self.check_ir and result.modified:  # an unchanged IR was checked already
                    check(model)
            except CompressError:
                raise
            except Exception as e:  # noqa: BLE001 - wrap with the pass context
                cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise PassError(p.name, [r.name for r in records], cause) from e
            finally:
                p.ctx = None
            rec = PassRecord(
                p.name,
                dict(p.stats),
                round(time.perf_counter() - t0, 4),
                result.modified,
                _config_dict(p.config),
            )
            records.append(rec)
            logger.info("pass %-10s %.2fs %s", p.name, rec.seconds, rec.stats)
            if p.name in self.dump_ir_after:
                self._dump(model, p.name)
        return model, records

    def _dump(self, model: ir.Model, name: str) -> None:
        folder = self.dump_dir or Path(".")
        save_atomic(model, folder / f"ir_after_{name}.onnx")
        (folder / f"ir_after_{name}.txt").write_text(str(model))
        logger.info("IR after %s written to %s", name, folder)
