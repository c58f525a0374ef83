"""ncnn is a format of the arm target (``--target arm --format ncnn``): its options are the arm
target's."""

from autoglm_compress.targets.arm.options import Options

__all__ = ["Options"]
