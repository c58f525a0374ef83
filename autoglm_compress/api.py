"""``compress(...)``: the Python API the CLI mirrors. Load → passes → per-target emit + verify → report."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir

from autoglm_compress import frontend
from autoglm_compress.config import CompressConfig
from autoglm_compress.errors import CompressError, ConfigError, QualityGateError
from autoglm_compress.inputs import load_npz_feeds, parse_input_shape, random_feeds
from autoglm_compress.ir_utils import from_proto, to_proto
from autoglm_compress.labels import check_eval_labels
from autoglm_compress.metrics import output_producers
from autoglm_compress.output_set import OutputSet, relocate_strings
from autoglm_compress.passes.fold_shapes import DATA_SHAPES
from autoglm_compress.pipeline import Pipeline, build_passes
from autoglm_compress.stats import model_stats
from autoglm_compress.targets.base import Artifact, VerifyContext

__all__ = ["CompressConfig", "CompressResult", "compress"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class CompressResult:
    artifacts: list[Artifact]
    report: dict
    report_path: Path | None  # None: a torchrun rank > 0, which writes nothing
    bundle_path: Path | None = None  # --bundle: where the bundle was written

    def artifact(self, target: str, format: str | None = None) -> Artifact:
        """The artifact of ``target`` (and ``format``, e.g. "ncnn", where a target writes
        several: ``--target arm --format all``)."""
        return next(a for a in self.artifacts if a.target == target
                    and (format is None or a.extra.get("format") == format))


def _check_out_dir(out_dir: Path) -> list[Path]:
    """Make ``-o`` (and missing parents) and probe it; the folders this created (innermost
    last), which a failed run removes again while they are empty."""
    probe, made = None, []
    for d in (out_dir, *out_dir.parents):
        if d.exists():
            break
        made.insert(0, d)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=f".probe.autoglm-{os.getpid()}-",
                                     suffix=".tmp")  # a killed run's is removed by the next
        os.close(fd)
    except OSError as e:
        raise ConfigError(
            f"output folder {str(out_dir)!r} is not writable ({e.strerror}); choose another with -o"
        ) from None
    finally:
        if probe:
            os.unlink(probe)
    return made


def _copy(model: ir.Model) -> ir.Model:
    return from_proto(to_proto(model))


def _sample_feeds(model, eval_data, calibration, samples):
    """Verification feeds: eval data (with labels), else calibration data, else random (flagged)."""
    if eval_data:
        feeds, labels = load_npz_feeds(eval_data, model, limit=samples)
        return feeds, labels, "eval"
    if calibration.data:
        from autoglm_compress.calibration.data import open_calibration_source

        src = open_calibration_source(calibration.data, model, preprocess=image_preprocess(calibration)
        )
        return list(src.take(samples)), None, "calibration"
    return random_feeds(model, n=min(samples, 8)), None, "random"


def _reference(model: ir.Model, feeds):
    """FP32 reference outputs: onnxruntime on the FP32 IR when it runs it, else the torch executor
    (the executor's own results then are what artifacts are compared with). Returns the outputs,
    output names, which runtime, and the onnxruntime session (reused for latency) or None."""
    from autoglm_compress.ir_utils import ort_run, ort_session

    names = [v.name for v in model.graph.outputs]
    try:
        sess = ort_session(model)
        return [ort_run(sess, f) for f in feeds], names, "onnxruntime on the FP32 IR", sess
    except Exception as e:  # noqa: BLE001 - whatever onnxruntime refuses, the executor runs
        logger.info("FP32 reference in the torch executor (onnxruntime: %s)", e)
    from autoglm_compress.runtime import TorchExecutor

    ex = TorchExecutor(model)
    outs = [ex.run(f) for f in feeds]
    outs = [[o[n].detach().cpu().numpy() for n in names] for o in outs]
    return outs, names, "torch executor on the FP32 IR", None


def compress(
    config: CompressConfig | str | Path,
    *,
    progress: bool = False,
    progress_lines: bool | str = False,
    argv: list[str] | None = None,
    recipe: dict | None = None,
    **fields,
) -> CompressResult:
    """Compress a model for each target; verified artifacts and report.json go in ``out_dir``.

    ``compress(CompressConfig(...))`` or ``compress("model.pt", int8=True, calib="c.npz",
    targets="x86")``: keywords are the config's flat names (the CLI options with ``_``), and may
    also override a given config. Usage errors raise before the model is loaded. ``progress``:
    tqdm bars (a terminal); ``progress_lines``: a plain stderr line per step of 2 s or more (logs,
    progress_lines.py; ``"all"``: every step); either one also prints a long training's duration estimate."""
    from autoglm_compress.config_build import check_combinations, from_flat

    if isinstance(config, CompressConfig):
        cfg = from_flat(None, base=config, **fields) if fields else config
    else:
        cfg = from_flat(config, **fields)
    check_combinations(cfg)
    from autoglm_compress import progress_lines as lines

    if progress or progress_lines:
        lines.enable(lines=bool(progress_lines), every_step=progress_lines == "all")
    try:
        return _Run(cfg, progress, argv, recipe).run()
    finally:
        lines.disable()


class _Run:
    """One compression run, step by step (each step a method, state on the instance)."""

    def __init__(self, cfg: CompressConfig, progress: bool, argv, recipe):
        self.cfg, self.progress, self.argv, self.recipe = cfg, progress, argv, recipe
        self.t_start = time.perf_counter()
        self.out_dir = Path(cfg.out_dir)
        self.precision = cfg.precision
        self.notes: list[str] = []
        self.output = OutputSet(self.out_dir)  # every file of the run, committed at its end

    def _preflight(self) -> None:
        """Everything checkable without the model: output folder, targets and their precision,
        pass names — before any loading."""
        from autoglm_compress.targets.registry import get_targets

        cfg = self.cfg
        self.made_dirs = _check_out_dir(self.out_dir)
        self.targets = [tgt for t in dict.fromkeys(cfg.targets)
                        for tgt in get_targets(t, cfg.target_options.get(t))]
        for t in self.targets:
            t.keep_fp32 = tuple(cfg.int8.keep_fp32)  # an INT8 check lowers as the run will
            if self.precision not in t.precisions:
                raise ConfigError(
                    f"target {t.name} has no {self.precision} lowering "
                    f"(it has {', '.join(t.precisions)}); choose another precision or target"
                )
        self.specs = [parse_input_shape(s) for s in cfg.load.input_shapes]
        from autoglm_compress.calibration.data import precheck_source

        for data in (cfg.calibration.data, cfg.verify.eval_data, cfg.distill.data):
            precheck_source(data)  # a missing file or an empty folder: before the model loads
        self.pipeline = Pipeline(
            build_passes(cfg.pass_names, pass_configs(cfg)),
            dump_ir_after=tuple(n for n in cfg.debug.dump_ir_after if n in cfg.pass_names),
            dump_dir=self.out_dir,
            progress=self.progress,
        )

    def _load(self) -> None:
        cfg = self.cfg
        model = frontend.load(cfg.model, self.specs, trust_pickle=cfg.load.trust_pickle,
                              check_inputs=self._check_arrays)
        model, self.opset_note = _ensure_opset(model, self.targets, self.precision)
        self.feeds, self.labels, self.source = _sample_feeds(
            model, cfg.verify.eval_data, cfg.calibration, cfg.verify.samples
        )
        self.shapes = _shape_record(model, self.feeds, self.source)
        concrete = {k: v["shape"] for k, v in self.shapes.items()}
        if cfg.load.static_shapes:
            model = frontend.make_static(model, concrete)
        # the arm formats' fold_shapes fixes symbolic dims to these (x86 keeps them dynamic)
        model.metadata_props[DATA_SHAPES] = json.dumps(concrete)
        self.stats_before = model_stats(model, concrete)
        self.model = model
        if cfg.bundle.path:  # the manifest's preprocessing, checked against the inputs now
            from autoglm_compress.bundle import preprocess_record

            self.preprocess = preprocess_record(cfg, model)

    def _check_arrays(self, signature: ir.Model) -> None:
        """Array names and shapes of every .npz/.npy given, against the model's inputs as soon as
        they are known (before the model's simplification and checks): one sample read each."""
        cfg = self.cfg
        for data in dict.fromkeys((cfg.verify.eval_data, cfg.calibration.data, cfg.distill.data)):
            if data is not None and Path(str(data)).suffix.lower() in (".npz", ".npy") \
                    and Path(str(data)).is_file():
                load_npz_feeds(data, signature, limit=1)

    def _reference(self) -> None:
        cfg = self.cfg
        self.reference = _copy(self.model)
        outs, names, self.ref_runtime, sess = _reference(self.reference, self.feeds)
        self.ref_outs, self.out_names = outs, names
        self.ref_sess = None if self.precision == "int8" else sess  # not held through calibration
        self.batch = _feed_batch(self.feeds, outs)
        check_eval_labels(
            self.labels, outs, names, str(cfg.verify.eval_data), cfg.gates.max_drop is not None,
            self.batch, output_producers(self.reference),
        )
        _check_reference(outs, names, cfg.gates.min_cosine)

    def _context(self):
        from autoglm_compress.passes.context import PassContext

        cal = self.cfg.calibration
        source = None
        if cal.data is not None or cal.random:
            from autoglm_compress.calibration.data import open_calibration_source

            source = open_calibration_source(
                cal.data, self.model, preprocess=image_preprocess(cal), random=cal.random
            )
        train = None
        if self.cfg.distill.data is not None:
            from autoglm_compress.calibration.data import open_calibration_source

            train = open_calibration_source(
                self.cfg.distill.data, self.model, preprocess=image_preprocess(cal)
            )
        return PassContext(data=source if source is not None else train, teacher=self.reference,
                           progress=self.progress, train_data=train)

    def run(self) -> CompressResult:
        """The run; on any failure or interrupt its staging folder is removed, and an interrupt
        carries what ``-o`` now holds (``output_state``, for the CLI's message)."""
        try:
            return self._run()
        except BaseException as e:
            self.output.abort()
            for d in reversed(getattr(self, "made_dirs", [])):  # no empty folder left behind
                try:
                    d.rmdir()
                except OSError:
                    break
            if isinstance(e, KeyboardInterrupt):
                e.output_state = self.output.describe()
            elif isinstance(e, CompressError) and self.output.staging is not None:
                # a file named in the message is named where it would have been: -o
                e.args = relocate_strings(e.args, self.output.staging, self.out_dir)
            raise

    def _run(self) -> CompressResult:
        from autoglm_compress.progress_lines import step

        self._preflight()
        with step("load"):
            self._load()
        with step("FP32 reference") as st:
            self._reference()
            st["detail"] = f"{len(self.feeds)} samples"
        ctx = self._context()
        records = self.pipeline.run(self.model, ctx)
        from autoglm_compress.runtime import distributed

        if not distributed.is_main():  # torchrun: rank 0 lowers, verifies and writes
            distributed.release()
            return CompressResult([], {"rank": distributed.rank(), "passes": [
                {"name": r.name, "stats": r.stats} for r in records]}, None)
        distributed.release()
        self.stats_after = model_stats(self.model, {k: v["shape"] for k, v in self.shapes.items()})
        with step("target checks"):
            for tgt in self.targets:
                self.notes += tgt.check(self.model, self.precision)
        calib_info = None
        calibrated = not self.cfg.int8.weights_only or self.cfg.calibration.data is not None
        if self.precision == "int8" and calibrated:  # weight-only: bias correction's means
            from autoglm_compress import lowering

            with step("calibration") as st:
                ctx.stats, calib_info = lowering.calibrate(
                    self.model, ctx, self.cfg.calibration.method, self.cfg.calibration.samples
                )
                st["detail"] = f"{(calib_info or {}).get('samples', '?')} samples"
            if ctx.data.skipped:
                calib_info["skipped_files"] = {
                    "count": len(ctx.data.skipped), "first": ctx.data.skipped[:5]
                }
            if ctx.data.kind == "images":
                calib_info.update(_preprocess_record(self.cfg.calibration, self.model))
        vctx = VerifyContext(
            self.reference, self.feeds, self.ref_outs, self.out_names, self.labels,
            self.cfg.verify.latency_repeats, self.batch, self.ref_sess,
        )
        self.staging = self.output.open()
        results = [self._target(tgt, ctx, vctx, records) for tgt in self.targets]
        with step("report"):
            return self._finish(records, calib_info, results)

    def _target(self, tgt, ctx, vctx, records):
        """Prepare → lower (precision) → validate → emit → verify, for one target; its files are
        written and verified in the run's staging folder (``_finish`` commits them)."""
        from autoglm_compress import lowering
        from autoglm_compress.artifact_info import artifact_layers, layer_counts, name_sources
        from autoglm_compress.progress_lines import step

        lowered = _copy(self.model)
        ctx.target = tgt
        label = getattr(tgt, "label", tgt.name)
        notes = self._prepare(tgt, lowered, ctx, records)
        with step(f"{label}: {self.precision} lowering"):
            low = lowering.lower_for_target(lowered, tgt, self.precision, ctx, self.cfg)
        records.extend(low.records)
        notes += low.notes
        notes += tgt.validate(low.model, self.precision)
        with step(f"{label}: emit"):
            art = tgt.emit(low.model, self.precision, self.staging, Path(self.cfg.model).stem)
        art.notes.extend(notes)
        tctx = dataclasses.replace(vctx, fp32_model=lowered, lowered_model=low.model)
        with step(f"{label}: verify in the runtime") as st:
            tgt.verify(art, tctx)
            st["detail"] = art.path.name
        if tgt.name == "arm":  # --verify-arm: the same files on ARM code (qemu-aarch64)
            from autoglm_compress.targets.arm_emulation.verify import verify_arm

            with step(f"{label}: aarch64 emulation"):
                verify_arm(tgt, art, tctx)
        if self.precision in ("int8", "fp16"):  # per-layer SQNR read in the artifact's runtime
            from autoglm_compress.layer_error import runtime_layer_sqnr

            with step(f"{label}: per-layer error"):
                err = runtime_layer_sqnr(art, lowered, vctx.feeds)
            if err is not None:
                art.extra["layer_error"] = err
        fell = [r.stats.get("fell_back", []) for r in low.records if r.name.startswith("quantize")]
        kept = [r.config.get("keep_fp32", []) for r in low.records if r.name.startswith("quantize")]
        d = art.as_dict()
        d["io"] = name_sources(tgt.describe_io(art, low.model),
                               [v.name for v in self.reference.graph.inputs], self.out_names,
                               art.extra.get("blobs"))
        d["layers"] = artifact_layers(art, layer_counts(
            low.model, fell_back=[n for f in fell for n in f], kept=[n for k in kept for n in k]
        )) if self.precision == "int8" else None
        logger.info("%s: %s cosine %.5f", tgt.name, art.path.name, art.fidelity["cosine_min"])
        return art, d

    def _prepare(self, tgt, model, ctx, records) -> list[str]:
        """The target's prepare passes on ``model`` (in place) through the pipeline: records
        named ``pass[target]``, ``--dump-ir-after`` honoured; the target's notes."""
        names = list(tgt.prepare_passes(self.precision))
        dump = tuple(n for n in self.cfg.debug.dump_ir_after if n in names)
        recs = Pipeline(build_passes(names), progress=False, dump_ir_after=dump,
                        dump_dir=self.out_dir).run(model, ctx)
        stats = {r.name: r.stats for r in recs}
        for r in recs:
            r.name = f"{r.name}[{tgt.tag}]"
        records.extend(recs)
        return list(tgt.prepare(model, self.precision, stats))

    def _distill_overlap(self, records) -> list[str]:
        """Warnings for a distillation: verified on the samples it trained on, or held out < 16."""
        rec = next((r for r in records if r.name == "distill"), None)
        if rec is None:
            return []
        out, cfg = [], self.cfg
        train = cfg.distill.data if cfg.distill.data is not None else cfg.calibration.data
        verified = cfg.verify.eval_data if self.source == "eval" else cfg.calibration.data
        if train is not None and verified is not None and (
                str(train) == str(verified) or Path(str(train)).exists()
                and Path(str(train)).resolve() == Path(str(verified)).resolve()):
            out.append("verified on the samples distillation trained on: give --eval held-out "
                       "data for an unbiased figure")
        held = (rec.stats or {}).get("heldout_samples", 0)
        if held < 16:
            out.append(f"distillation held out only {held} samples to check its training "
                       "(16 or more advised: give more --train-data / --calib samples)")
        return out

    def _finish(self, records, calib_info, results) -> CompressResult:
        from autoglm_compress.artifact_info import run_info, source_info
        from autoglm_compress.gates import quality_gate
        from autoglm_compress.report import REPORT_SCHEMA_VERSION

        cfg = self.cfg
        artifacts = [a for a, _ in results]
        source = source_info(cfg.model)
        source.update(format=self.model.metadata_props.get("autoglm.source_format"))
        report = {
            "schema_version": REPORT_SCHEMA_VERSION,
            "tool": {"name": "autoglm-compress", "version": _version()},
            "run": {**run_info(self.argv, self.recipe), "id": self.output.run_id},
            "model": {
                **source,
                "stats": self.stats_before.as_dict(),
                "stats_before": self.stats_before.as_dict(),
                "stats_after": self.stats_after.as_dict(),
            },
            "passes": [dataclasses.asdict(r) for r in records],
            "input_shapes": self.shapes,
            "static_shapes": cfg.load.static_shapes,
            "opset_conversion": self.opset_note,
            "verification": {
                "samples": len(self.feeds),
                "source": self.source,
                "reference": self.ref_runtime,
                "warning": _verification_warning(self.source, len(self.feeds), self.precision,
                                                 self._distill_overlap(records)),
            },
            "calibration": calib_info,
            "warnings": self.notes,
            "artifacts": [d for _, d in results],
        }
        g = cfg.gates
        gate = quality_gate(report["artifacts"], g.min_cosine, g.max_drop, g.max_size,
                            g.max_latency_ratio, source.get("size_bytes"), g.min_cosine_of)
        report["gates"] = gate.pop("gates") if gate else []  # every budget, per artifact
        lines = gate.pop("lines") if gate else []
        report["quality_gate"] = gate
        report["seconds"] = round(time.perf_counter() - self.t_start, 3)
        # every target's files, the manifest and the report renamed into -o together (report
        # last); the previous run's files that this run did not write again are removed
        report_path = self.output.commit(artifacts, report)
        result = CompressResult(artifacts, report, report_path)
        if cfg.bundle.path and lines:
            lines.append(f"--bundle {cfg.bundle.path}: not written (a gate failed; a bundle holds "
                         "only artifacts that passed their gates)")
        elif cfg.bundle.path:
            result.bundle_path = self._bundle(report, results, report_path)
        if lines:  # the artifacts are written (a CI step inspects them); exit 3, a line each
            raise QualityGateError("\n".join(lines), result=result)
        return result


    def _bundle(self, report, results, report_path) -> Path:
        from autoglm_compress.bundle import write_bundle
        from autoglm_compress.inputs import model_inputs

        inputs = [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype}
                  for s in model_inputs(self.model)]
        return write_bundle(
            self.cfg.bundle.path, report=report, artifacts=[a for a, _ in results],
            report_dicts=report["artifacts"], report_path=report_path, feeds=self.feeds,
            reference=self.ref_outs, output_names=self.out_names, inputs=inputs,
            preprocess=self.preprocess, labels_path=self.cfg.bundle.labels, source=self.source,
            ref_runtime=self.ref_runtime)


