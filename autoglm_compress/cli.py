"""Command line: ``autoglm-compress MODEL [options]``, ``autoglm-compress inspect MODEL``,
``autoglm-compress passes``. Every failure is one line on stderr and a documented exit code:
0 ok, 1 internal error, 2 bad input/usage, 3 a quality gate or budget failed (the artifacts and
the report are written, one line per failed budget), 130 Ctrl-C, 143 SIGTERM."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import signal
import sys
import threading
import warnings

import click

from autoglm_compress.cli_options import GroupedCommand, config_options, given
from autoglm_compress.errors import (
    CompressError,
    Interrupted,
    QualityGateError,
    Terminated,
    TerminateSignal,
)

__all__ = ["cli", "main"]

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
    """Compress a model (TorchScript .pt, torch.export .pt2, ONNX) and verify every artifact.

    \b
    autoglm-compress MODEL --int8 --calib DATA --target x86 -o out/
    autoglm-compress MODEL --int8 --calib DATA --print-recipe > recipe.toml
    autoglm-compress run recipe.toml
    autoglm-compress inspect MODEL
    autoglm-compress MODEL --int8 --calib DATA --target arm --bundle model.tar.gz
    autoglm-compress verify-bundle model.tar.gz
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
_json_opt = click.option(
    "--json", "as_json", is_flag=True,
    help="stdout: only a JSON summary (artifacts with size, ratio vs source, fidelity, latency "
    "ratio; gates; exit code), also on failure; progress, logs and the table go to stderr.",
)
_verbose_opt = click.option("-v", "--verbose", count=True, help="-v: per-pass log; -vv: debug.")

_EXAMPLES = """\b
Examples:
  autoglm-compress model.pt --fp16 --target x86 -o out/
  autoglm-compress model.onnx --int8 --calib images/ --image-mean 0.5,0.5,0.5 \\
      --image-std 0.5,0.5,0.5 --eval eval.npz --min-cosine 0.99 --target x86 --target cuda
  autoglm-compress model.pt --int8 --calib calib.npz --qat-steps 500 --print-recipe > r.toml
  autoglm-compress run r.toml -o out/again
\b
Exit codes: 0 ok, 1 internal error, 2 bad input/usage, 3 a quality gate or budget failed
(--min-cosine, --max-drop, --max-size, --max-latency-ratio: one line each; the artifacts and the
report are written), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM): -o then holds the previous run's files
(the message says what it holds)."""


@contextlib.contextmanager
def _stdout_to_stderr(on: bool):
    """With ``--json``, whatever the run writes to stdout — Python or a runtime's native code
    writing to fd 1 — goes to stderr, so stdout carries only the JSON summary."""
    if not on:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# auto (bars on a terminal, else lines) | bars | lines | all (a line for every step) | off
PROGRESS_ENV = "AUTOGLM_PROGRESS"


def _progress_mode() -> tuple[bool, bool | str]:
    """(tqdm bars, plain step lines: False, True or "all") from ``AUTOGLM_PROGRESS``; an unknown
    value is ``auto``."""
    mode = os.environ.get(PROGRESS_ENV, "auto").strip().lower()
    if mode in ("bars", "lines", "off"):
        return mode == "bars", mode == "lines"
    if mode == "all":
        return False, "all"
    tty = sys.stderr.isatty()
    return tty, not tty


def _run(cfg, as_json: bool, verbose: int, argv, recipe=None) -> None:
    from autoglm_compress.api import compress
    from autoglm_compress.report import summary_table

    _setup_logging(verbose)
    done = None  # what -o holds once compress has returned
    failed = None  # a failed gate: its artifacts and report are written, exit 3 after the summary
    try:
        with _stdout_to_stderr(as_json):
            try:
                bars, lines = _progress_mode()
                res = compress(cfg, progress=bars, progress_lines=lines, argv=argv, recipe=recipe)
            except QualityGateError as e:
                if e.result is None:  # stopped before any artifact
                    raise
                res, failed = e.result, e
            except OSError as e:  # a full disk, `ulimit -f`, a read-only folder: the user's to fix
                if e.errno not in _ENV_ERRNOS:
                    raise
                raise CompressError(_env_message(e, cfg.out_dir)) from None
        done = f"this run's files are complete in {cfg.out_dir}"
        if res.report_path is None:  # a torchrun rank other than 0: it trained, rank 0 reports
            return
        table = summary_table(res.report) + f"\nreport: {res.report_path}"
        if res.bundle_path is not None:
            table += f"\nbundle: {res.bundle_path}"
        click.echo(table, err=as_json)
        if as_json:
            code = failed.exit_code if failed else 0
            lines = [f"error: {ln}" for ln in _lines(failed)] if failed else []
            _print_json(res.report, res.report_path, code, lines, res.bundle_path)
        if failed:
            raise failed
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM, before click turns it into Abort
        raise _interrupted(e, done) from None


