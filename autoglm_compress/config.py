"""``CompressConfig``: the one typed description of a compression run.

The CLI options (cli_options.py), the Python API (``compress(config)`` / ``compress(path, **fields)``)
and recipe files (recipe.py, TOML) are all generated from these frozen dataclasses. Each field carries
its help text and CLI spelling in ``metadata`` (made with :func:`field`); adding an option is one field.

Every field has a *flat name* (``calib_method``), unique across sections: the API keyword and, with
``_`` → ``-``, the CLI option (``--calib-method``), unless ``cli=`` spells the option otherwise.
This module imports neither torch nor onnx_ir (``--help`` must start fast).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

__all__ = [
    "field",
    "LoadConfig",
    "ImageConfig",
    "CalibrationConfig",
    "Int8Config",
    "QATOptions",
    "VerifyConfig",
    "GateConfig",
    "BundleConfig",
    "DebugConfig",
    "CompressConfig",
    "PRECISIONS",
    "CALIB_METHODS",
]

PRECISIONS = ("fp32", "fp16", "int8")
CALIB_METHODS = ("auto", "minmax", "percentile", "entropy", "mse")


def field(
    default: Any,
    help: str,  # noqa: A002 - mirrors click's naming
    *,
    flat: str | None = None,
    cli: str | None = None,
    choices: tuple | None = None,
    min: float | None = None,  # noqa: A002
    max: float | None = None,  # noqa: A002
    metavar: str | None = None,
    path: bool = False,
    group: str | None = None,
) -> Any:
    """A config field: default, help, and how the CLI spells it. ``min``/``max`` bound numbers
    (inclusive); ``path``: relative paths in a recipe are taken from the recipe's folder."""
    meta = {"help": help, "flat": flat, "cli": cli, "choices": choices, "min": min, "max": max}
    meta.update(metavar=metavar, path=path, group=group)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class LoadConfig:
    """Load"""

    input_shapes: tuple[str, ...] = field(
        (),
        "Shape (and dtype) of an input the model does not fix, NAME=1x3x224x224[:dtype]. Repeatable.",
        cli="--input-shape",
        metavar="NAME=DIMS[:dtype]",
    )
    trust_pickle: bool = field(
        False, "Allow loading a pickled nn.Module (unpickling runs code from the file)."
    )
    static_shapes: bool = field(
        False, "Fix symbolic input dims (batch …) in the artifacts to the shapes of the data used."
    )


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """Image preprocessing (calibration image folders)"""

    size: tuple[int, ...] = field(
        (),
        "Resize: one int = shorter side (aspect kept), HxW = exact; default: the crop's larger side.",
        flat="image_size",
        metavar="N|HxW",
    )
    crop: tuple[int, ...] = field(
        (), "Center crop HxW (or N); default: the model input's H, W.", flat="image_crop",
        metavar="N|HxW",
    )
    scale: float = field(
        1.0 / 255.0, "Pixel scale: a = pixel * scale (before mean/std).", flat="image_scale", min=0.0
    )
    mean: tuple[float, ...] = field(
        (0.0,), "Per-channel mean subtracted after scaling, e.g. 0.5,0.5,0.5 for [-1, 1] models.",
        flat="image_mean", metavar="M[,M,M]",
    )
    std: tuple[float, ...] = field(
        (1.0,), "Per-channel std divided after the mean, e.g. 0.5,0.5,0.5.", flat="image_std",
        metavar="S[,S,S]",
    )
    layout: str | None = field(
        None, "NCHW or NHWC; default: inferred from the model input.", flat="image_layout",
        choices=("NCHW", "NHWC"),
    )
    channel_order: str = field(
        "RGB", "Channel order the model expects.", flat="image_channel_order",
        choices=("RGB", "BGR"),
    )
    grayscale: bool | None = field(
        None, "Decode as one channel; default: inferred from the model input.",
        flat="image_grayscale",
    )


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """Calibration"""

    data: str | None = field(
        None,
        "Calibration data: .npz/.npy (arrays named like the inputs), an image folder, or "
        "module:function yielding dicts of arrays.",
        flat="calib",
        metavar="DATA",
        path=True,
    )
    method: str = field(
        "auto",
        "Range estimator. auto: min/max for inputs and bounded activations (ReLU6, sigmoid), "
        "a clipped minimum-MSE histogram range for unbounded ones.",
        flat="calib_method",
        choices=CALIB_METHODS,
    )
    samples: int = field(128, "Calibration samples to use.", flat="calib_samples", min=1)
    random: bool = field(
        False, "Calibrate on random data (flagged in the report).", flat="calib_random"
    )
    image: ImageConfig = field(ImageConfig(), "Image preprocessing.")


