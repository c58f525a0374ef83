"""One error tree for every user-facing failure; the CLI maps each class to an exit code."""

from __future__ import annotations

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_QUALITY",
    "CalibrationError",
    "CompressError",
    "ConfigError",
    "Interrupted",
    "ModelLoadError",
    "PassError",
    "QualityGateError",
    "TerminateSignal",
    "Terminated",
    "UnsupportedOpError",
    "VerificationError",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_QUALITY = 3


class CompressError(Exception):
    """Root of all errors the tool reports to a user as one line."""

    exit_code = EXIT_BAD_INPUT


class Interrupted(CompressError):
    """The user pressed Ctrl-C (exit 130, the shell's convention for SIGINT)."""

    exit_code = 130


class Terminated(Interrupted):
    """The process got SIGTERM (exit 143 = 128 + 15, what a shell reports for it)."""

    exit_code = 143


class TerminateSignal(KeyboardInterrupt):
    """Raised by the CLI's SIGTERM handler. A KeyboardInterrupt, so every cleanup that handles
    Ctrl-C handles SIGTERM the same way (and no ``except Exception`` swallows it)."""


class ModelLoadError(CompressError):
    """The model file cannot be read or converted into the IR."""


class ConfigError(CompressError):
    """A flag, recipe entry or argument is invalid."""


class CalibrationError(CompressError):
    """Calibration/sample data is missing, malformed or does not fit the model."""


class UnsupportedOpError(CompressError):
    """An op that the executor or a target cannot express."""

    def __init__(self, op: str, node: str, where: str, hint: str = ""):
        self.op, self.node, self.where = op, node, where
        msg = f"unsupported op {op!r} (node {node!r}) in {where}"
        super().__init__(msg + (f"; {hint}" if hint else ""))


class PassError(CompressError):
    """A pass failed; names the pass and the ones that ran before it."""

    exit_code = EXIT_INTERNAL

    def __init__(self, pass_name: str, ran_before: list[str], cause: str):
        self.pass_name, self.ran_before = pass_name, list(ran_before)
        before = ", ".join(ran_before) or "none"
        super().__init__(f"pass {pass_name!r} failed (after: {before}): {cause}")


class VerificationError(CompressError):
    """An artifact could not be run in its runtime."""

    exit_code = EXIT_INTERNAL


class QualityGateError(CompressError):
    """A verified artifact missed a user-set quality threshold or budget: one line per failed
    budget; ``result`` is the run's ``CompressResult`` when the artifacts were written."""

    exit_code = EXIT_QUALITY

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result