def pass_configs(cfg: CompressConfig) -> dict[str, dict]:
    """The configs of the passes this run enables, read from the config tree (pass_options.py)."""
    from autoglm_compress.pass_options import PASS_OPTIONS, pass_kwargs

    return {n: pass_kwargs(cfg, n) for n in cfg.pass_names if n in PASS_OPTIONS}


def image_preprocess(calibration):
    """The image-folder preprocessing a CalibrationConfig describes (None when all defaults)."""
    from autoglm_compress.calibration.images import ImagePreprocess

    im = calibration.image
    if im == type(im)():
        return None

    def pair(v):
        return None if not v else (v[0] if len(v) == 1 else (v[0], v[1]))

    return ImagePreprocess(
        size=pair(im.size), crop=pair(im.crop), scale=im.scale, mean=im.mean, std=im.std,
        layout=im.layout, channel_order=im.channel_order, grayscale=im.grayscale,
    )


def _preprocess_record(calibration, model) -> dict:
    """How calibration images became tensors (for the report and a deployment), and a warning
    when a 3-channel model got the defaults (pixels / 255, no mean/std): ImageNet-style models
    need their training normalisation."""
    import dataclasses as dc

    from autoglm_compress.calibration.images import ImagePreprocess

    pre = image_preprocess(calibration) or ImagePreprocess()
    out = {"preprocess": {k: list(v) if isinstance(v, tuple) else v
                          for k, v in dc.asdict(pre).items()}}
    shape = model.graph.inputs[0].shape if model.graph.inputs else None
    three = shape is not None and any(d == 3 for d in list(shape)[1:2] + list(shape)[-1:])
    if three and pre.mean == ImagePreprocess.mean and pre.std == ImagePreprocess.std:
        out["preprocess_warning"] = (
            "calibration images fed as pixels/255 with no mean/std: if the model was trained "
            "with a normalisation (ImageNet: --image-mean 0.485,0.456,0.406 --image-std "
            "0.229,0.224,0.225), give it, or the INT8 ranges fit the wrong inputs")
    return out