@dataclasses.dataclass(frozen=True)
class Int8Config:
    """INT8"""

    keep_fp32: tuple[str, ...] = field(
        (), "Node name or op type (glob) to leave in float. Repeatable.", metavar="PATTERN"
    )
    per_tensor: bool = field(False, "Per-tensor weight scales instead of per-channel.")
    bias_correction: bool = field(
        True, "Remove the mean output shift of quantized weights (calibration channel means)."
    )
    smoothquant: float | None = field(
        None,
        "Migrate activation outliers of LayerNorm→MatMul into weights (e.g. 0.5) before INT8.",
        metavar="ALPHA",
        min=0.0,
        max=1.0,
    )
    equalize: bool = field(
        False, "Cross-layer equalization of Conv→[Relu]→Conv pairs (exact in FP32) before INT8."
    )
    latency_guard: bool = field(
        False,
        "INT8: leave op types in float where their int8 form costs more — x86: onnxruntime "
        "timings; arm TFLite: aarch64 LiteRT guest instructions under qemu-aarch64 -cpu <first "
        "--arm-cpu> (a note and no change where the emulation cannot be set up).",
    )
    weights_only: bool = field(
        False,
        "INT8 weights, float activations, no calibration (x86): MatMul/Gemm run as onnxruntime's "
        "dynamic int8 (DynamicQuantizeLinear → MatMulInteger), Conv weights and embedding tables "
        "are stored int8 and computed in float.",
    )
    range_search: bool = field(
        False,
        "Clip activation ranges where that lowers the error of the layers reading them (searched "
        "on held-out calibration samples; tensors with other readers keep their range).",
    )
    reconstruct: bool | None = field(
        False,
        "Layer-wise weight reconstruction (GPTQ-style rounding against each layer's output on "
        "calibration data): tried, and kept when the held-out calibration samples get closer to "
        "FP32. Off by default (it costs about 3x onnxruntime's whole quantization on a 224² CNN); "
        "the Python API's None always tries it.",
        cli="--reconstruct/--no-reconstruct",
    )


