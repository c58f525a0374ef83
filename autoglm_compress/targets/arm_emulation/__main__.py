"""``python -m autoglm_compress.targets.arm_emulation [--rebuild]``: build (or find) the cached
aarch64 environment and say where it is — or, in one line, what to install. Exits 0 either way
(the runner is optional: without it ``--verify-arm auto`` is a note)."""

from __future__ import annotations

import sys

from autoglm_compress.targets.arm_emulation.environment import Unavailable, setup


def main(argv: list[str]) -> int:
    try:
        env = setup(rebuild="--rebuild" in argv)
    except Unavailable as e:
        print(f"ARM runner unavailable: {e}")
        return 0
    print(f"ARM runner ready: {env.path} ({env.manifest()['qemu']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
