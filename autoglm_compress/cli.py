"""Command line: ``autoglm-compress MODEL [options]``, ``autoglm-compress inspect MODEL``,
``autoglm-compress passes``. Every failure is one line on stderr and a documented exit code:
0 ok, 1 internal error, 2 bad input/usage, 3 a quality gate failed."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import warnings

import click

from autoglm_compress.errors import EXIT_INTERNAL, CompressError

__all__ = ["main", "cli"]

logger = logging.getLogger("autoglm_compress")


class _DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, is the model for ``compress``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["compress", *args]
        return super().parse_args(ctx, args)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("torch", "onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(noisy).setLevel(max(level, logging.ERROR))
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


@click.group(cls=_DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autoglm-compress")
def cli():
    """Compress a model (TorchScript .pt, torch.export .pt2, ONNX) for x86 and verify it.

    \b
    autoglm-compress MODEL --fp16 --target x86 -o out/
    autoglm-compress inspect MODEL
    """


_shape_opt = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=1x3x224x224[:dtype]",
    help="Shape (and dtype) of an input the model does not fix. Repeatable.",
)
_pickle_opt = click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow loading a pickled nn.Module (unpickling runs code from the file).",
)


@cli.command("compress")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--target",
    "targets",
    multiple=True,
    default=("x86",),
    show_default=True,
    help="Target to lower to: x86, cuda. Repeatable.",
)
@click.option("--fp16", is_flag=True, help="Convert weights and compute to FP16 (I/O stays FP32).")
@click.option(
    "--int8", is_flag=True, help="INT8 post-training quantization (QDQ) from --calib data."
)
@click.option(
    "--calib-method",
    default="minmax",
    show_default=True,
    type=click.Choice(["minmax", "percentile", "entropy", "mse"]),
    help="Range estimator.",
)
@click.option("--calib-samples", default=128, show_default=True, help="Calibration samples to use.")
@click.option(
    "--calib-random", is_flag=True, help="Calibrate on random data (flagged in the report)."
)
@click.option(
    "--keep-fp32",
    multiple=True,
    metavar="PATTERN",
    help="Node name or op type (glob) to leave in float. Repeatable.",
)
@click.option("--per-tensor", is_flag=True, help="Per-tensor weight scales instead of per-channel.")
@click.option(
    "--bias-correction/--no-bias-correction",
    default=True,
    show_default=True,
    help="Remove the mean output shift of quantized weights (calibration channel means).",
)
@click.option(
    "--reduce-range/--full-range",
    default=True,
    show_default=True,
    help="x86: 7-bit weights; full 8-bit range saturates int16 sums on AVX2 without VNNI.",
)
@click.option(
    "--build-engine", is_flag=True, help="cuda: build and run TensorRT engines (needs a GPU)."
)
@click.option(
    "--passes",
    "passes",
    default=None,
    metavar="A,B",
    help="Comma-separated pass list replacing the default (cleanup,fold_bn).",
)
@click.option("-o", "--out", "out_dir", default="out", show_default=True, help="Output folder.")
@click.option(
    "--calib",
    help="Calibration data: .npz/.npy (arrays named like the inputs), an image "
    "folder, or module:function yielding dicts of arrays.",
)
@click.option(
    "--eval", "eval_data", type=click.Path(), help=".npz eval data; a 'labels' array adds accuracy."
)
@click.option("--samples", default=64, show_default=True, help="Samples used for verification.")
@click.option(
    "--latency-guard",
    is_flag=True,
    help="x86 INT8: leave op types in float where onnxruntime runs them slower in int8 (measured).",
)
@click.option(
    "--equalize",
    is_flag=True,
    help="Cross-layer equalization of Conv→[Relu]→Conv pairs (exact in FP32) before INT8.",
)
@click.option(
    "--smoothquant",
    type=float,
    metavar="ALPHA",
    help="Migrate activation outliers of LayerNorm→MatMul into weights (e.g. 0.5) before INT8.",
)
@click.option(
    "--qat-steps",
    default=0,
    show_default=True,
    metavar="N",
    help="INT8: fine-tune the quantized weights for N steps by distillation from FP32 "
    "(fake-quant in the torch executor, on CUDA when present); 0 = off.",
)
@click.option("--qat-lr", default=1e-4, show_default=True, help="QAT learning rate (Adam).")
@click.option("--qat-batch", default=16, show_default=True, help="QAT samples per step.")
@click.option(
    "--max-drop",
    type=float,
    help="Fail (exit 3) when accuracy on the --eval labels drops by more than this (e.g. 0.01).",
)
@click.option(
    "--min-cosine", type=float, help="Fail (exit 3) when an artifact's cosine vs FP32 is lower."
)
@click.option(
    "--dump-ir-after", multiple=True, metavar="PASS", help="Write the IR after this pass."
)
@click.option("--latency-repeats", default=30, show_default=True, help="Timed runs per model.")
@click.option(
    "--static-shapes",
    is_flag=True,
    help="Fix symbolic input dims (batch …) in the artifacts to the shapes of the data used.",
)
@_shape_opt
@_pickle_opt
@click.option(
    "--json", "as_json", is_flag=True, help="Print the report as JSON instead of the table."
)
@click.option("-v", "--verbose", count=True, help="-v: per-pass log; -vv: debug.")
def compress_cmd(
    model,
    targets,
    fp16,
    int8,
    calib_method,
    calib_samples,
    calib_random,
    keep_fp32,
    per_tensor,
    bias_correction,
    reduce_range,
    build_engine,
    passes,
    out_dir,
    calib,
    eval_data,
    samples,
    min_cosine,
    smoothquant,
    equalize,
    latency_guard,
    qat_steps,
    qat_lr,
    qat_batch,
    max_drop,
    dump_ir_after,
    latency_repeats,
    static_shapes,
    input_shapes,
    trust_pickle,
    as_json,
    verbose,
):
    """Compress MODEL for each --target and verify the artifacts in their runtimes."""
    import json

    from autoglm_compress.api import compress
    from autoglm_compress.report import summary_table

    _setup_logging(verbose)
    res = compress(
        model,
        targets=targets,
        fp16=fp16,
        int8=int8,
        calib_method=calib_method,
        calib_samples=calib_samples,
        calib_random=calib_random,
        keep_fp32=keep_fp32,
        per_tensor=per_tensor,
        bias_correction=bias_correction,
        reduce_range=reduce_range,
        build_engine=build_engine,
        out_dir=out_dir,
        input_shapes=input_shapes,
        passes=tuple(p for p in passes.split(",") if p) if passes is not None else None,
        trust_pickle=trust_pickle,
        calib=calib,
        eval_data=eval_data,
        samples=samples,
        dump_ir_after=dump_ir_after,
        min_cosine=min_cosine,
        max_drop=max_drop,
        smoothquant=smoothquant,
        equalize=equalize,
        latency_guard=latency_guard,
        qat_steps=qat_steps,
        qat_lr=qat_lr,
        qat_batch=qat_batch,
        latency_repeats=latency_repeats,
        static_shapes=static_shapes,
        progress=sys.stderr.isatty(),
    )
    if as_json:
        click.echo(json.dumps(res.report, indent=2, default=str))
    else:
        click.echo(summary_table(res.report))
        click.echo(f"report: {res.report_path}")


@cli.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--graph", is_flag=True, help="Also print the IR.")
@_shape_opt
@_pickle_opt
def inspect_cmd(model, graph, input_shapes, trust_pickle):
    """Print inputs, outputs, op histogram, parameters, MACs and size of MODEL."""
    from pathlib import Path

    from autoglm_compress.frontend import load
    from autoglm_compress.inputs import parse_input_shape
    from autoglm_compress.stats import format_stats, model_stats

    _setup_logging(0)
    m = load(model, [parse_input_shape(s) for s in input_shapes], trust_pickle=trust_pickle)
    click.echo(f"{model}: {m.metadata_props.get('autoglm.source_format')}")
    click.echo(format_stats(model_stats(m), Path(model).stat().st_size))
    if graph:
        click.echo(str(m))


@cli.command("passes")
def passes_cmd():
    """List the registered passes and their options."""
    from autoglm_compress.passes import registered

    for name, cls in sorted(registered().items()):
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        click.echo(f"{name}: {doc}")
        for f in dataclasses.fields(cls.config_class):
            click.echo(f"    {f.name} = {f.default!r}: {f.metadata.get('help', '')}")


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="autoglm-compress", standalone_mode=False)
    except CompressError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return EXIT_INTERNAL
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - last resort: one line, exit 1
        if os.environ.get("AUTOGLM_DEBUG"):
            raise
        click.echo(
            f"internal error: {type(e).__name__}: {e} (set AUTOGLM_DEBUG=1 for a traceback)",
            err=True,
        )
        return EXIT_INTERNAL
    return 0


if __name__ == "__main__":
    sys.exit(main())
