"""What every target provides, and the pieces they share.

A target lowers the FP32 IR for one runtime: ``check`` (before any calibration: can the target
express every op at this precision? its lowering table says, as data), ``prepare`` (rewrites before
quantization), ``precision_passes`` (how FP32 becomes this precision *here*: fp16 means FP16 weights
and compute for onnxruntime, another thing for TFLite or ncnn), ``scheme`` (its INT8 rules),
``validate`` (after lowering: the runtime's own rules), ``emit`` (files, atomically) and ``verify``
(run them in the runtime through :func:`verify_in_runtime`, the one shared verifier).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx_ir as ir
import tomllib

from autoglm_compress.errors import UnsupportedOpError, VerificationError

__all__ = [
    "Artifact",
    "LoweringTable",
    "Target",
    "VerifyContext",
    "latency_key",
    "sha256_of",
    "verify_in_runtime",
]

logger = logging.getLogger(__name__)


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass
class Artifact:
    """The files a target wrote for one precision (``files``: role → path, the first is the main
    one, e.g. ``{"model": .onnx}``, ``{"param": .param, "bin": .bin}``) and what verification found."""

    target: str
    precision: str
    files: dict[str, Path]
    runtime: str = ""
    size_bytes: int = 0
    sha256: str = ""  # of the main file
    notes: list[str] = dataclasses.field(default_factory=list)
    fidelity: dict = dataclasses.field(default_factory=dict)
    latency: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)
    file_info: dict = dataclasses.field(default_factory=dict)  # role → path, size, sha256

    @property
    def path(self) -> Path:
        return next(iter(self.files.values()))

    def finalize(self) -> Artifact:
        """Sizes and hashes of the written files (once: a 140 MB model is hashed one time)."""
        self.file_info = {
            role: {"path": str(p), "size_bytes": p.stat().st_size, "sha256": sha256_of(p)}
            for role, p in self.files.items()
        }
        self.size_bytes = sum(f["size_bytes"] for f in self.file_info.values())
        self.sha256 = next(iter(self.file_info.values()))["sha256"]
        return self

    def relocate(self, old_dir: Path, new_dir: Path) -> Artifact:
        """Name the files in ``new_dir`` instead of ``old_dir`` (the run's staging folder → ``-o``
        once they are committed): ``files``, ``file_info`` and any path in ``extra`` / ``notes``."""
        from autoglm_compress.output_set import relocate_strings

        self.files = {role: relocate_strings(p, old_dir, new_dir) for role, p in self.files.items()}
        self.file_info = relocate_strings(self.file_info, old_dir, new_dir)
        self.extra = relocate_strings(self.extra, old_dir, new_dir)
        self.notes = relocate_strings(self.notes, old_dir, new_dir)
        return self

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        d["files"] = d.pop("file_info") or {
            role: {"path": str(p), "size_bytes": p.stat().st_size, "sha256": sha256_of(p)}
            for role, p in self.files.items()
        }
        return d


@dataclasses.dataclass
class VerifyContext:
    """What verification compares against: the FP32 IR, sample feeds and their reference outputs."""

    reference_model: ir.Model
    feeds: list[dict[str, np.ndarray]]
    reference_outputs: list[list[np.ndarray]]
    output_names: list[str]
    labels: np.ndarray | None = None
    latency_repeats: int = 30
    batch: int = 1  # rows per sample feed (a fixed batch > 1): top-1 and labels are per row
    fp32_session: object = None  # onnxruntime session of the FP32 IR, made once and shared
    # per target (the run hands them on; targets keep no state between calls):
    fp32_model: ir.Model | None = None  # the FP32 IR after the target's prepare passes
    lowered_model: ir.Model | None = None  # the IR the artifact was emitted from (QDQ for INT8)

    def fp32_for_target(self) -> ir.Model:
        """What the target's other precisions start from (side-by-side latency)."""
        return self.fp32_model if self.fp32_model is not None else self.reference_model

    def reference_session(self):
        """The FP32 model in onnxruntime (latency side by side), built at most once per run."""
        if self.fp32_session is None:
            from autoglm_compress.ir_utils import ort_session

            self.fp32_session = ort_session(self.reference_model)
        return self.fp32_session


Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def latency_key(precision: str) -> str:
    """The artifact's entry in ``latency``: its precision, or "artifact" for an FP32 artifact
    (``fp32`` is the FP32 model in onnxruntime it is timed against)."""
    return "artifact" if precision == "fp32" else precision