def _verification_warning(source: str, n: int, precision: str,
                          distill: list[str] | None = None) -> str | None:
    """Why the fidelity figures may flatter the artifact (None: they do not); ``distill``: what
    makes a distillation's figures flatter (``_Run._distill_overlap``)."""
    if source == "random":
        return "random inputs: fidelity on real data may differ"
    out = list(distill or ())
    if source == "calibration" and precision == "int8":
        out.append("verified on the calibration samples the INT8 scales were fitted to: give "
                   "--eval held-out data for an unbiased figure")
    if n < 16:
        out.append(f"only {n} verification samples: figures are rough (16 or more advised)")
    return "; ".join(out) or None


def _feed_batch(feeds, ref_outs) -> int:
    """Rows per sample, for per-row top-1 and labels: the leading dim that every input and every
    output of a sample share (a model traced at a fixed batch b > 1), else 1."""
    firsts = {a.shape[0] for a in feeds[0].values() if getattr(a, "ndim", 0) >= 1}
    firsts |= {np.shape(o)[0] if np.ndim(o) else -1 for o in ref_outs[0]}
    return firsts.pop() if len(firsts) == 1 else 1


def _check_reference(ref_outs, names, min_cosine) -> None:
    """A degenerate FP32 reference (all-zero, constant, non-finite) cannot pass --min-cosine:
    say so before any calibration rather than after."""
    from autoglm_compress.metrics import reference_flags

    flags = reference_flags(ref_outs, names)
    if flags:
        text = "; ".join(f"output {k!r}: {', '.join(v)}" for k, v in flags.items())
        if min_cosine is not None:
            raise QualityGateError(
                f"the FP32 model's own outputs are degenerate on the verification data ({text}): "
                "every artifact fails --min-cosine; check the model and its inputs"
            )
        logger.warning("the FP32 reference itself is degenerate: %s", text)