def _lines(e: BaseException) -> list[str]:
    """The error lines of ``e`` (a failed gate: one per failed budget)."""
    return [ln for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]


def _print_json(report, report_path, code: int, lines, bundle=None) -> None:
    import json

    from autoglm_compress.report import json_summary

    global _SUMMARY_PRINTED
    _SUMMARY_PRINTED = True
    summary = json_summary(report, report_path, code, lines)
    summary["bundle"] = None if bundle is None else str(bundle)  # --bundle, when written
    click.echo(json.dumps(summary, indent=2, default=str))


def _fail(code: int, lines: list[str], prefix: str = "error: ") -> int:
    """Each line on stderr (with ``prefix``); with ``--json`` the summary on stdout too."""
    for ln in lines:
        click.echo(f"{prefix}{ln}", err=True)
    if _JSON_MODE and not _SUMMARY_PRINTED:
        _print_json(None, None, code, [prefix + ln for ln in lines])
    return code


def _interrupted(e: BaseException | None, state: str | None = None) -> Interrupted:
    """Ctrl-C (exit 130) or SIGTERM (exit 143) as one line that says what the output folder
    holds: the run's own account (``output_state``), else ``state``, else nothing new."""
    state = getattr(e, "output_state", None) or state or "no new file left"
    if isinstance(e, TerminateSignal):
        return Terminated(f"terminated (SIGTERM): stopped; {state}")
    return Interrupted(f"interrupted (Ctrl-C): stopped; {state}")


def _on_sigterm(signum, frame):
    """SIGTERM stops a run as Ctrl-C does: its cleanup runs, then exit 143."""
    raise TerminateSignal()