def verify_in_runtime(
    make_runner: Callable[[], Runner],
    artifact: Artifact,
    ctx: VerifyContext,
    measured_on: str,
) -> Runner:
    """Run ``artifact`` on every sample feed through the runner ``make_runner()`` builds (the
    target's runtime), compare with the FP32 reference (fidelity per output), and time FP32 in
    onnxruntime and the artifact side by side. Fills ``artifact.fidelity`` / ``.latency``;
    returns the runner. A runtime that cannot load or run the artifact is one line."""
    from autoglm_compress.ir_utils import ort_run
    from autoglm_compress.metrics import compare_latency, fidelity, output_producers

    try:
        run = make_runner()
        got = [run(f) for f in ctx.feeds]
    except Exception as e:  # noqa: BLE001 - whatever the runtime says, one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise VerificationError(
            f"{artifact.path}: {artifact.runtime or artifact.target} cannot run the artifact: {first}"
        ) from None
    artifact.fidelity = fidelity(
        ctx.reference_outputs, got, ctx.output_names, ctx.labels, ctx.batch,
        output_producers(ctx.reference_model),
    )
    ref_sess, feed = ctx.reference_session(), ctx.feeds[0]
    key = latency_key(artifact.precision)
    lat = compare_latency(
        {"fp32": lambda: ort_run(ref_sess, feed), key: lambda: run(feed)},
        repeats=ctx.latency_repeats,
    )
    lat["speedup_vs_fp32"] = round(lat["fp32"]["median_ms"] / max(lat[key]["median_ms"], 1e-9), 3)
    lat["measured_on"] = measured_on
    artifact.latency = lat
    return run


def time_precisions(runners: dict[str, Runner], feed: dict, repeats: int, threads: int) -> dict:
    """The same model at several precisions (``{"fp32": run, "fp16": run, …}``, each in the
    target's runtime) timed interleaved on ``feed``: medians, the ratio of each to FP32, threads."""
    from autoglm_compress.metrics import compare_latency

    lat = compare_latency({k: functools.partial(r, feed) for k, r in runners.items()},
                          repeats=repeats)
    fp32 = lat["fp32"]["median_ms"]
    lat["vs_fp32"] = {k: round(v["median_ms"] / max(fp32, 1e-9), 3)
                      for k, v in lat.items() if k != "fp32"}
    lat["threads"] = threads
    return lat


@dataclasses.dataclass(frozen=True)
class LoweringTable:
    """A target's op-lowering table (``lowering.toml`` beside the target): per precision, the op
    domains its runtime implements, ops refused even so, and the passes that lower FP32 to it."""

    precisions: dict[str, dict]

    @classmethod
    def load(cls, path: Path, supported: frozenset | None = None) -> LoweringTable:
        """``supported``: the ops the target's lowering rules cover, for every precision (as if
        the toml listed them)."""
        data = tomllib.loads(Path(path).read_text())["precision"]
        if supported is not None:
            for entry in data.values():
                entry["supported"] = sorted(supported)
        for entry in data.values():
            base = data.get(entry.get("inherit", ""), {})
            for key in ("domains", "unsupported", "passes", "supported"):
                if key == "supported" and "supported" not in base and "supported" not in entry:
                    continue
                entry.setdefault(key, list(base.get(key, [])))
        return cls(data)

    def entry(self, precision: str) -> dict:
        return self.precisions[precision]

    def refusal(self, node: ir.Node, precision: str, opset: int) -> str | None:
        """Why this target cannot express ``node`` at ``precision`` (None: it can)."""
        e = self.entry(precision)
        domain = node.domain or ""
        if domain == "ai.onnx":
            domain = ""
        if domain not in e["domains"]:
            return f"op domain {domain!r} is not implemented"
        if node.op_type in e["unsupported"]:
            return "the runtime has no kernel for it"
        if "supported" in e and node.op_type not in e["supported"]:
            return "the target has no lowering for it"
        if domain == "":
            import onnx.defs

            if not onnx.defs.has(node.op_type, max(opset, 1)):
                return f"not an ONNX op at opset {opset}"
        return None