@dataclasses.dataclass(frozen=True)
class PruneOptions:
    """Pruning"""

    ratio: float | None = field(
        None, "Structured pruning: remove this share of the channels of every prunable channel "
        "space (e.g. 0.5) before precision lowering; frozen spaces are listed in the report.",
        flat="prune", metavar="RATIO", min=0.0, max=0.95,
    )
    multiple: int = field(8, "Kept channel counts rounded up to a multiple of this.",
                          flat="prune_multiple", min=1)
    macs: float | None = field(
        None, "Structured pruning to a MACs budget (share of the model's, e.g. 0.5): the "
        "smallest channel ratio reaching it is searched.", flat="prune_macs",
        metavar="SHARE", min=0.01, max=1.0,
    )
    scope: str = field(
        "uniform", "uniform: each channel space loses the ratio; global: one importance "
        "threshold across all spaces.", flat="prune_scope", choices=("uniform", "global"),
    )
    importance: str = field(
        "auto", "Channel importance: l1 / l2 (filter norms), bn (|γ|/σ of the BatchNorm after "
        "each producer: prune then runs before BN folding), taylor (first-order change of the "
        "model output when a channel is removed, measured on --train-data / --calib), act (what "
        "each channel feeds the next layers on that data: ‖W[:, c]‖²·E[x_c²], compensated: the "
        "part the kept channels cannot predict), or auto (act with data, else l1).",
        flat="prune_importance", choices=("auto", "l1", "l2", "bn", "taylor", "act"),
    )
    compensate: bool = field(
        True, "After pruning, refit each next layer to what the removed channels fed it: they are "
        "predicted from the kept ones (ridge regression on 64 samples of --train-data / --calib; "
        "nothing without data). No fine-tuning, prune 0.5: BERT-style encoder cosine 0.909 → "
        "0.962, digits accuracy 0.10 → 0.28 (with act importance).", flat="prune_compensate",
    )
    sparsity: float | None = field(
        None, "Unstructured magnitude sparsity: zero this share of every conv/FC weight (after "
        "pruning; distillation then keeps the zeros); dense runtimes gain no speed, the file "
        "compresses smaller.",
        flat="sparsity", metavar="SHARE", min=0.0, max=0.99,
    )
    sparsity_pattern: str | None = field(
        None, "2:4: two of every four input channels kept (sparse tensor-core layout).",
        flat="sparsity_pattern", choices=("2:4",),
    )
    sparsity_scope: str = field(
        "layer", "Unstructured sparsity threshold: layer (each weight zeroes its own share) or "
        "global (one magnitude threshold across all weights).", flat="sparsity_scope",
        choices=("layer", "global"),
    )


DISTILL_DEFAULT_STEPS = 300  # --distill alone


@dataclasses.dataclass(frozen=True)
class DistillOptions:
    """Distillation"""

    enabled: bool = field(
        False, "Distil the FP32 model after the graph passes (e.g. after --prune) from the model "
        f"as loaded, in the torch executor: {DISTILL_DEFAULT_STEPS} steps unless --distill-steps "
        "or --distill-epochs says otherwise.", flat="distill",
    )
    steps: int = field(
        0, "Distillation optimizer steps (implies --distill); 0 = off unless --distill / "
        "--distill-epochs.", flat="distill_steps", metavar="N", min=0,
    )
    epochs: float | None = field(
        None, "Distil for this many passes over the training samples (the held-out eighth "
        "aside) instead of a step count: steps = ⌈epochs × samples / batch⌉ (implies --distill).",
        flat="distill_epochs", metavar="E", min=0.01,
    )
    batch: int = field(16, "Distillation samples per step.", flat="distill_batch", min=1)
    lr: float = field(0.05, "Distillation learning rate, relative (Adam; each weight tensor "
                      "steps at lr × its RMS, biases at lr × the median weight RMS).",
                      flat="distill_lr", min=0.0)
    data: str | None = field(
        None, "What distillation trains on (.npz/.npy, image folder, module:function, like "
        "--calib; labels not needed); default: the calibration data.", flat="train_data",
        cli="--train-data", metavar="DATA", path=True,
    )
    samples: int = field(2048, "Training samples to use.", flat="distill_samples", min=1)
    loss: str = field(
        "mse", "mse: the teacher's outputs, normalised MSE; mse-channel: each output channel "
        "(axis 1) normalised by its own variance — detectors, whose box rows would drown the "
        "score rows; kl: KL divergence of temperature-softened class scores (outputs of shape "
        "[1, C]; MSE for the others).",
        flat="distill_loss", choices=("mse", "mse-channel", "kl"),
    )
    temperature: float = field(4.0, "Softening temperature of --distill-loss kl.",
                               flat="distill_temperature", min=0.01)
    label_weight: float = field(
        0.5, "When the training data has labels (an .npz 'labels' array): loss = w·cross-entropy "
        "+ (1 − w)·distillation loss.", flat="distill_label_weight", min=0.0, max=1.0,
    )
    features: float = field(
        0.0, "Weight of intermediate-feature matching: normalised MSE between the teacher's and "
        "the student's inputs of every weighted layer (after --prune: the kept channels).",
        flat="distill_features", min=0.0,
    )
    scaled_lr: bool = field(
        True, "Per-tensor learning rates proportional to each tensor's RMS (off: one plain Adam "
        "rate, --distill-lr absolute).", flat="distill_scaled_lr",
    )
    device: str | None = field(
        None, "Where distillation trains: cpu or cuda; default: CUDA when present, else CPU.",
        flat="distill_device", choices=("cpu", "cuda"),
    )

    @property
    def active(self) -> bool:
        """Whether distillation runs: --distill, --distill-steps N > 0 or --distill-epochs."""
        return bool(self.enabled or self.steps or self.epochs)


