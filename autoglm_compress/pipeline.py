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

__all__ = ["Pipeline", "PassRecord", "build_passes"]

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

    def run(self, model: ir.Model) -> list[PassRecord]:
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
            try:
                result = p(model)
                if self.check_ir and result.modified:  # an unchanged IR was checked already
                    check(result.model)
            except CompressError:
                raise
            except Exception as e:  # noqa: BLE001 - wrap with the pass context
                cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise PassError(p.name, [r.name for r in records], cause) from e
            rec = PassRecord(
                p.name,
                dict(p.stats),
                round(time.perf_counter() - t0, 4),
                result.modified,
                dataclasses.asdict(p.config),
            )
            records.append(rec)
            logger.info("pass %-10s %.2fs %s", p.name, rec.seconds, rec.stats)
            if p.name in self.dump_ir_after:
                self._dump(model, p.name)
        return records

    def _dump(self, model: ir.Model, name: str) -> None:
        folder = self.dump_dir or Path(".")
        save_atomic(model, folder / f"ir_after_{name}.onnx")
        (folder / f"ir_after_{name}.txt").write_text(str(model))
        logger.info("IR after %s written to %s", name, folder)
