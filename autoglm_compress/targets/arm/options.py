"""Options of the arm target (light: read by the CLI for ``--help``)."""

from __future__ import annotations

import dataclasses

from autoglm_compress.config import field

__all__ = ["Options"]

# the -cpu models the ARM runner (targets/arm_emulation) describes to the guest
ARM_CPUS = ("cortex-a35", "cortex-a53", "cortex-a55", "cortex-a57", "cortex-a72", "cortex-a76",
            "cortex-a710", "neoverse-n1", "neoverse-n2", "neoverse-v1", "max")


@dataclasses.dataclass(frozen=True)
class Options:
    """Target arm"""

    threads: int = field(2, "arm: LiteRT interpreter threads for verification and latency.",
                         flat="arm_threads", min=1, max=64)
    io: str = field(
        "float",
        "arm INT8 input/output type: float (QUANTIZE/DEQUANTIZE inside the model), or int8 / "
        "uint8 for full-integer IO (the scales are in the report's io).",
        flat="arm_io", cli="--io", choices=("float", "int8", "uint8"),
    )
    format: str = field(
        "tflite",
        "arm: what to write — tflite (LiteRT), ncnn (.ncnn.param/.ncnn.bin, run in ncnn), or all "
        "(both, one calibration).",
        flat="arm_format", cli="--format", choices=("tflite", "ncnn", "all"),
    )
    ncnn_int8_layers: str = field(
        "all",
        "arm, ncnn INT8: all (every conv / FC int8 — right for ARM, where ncnn's int8 kernels pay), "
        "measured (keep a layer float where ncnn's int8 kernel times slower than its float one "
        "on this machine — for ncnn deployed on x86, whose int8 depthwise kernels are slow) or "
        "measured-arm (keep a layer float where its int8 form costs more guest instructions, "
        "each layer alone in aarch64 ncnn under qemu-aarch64 -cpu <first --arm-cpu>; all layers "
        "in one emulator run; falls back to measured, with a note, where the emulation cannot "
        "be set up).",
        flat="ncnn_int8_layers", cli="--ncnn-int8-layers",
        choices=("all", "measured", "measured-arm"),
    )
    verify_arm: str = field(
        "auto",
        "arm: also run the artifacts on ARM code — aarch64 LiteRT / ncnn under qemu-aarch64 "
        "(Debian's qemu-user; the aarch64 root and wheels are fetched once into the user cache): "
        "fidelity.aarch64 beside the x86 figures and latency.arm_insns (guest instructions per "
        "inference, FP32/FP16/INT8). auto: when qemu-user is installed and the model is small "
        "(≤ 60 M MACs per inference; else a note); emulated: always (minutes per precision for "
        "an ImageNet-size model; a note when it cannot be set up); off.",
        flat="verify_arm", cli="--verify-arm", choices=("auto", "emulated", "off"),
    )
    arm_cpu: str = field(
        "cortex-a76",
        "arm: the CPU model(s) qemu-aarch64 emulates for latency.arm_insns, a comma list "
        f"({', '.join(ARM_CPUS)}); the first also runs the aarch64 verification.",
        flat="arm_cpu", cli="--arm-cpu", metavar="CPU[,CPU…]",
    )

    def __post_init__(self):
        bad = [c for c in self.cpus if c not in ARM_CPUS]
        if bad or not self.cpus:
            from autoglm_compress.errors import ConfigError

            raise ConfigError(f"--arm-cpu {self.arm_cpu!r}: each of {', '.join(ARM_CPUS)}")

    @property
    def cpus(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.strip() for c in self.arm_cpu.split(",") if c.strip()))