@dataclasses.dataclass(frozen=True)
class QATOptions:
    """Quantization-aware training"""

    steps: int = field(
        0,
        "INT8: fine-tune the quantized weights for N steps by distillation from FP32 (fake-quant "
        "in the torch executor, on CUDA when present); 0 = off.",
        flat="qat_steps",
        metavar="N",
        min=0,
    )
    lr: float = field(1e-4, "QAT learning rate (Adam).", flat="qat_lr", min=0.0)
    batch: int = field(16, "QAT samples per step.", flat="qat_batch", min=1)
    device: str | None = field(
        None, "Where QAT trains: cpu or cuda; default: CUDA when present, else CPU.",
        flat="qat_device", choices=("cpu", "cuda"),
    )
    learn_scales: bool = field(
        True, "QAT trains the activation scales too (LSQ); off: the calibrated scales stay.",
        flat="qat_learn_scales",
    )
    scale_lr: float = field(
        1e-3, "QAT activation-scale step, relative to each scale (× --qat-lr / 1e-4).",
        flat="qat_scale_lr", min=0.0,
    )


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
    """Verification"""

    eval_data: str | None = field(
        None, ".npz eval data; a 'labels' array adds accuracy.", cli="--eval", metavar="NPZ",
        path=True,
    )
    samples: int = field(64, "Samples used for verification.", min=1)
    latency_repeats: int = field(30, "Timed runs per model.", min=1)


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """Quality gates (exit 3)"""

    min_cosine: float | None = field(
        None, "Fail when an artifact's cosine vs FP32 is lower (INT8: fall back layers to FP32 to "
        "reach it); which cosine: --min-cosine-of.", min=-1.0, max=1.0,
    )
    min_cosine_of: str = field(
        "min", "What --min-cosine compares: min (the worst verification sample's cosine, of the "
        "worst output) or mean (the worst output's mean over the samples).",
        choices=("min", "mean"),
    )
    max_drop: float | None = field(
        None, "Fail when accuracy on the --eval labels drops by more than this (e.g. 0.01).",
        min=0.0, max=1.0,
    )
    max_size: str | None = field(
        None, "Fail when an artifact (all its files: ncnn .param + .bin) is larger: bytes "
        "(2000000, 2MB, 1.5MiB) or a share of the source model's size (0.3, 1.2x).",
        metavar="BYTES|RATIO",
    )
    max_latency_ratio: float | None = field(
        None, "Fail when an artifact's latency / FP32 latency in its own runtime (the table's "
        "'vs fp32', inverted) is higher; arm: also its emulated ARM instruction ratio when "
        "measured (--verify-arm).", metavar="R", min=0.0,
    )

    def __post_init__(self):
        if self.max_size is not None:  # a usage error (exit 2) before anything is loaded
            from autoglm_compress.gates import parse_size

            parse_size(self.max_size)


