"""Options of the test-only ``fake`` target."""

from __future__ import annotations

import dataclasses

from autoglm_compress.config import field


@dataclasses.dataclass(frozen=True)
class Options:
    """Target fake"""

    sidecar_indent: int = field(2, "fake: indent of the JSON sidecar.", min=0, max=8)
