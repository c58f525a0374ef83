"""The ncnn format is written by the arm target (``--target arm --format ncnn``): its options."""

from autoglm_compress.targets.tflite.options import Options

__all__ = ["Options"]