@dataclasses.dataclass(frozen=True)
class BundleConfig:
    """Bundle"""

    path: str | None = field(
        None, "Also write a deployable bundle (docs/bundle.md): the artifacts, manifest.json "
        "(checksums, IO, preprocessing), report.json, 4 samples with every artifact's outputs; "
        "FILE.tar.gz / .tgz, else a folder. Not written when a gate fails. Check one with "
        "`autoglm-compress verify-bundle`.", flat="bundle", metavar="FILE.tar.gz|DIR", path=True,
    )
    preprocess: str | None = field(
        None, "For --bundle with array data: how images become the input, key=value items, e.g. "
        "resize=256,crop=224,scale=1/255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225,"
        "layout=NCHW,order=RGB (keys: resize, crop, scale, mean, std, layout, order, input). An "
        "image-folder --calib records its --image-* options instead.", metavar="KEY=V,…",
    )
    labels: str | None = field(
        None, "Class names, one per line (UTF-8), copied into the --bundle as labels.txt.",
        flat="bundle_labels", metavar="FILE", path=True,
    )

    def __post_init__(self):
        if self.preprocess is not None:  # a usage error (exit 2) before anything is loaded
            from autoglm_compress.bundle.preprocess import parse_preprocess

            parse_preprocess(self.preprocess)


@dataclasses.dataclass(frozen=True)
class DebugConfig:
    """Debugging"""

    dump_ir_after: tuple[str, ...] = field((), "Write the IR after this pass.", metavar="PASS")


@dataclasses.dataclass(frozen=True)
class CompressConfig:
    """A compression run: model → passes → per-target lowering → verified artifacts + report."""

    model: str = field("", "The model: TorchScript .pt, torch.export .pt2, ONNX.", path=True)
    out_dir: str = field("out", "Output folder.", cli="-o/--out", path=True, group="Output")
    targets: tuple[str, ...] = field(
        ("x86",), "Target to lower to (x86, cuda, …). Repeatable.", cli="--target", group="Output"
    )
    precision: str = field(
        "fp32", "fp32, fp16 or int8 (also --fp16 / --int8).", choices=PRECISIONS, group="Output"
    )
    passes: tuple[str, ...] | None = field(
        None,
        "Comma-separated pass list replacing the default (cleanup,fold_bn).",
        metavar="A,B",
        group="Output",
    )
    load: LoadConfig = field(LoadConfig(), "Loading.")
    calibration: CalibrationConfig = field(CalibrationConfig(), "Calibration.")
    int8: Int8Config = field(Int8Config(), "INT8 quantization.")
    qat: QATOptions = field(QATOptions(), "Quantization-aware training.")
    prune: PruneOptions = field(PruneOptions(), "Pruning.")
    distill: DistillOptions = field(DistillOptions(), "Distillation.")
    verify: VerifyConfig = field(VerifyConfig(), "Verification.")
    gates: GateConfig = field(GateConfig(), "Quality gates.")
    bundle: BundleConfig = field(BundleConfig(), "Deployable bundle.")
    debug: DebugConfig = field(DebugConfig(), "Debugging.")
    target_options: dict = field({}, "Per-target options, by target name.")

    @property
    def pass_names(self) -> list[str]:
        """The pipeline: the given passes (default cleanup, fold_bn) plus those the options imply."""
        names = list(self.passes) if self.passes is not None else ["cleanup", "fold_bn"]
        if (self.prune.ratio or self.prune.macs) and "prune" not in names:
            if self.prune.importance == "bn" and "fold_bn" in names:  # BN scales still there
                names.insert(names.index("fold_bn"), "prune")
            else:
                names.append("prune")
        if (self.prune.sparsity or self.prune.sparsity_pattern) and "sparsify" not in names:
            names.append("sparsify")  # before distillation, which keeps the zeros (masked)
        if self.distill.active and "distill" not in names:
            names.append("distill")
        if self.int8.equalize and "equalize" not in names:
            names.append("equalize")
        if self.int8.smoothquant is not None and self.precision == "int8":
            names.append("smoothquant")
        return names


def type_hints(cls) -> dict[str, Any]:
    """Resolved annotations of a config dataclass (strings under ``from __future__``)."""
    return typing.get_type_hints(cls)
