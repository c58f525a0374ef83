"""Quality gates for CI: the worst cosine vs FP32 (flagged outputs fail it) and the accuracy drop.

A failed gate is exit 3 with one line; numbers are printed with as many digits as it takes to show
the comparison (a cosine of 0.9999999 against ``--min-cosine 1`` is never written as 1.00000).
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["quality_gate", "below"]

logger = logging.getLogger(__name__)


def below(value: float, bound: float) -> str:
    """``value`` with the fewest digits (≥ 5) that still read as below ``bound``."""
    if not np.isfinite(value):
        return str(value)
    for digits in range(5, 17):
        text = f"{value:.{digits}f}"
        if float(text) < bound:
            return text
    return repr(value)


def quality_gate(artifacts, min_cosine: float | None, max_drop: float | None) -> dict | None:
    """The gate record for the report (None when no gate is set); flagged outputs are warned."""
    from autoglm_compress.metrics import accuracy_output, flag_messages

    flagged = [m for a in artifacts for m in flag_messages(a.fidelity, a.path.name)]
    for m in flagged:
        logger.warning("verification: %s", m)
    if min_cosine is None and max_drop is None:
        return None
    failures, gate = [], {"min_cosine": min_cosine, "max_drop": max_drop}
    if min_cosine is not None:
        worst = min(artifacts, key=lambda a: a.fidelity["cosine_min"])
        cos = worst.fidelity["cosine_min"]
        gate["worst_cosine"] = cos
        if not (np.isfinite(cos) and cos >= min_cosine):
            failures.append(
                f"{worst.path.name} cosine {below(cos, min_cosine)} < --min-cosine {min_cosine}"
            )
        failures += [f"{m} fails --min-cosine" for m in flagged]
    if max_drop is not None:
        for a in artifacts:
            scored = accuracy_output(a.fidelity)
            if scored is None:  # check_eval_labels refuses this before any work; kept as a guard
                why = a.fidelity.get("labels_ignored", "no labels")
                failures.append(f"{a.path.name} has no accuracy for --max-drop ({why})")
                continue
            drop = scored[1]["accuracy_ref"] - scored[1]["accuracy"]
            gate.setdefault("accuracy_drop", {})[a.path.name] = round(drop, 6)
            if drop > max_drop:
                failures.append(f"{a.path.name} accuracy drop {drop:.4f} > --max-drop {max_drop}")
    gate["passed"] = not failures
    gate["message"] = (
        ("quality gate: " + "; ".join(failures) + " (report: report.json)") if failures else "passed"
    )
    return gate