class Target(abc.ABC):
    """One runtime's lowering. Subclasses set the class attributes, ``lowering_file`` (next to
    them) and implement ``scheme``, ``emit`` and ``verify``."""

    name: ClassVar[str] = ""
    runtime: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = ()
    options_class: ClassVar[type | None] = None
    lowering_file: ClassVar[Path | None] = None
    rules: ClassVar = None  # the emitter's RuleSet (targets/rules.py): the table's supported ops

    def __init__(self, options=None, **kw):
        cls = self.options_class
        if options is None:
            options = cls(**kw) if cls is not None else None
        elif kw:
            options = dataclasses.replace(options, **kw)
        self.options = options
        self._table: LoweringTable | None = None

    @property
    def table(self) -> LoweringTable:
        if self._table is None:
            self._table = LoweringTable.load(
                self.lowering_file, supported=self.rules.ops() if self.rules else None)
        return self._table

    @property
    def int8_runs_here(self) -> bool:
        """Whether this host's onnxruntime int8 kernels compute what the target's runtime does.
        False (the default): decisions and comparisons run the QDQ graph simulated
        (``ort_session(simulate=True)``), the same on every CPU."""
        return False

    def int8_strategies(self) -> tuple[type, ...]:
        """The INT8 lowering's strategies, in order (int8_strategies.py): the reconstruction
        choice, the cosine fallback, QAT; a target adds its own (x86: the latency guard)."""
        from autoglm_compress.int8_strategies import DEFAULT_STRATEGIES

        return DEFAULT_STRATEGIES

    def record_config(self) -> dict:
        """What the quantize records say about this target's own choices (x86: the CPU rule)."""
        return {}

    def scheme(self):
        """The target's INT8 :class:`~autoglm_compress.quantization.scheme.QuantScheme`."""
        raise NotImplementedError(f"{self.name}: no INT8 scheme")

    def weights_only_config(self) -> dict | None:
        """``--weights-only``: the ``quantize_dynamic`` pass config that makes this target's
        weight-only INT8 IR, or None when the target has no such form."""
        return None

    def min_opset(self, precision: str) -> int:
        """The opset the artifact needs: per-channel Q/DQ (the ``axis`` attribute) needs 13."""
        return 13 if precision == "int8" else 7

    def precision_passes(self, precision: str) -> tuple[str, ...]:
        """Registered passes that lower the FP32 IR to ``precision`` for this target (data)."""
        return tuple(self.table.entry(precision)["passes"])

    def check(self, model: ir.Model, precision: str) -> list[str]:
        """Before any calibration: every op must be one this target expresses at ``precision``;
        the first that is not stops the run (op, node, what to do)."""
        opset = model.opset_imports.get("", 0)
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            why = self.table.refusal(node, precision, opset)
            if why:
                others = ", ".join(t for t in _other_targets(self.name)) or "another target"
                instead = self.alternatives or f"--target {others}"
                raise UnsupportedOpError(
                    node.op_type, node.name or "?", f"{self.label} ({precision})",
                    f"{why}; replace the op in the model, or use {instead}",
                )
        return []

    def refuse_unsupported(self, model: ir.Model, precision: str, reason) -> None:
        """Stop on the first node ``reason(node)`` says the emitter cannot lower (per-node
        conditions beyond the lowering table): node, op, why, and what to use instead."""
        for node in model.graph:
            why = reason(node)
            if why:
                raise UnsupportedOpError(
                    node.op_type, node.name or "?", f"{self.label} ({precision})",
                    f"{why}; replace it in the model, or use {self.alternatives}",
                )

    def refuse_dynamic(self, model: ir.Model, precision: str) -> None:
        """Stop on the first node whose shape ``fold_shapes`` left to run time (a data-dependent
        op, a dim no data fixed, a shape input computed from values): node, op, which input, why."""
        from autoglm_compress.passes.fold_shapes import dynamic_refusal

        left = dynamic_refusal(model)
        if left:
            node, why = left
            raise UnsupportedOpError(
                node.op_type, node.name or "?", f"{self.label} ({precision})",
                f"its shape is only known at run time: {why}; this target needs static shapes "
                f"(replace it in the model, or use {self.alternatives})",
            )

    @property
    def tag(self) -> str:
        """How pass records name this target (``quantize[x86]``, ``quantize[arm/ncnn]``): one
        tag per artifact format, so ``--format all`` records are told apart."""
        return self.name

    @property
    def label(self) -> str:
        """How errors name this target ("target arm", "target arm, format ncnn")."""
        return f"target {self.name}"

    alternatives: ClassVar[str] = ""  # what to suggest instead when an op is refused
    keep_fp32: tuple[str, ...] = ()  # the run's --keep-fp32 patterns (set before check)

    def prepare_passes(self, precision: str) -> tuple[str, ...]:
        """Registered passes that fit the FP32 IR to this target before quantization (data): the
        run applies them with the pipeline, so they get records and ``--dump-ir-after``."""
        return ()

    def prepare(self, model: ir.Model, precision: str, stats: dict[str, dict]) -> list[str]:
        """After the prepare passes (``stats``: each one's counts by pass name): notes for the
        report. ``model`` is the prepared FP32 IR; a target rewrites nothing here."""
        return []

    def prepared(self, model: ir.Model, precision: str) -> tuple[ir.Model, dict[str, dict]]:
        """A prepared copy of ``model`` (the prepare passes run on a copy: ``check`` looks at
        what will be lowered without touching the run's IR) and the passes' stats."""
        from autoglm_compress.pipeline import Pipeline, build_passes

        copy = ir.from_proto(ir.to_proto(model))
        recs = Pipeline(build_passes(list(self.prepare_passes(precision))), progress=False,
                        check_ir=False).run(copy)
        return copy, {r.name: r.stats for r in recs}

    def validate(self, model: ir.Model, precision: str) -> list[str]:
        """Check the lowered IR against the runtime's rules; raise on a violation, return notes."""
        return []

    @abc.abstractmethod
    def emit(self, model: ir.Model, precision: str, out_dir: Path, stem: str) -> Artifact:
        """Write the artifact's files for ``model`` into ``out_dir`` (the run's staging folder
        inside ``-o``: verification runs them there, and the run renames every target's files
        into ``-o`` together at its end)."""

    def describe_io(self, artifact: Artifact, model: ir.Model) -> dict:
        """The artifact's inputs/outputs for the report (names, shapes, dtypes, IO quantization);
        by default read from the lowered IR."""
        from autoglm_compress.artifact_info import artifact_io

        return artifact_io(model)

    @abc.abstractmethod
    def verify(self, artifact: Artifact, ctx: VerifyContext) -> None:
        """Run the artifact in its runtime (:func:`verify_in_runtime`); fill fidelity, latency."""


def _other_targets(name: str) -> list[str]:
    from autoglm_compress.targets.registry import target_names

    return [t for t in target_names() if t != name]