# Faults of the machine or the folders, not of the tool: exit 2 with the path, never "internal error".
# (SIGXFSZ, which `ulimit -f` sends, is ignored by Python itself: the write raises EFBIG instead.)
_ENV_ERRNOS = {
    errno.ENOSPC: "the disk is full: free space or choose another -o",
    errno.EDQUOT: "the disk quota is used up: free space or choose another -o",
    errno.EFBIG: "over the file size limit (ulimit -f): raise it or choose another -o",
    errno.EACCES: "fix the permissions or choose another path",
    errno.EPERM: "fix the permissions or choose another path",
    errno.EROFS: "choose another -o",
    errno.EIO: "check the disk",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EISDIR: "expected a file, found a folder",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def _env_message(e: OSError, out_dir: str | None = None) -> str:
    """One line for an OSError of the environment, naming the path (the output folder when the
    error does not carry one: a write() past the disk's end names no file)."""
    if e.filename is not None:
        where = repr(str(e.filename))
    elif out_dir is not None:
        where = f"writing into the output folder {str(out_dir)!r}"
    else:
        where = "writing the output"
    return f"{where}: {e.strerror or e}; {_ENV_ERRNOS.get(e.errno, 'check the path')}"


@cli.command("compress", cls=GroupedCommand, epilog=_EXAMPLES)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--fp16", is_flag=True, help="Shorthand for --precision fp16.")
@click.option("--int8", is_flag=True, help="Shorthand for --precision int8 (QDQ from --calib).")
@click.option(
    "--print-recipe", is_flag=True, help="Print the recipe (TOML) this command line means; run nothing."
)
@_json_opt
@_verbose_opt
@config_options
def compress_cmd(model, fp16, int8, print_recipe, as_json, verbose, **options):
    """Compress MODEL for each --target and verify the artifacts in their runtimes."""
    from autoglm_compress.config_build import check_combinations, from_flat

    cfg = from_flat(model, cli=True, fp16=fp16, int8=int8, **given(options))
    if print_recipe:
        from autoglm_compress.recipe import dump_recipe

        click.echo(dump_recipe(cfg), nl=False)
        return
    check_combinations(cfg)
    _run(cfg, as_json, verbose, list(sys.argv[1:]) if _ARGV is None else _ARGV)


@cli.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", default=None, help="Output folder (overrides the recipe's).")
@click.option("--print-recipe", is_flag=True, help="Print the checked recipe; run nothing.")
@click.option(
    "--trust-code",
    is_flag=True,
    help="Allow the recipe's data fields to name code (file.py:function, module:function), "
    "which is imported and run; without it such a recipe is refused.",
)
@_json_opt
@_verbose_opt
def run_cmd(recipe, out_dir, print_recipe, trust_code, as_json, verbose):
    """Run the compression a recipe file (TOML) describes."""
    from autoglm_compress.config_build import check_combinations, to_dict
    from autoglm_compress.recipe import dump_recipe, load_recipe

    cfg = load_recipe(
        recipe, {"out_dir": out_dir} if out_dir else None, trust_code=trust_code or print_recipe
    )
    if print_recipe:
        click.echo(dump_recipe(cfg), nl=False)
        return
    check_combinations(cfg)
    _run(cfg, as_json, verbose, list(sys.argv[1:]) if _ARGV is None else _ARGV, to_dict(cfg))


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
    # An ONNX file is shown as it is: onnx-simplifier imports torch (2 s of start-up); converted
    # torch models are simplified as compress does (torch is loaded for them anyway).
    from autoglm_compress.frontend import detect_format

    p = Path(model)
    onnx_file = p.is_file() and p.stat().st_size > 0 and detect_format(p) == "onnx"
    m = load(
        model, [parse_input_shape(s) for s in input_shapes], trust_pickle=trust_pickle,
        simplify=not onnx_file,
    )
    click.echo(f"{model}: {m.metadata_props.get('autoglm.source_format')}")
    click.echo(format_stats(model_stats(m), Path(model).stat().st_size))
    if graph:
        click.echo(str(m))


@cli.command("verify-bundle")
@click.argument("bundle", type=click.Path())
def verify_bundle_cmd(bundle):
    """Recheck a --bundle (FILE.tar.gz or folder): every checksum, then each artifact whose
    runtime is installed here on the stored samples against its stored outputs.

    \b
    Exit codes: 0 ok, 2 a bad or tampered bundle (checksum, unsafe member, malformed manifest),
    3 an artifact's outputs differ from the stored ones beyond its precision's tolerance."""
    from autoglm_compress.bundle import verify_bundle

    _setup_logging(0)
    verify_bundle(bundle, echo=click.echo)


@cli.command("passes")
def passes_cmd():
    """List the registered passes and their options."""
    from autoglm_compress.passes import registered

    for name, cls in sorted(registered().items()):
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        doc = doc[len(name) + 1 :].strip() if doc.startswith(f"{name}:") else doc
        needs = f" (needs {', '.join(sorted(cls.needs))})" if getattr(cls, "needs", None) else ""
        click.echo(f"{name}: {doc}{needs}")
        for f in dataclasses.fields(cls.config_class):
            click.echo(f"    {f.name} = {f.default!r}: {f.metadata.get('help', '')}")


_ARGV: list[str] | None = None
_JSON_MODE = False  # --json given: stdout carries the JSON summary, failures included
_SUMMARY_PRINTED = False


def main(argv: list[str] | None = None) -> int:
    global _ARGV, _JSON_MODE, _SUMMARY_PRINTED
    _ARGV = list(argv) if argv is not None else list(sys.argv[1:])
    _JSON_MODE = "--json" in _ARGV[: _ARGV.index("--")] if "--" in _ARGV else "--json" in _ARGV
    _SUMMARY_PRINTED = False
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        cli.main(args=argv, prog_name="autoglm-compress", standalone_mode=False)
    except Interrupted as e:  # not an error: no "error:" prefix
        return _fail(e.exit_code, [str(e)], prefix="")
    except QualityGateError as e:  # one line per failed budget
        return _fail(e.exit_code, _lines(e))
    except CompressError as e:
        return _fail(e.exit_code, [str(e)])
    except (click.exceptions.Abort, KeyboardInterrupt) as e:  # outside a run: nothing written
        stop = _interrupted(e if isinstance(e, KeyboardInterrupt) else e.__cause__)
        return _fail(stop.exit_code, [str(stop)], prefix="")
    except click.ClickException as e:
        return _fail(e.exit_code, [e.format_message()])
    except Exception as e:
        if isinstance(e, OSError) and e.errno in _ENV_ERRNOS:  # the machine's fault: exit 2
            return _fail(2, [_env_message(e)])
        if os.environ.get("AUTOGLM_DEBUG"):
            raise
        return _fail(1, [f"{type(e).__name__}: {e} (set AUTOGLM_DEBUG=1 for a traceback)"],
                     prefix="internal error: ")
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