def _ensure_opset(model: ir.Model, targets, precision: str):
    """Raise the model's opset up front when a target's artifact needs more (int8 per-channel Q/DQ
    needs 13): converted before any calibration, and said in the report."""
    need = max(t.min_opset(precision) for t in targets)
    have = model.graph.opset_imports.get("", 0)
    if have >= need:
        return model, None
    logger.info("converting opset %d → %d (%s needs it)", have, need, precision)
    return frontend.upgrade_opset(model, need), {"from": have, "to": need, "why": precision}


def _shape_record(model: ir.Model, feeds, source: str) -> dict:
    """Per input: the IR's (maybe symbolic) shape, the concrete shape verification and calibration
    use, and where that shape came from."""
    from autoglm_compress.inputs import model_inputs, shape_hints

    hints, out = shape_hints(model), {}
    for s in model_inputs(model):
        concrete = list(feeds[0][s.name].shape)
        if all(isinstance(d, int) for d in s.shape):
            origin = "model"
        elif source == "random":
            origin = "--input-shape" if s.name in hints else "model, symbolic batch = 1"
        else:
            origin = f"{source} data"
        out[s.name] = {"model": list(s.shape), "shape": concrete, "from": origin}
    return out


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("autoglm-compress")
    except Exception:  # noqa: BLE001
        return "dev"
