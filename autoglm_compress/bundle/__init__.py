"""Deployable bundles: ``--bundle out.tar.gz`` (or a folder) packs a run's artifacts, a manifest
(per artifact: target, format, precision, runtime and version, sha256, IO; the preprocessing;
stored samples and reference outputs), the report and the labels; ``verify-bundle`` rechecks one.
See docs/bundle.md. Light to import: the writer and verifier load on use."""

from __future__ import annotations

from pathlib import Path

from autoglm_compress.errors import ConfigError

__all__ = ["check_bundle_config", "preprocess_record", "verify_bundle", "write_bundle"]


def write_bundle(*args, **kw):
    from autoglm_compress.bundle.writer import write_bundle as w

    return w(*args, **kw)


def verify_bundle(*args, **kw):
    from autoglm_compress.bundle.verify import verify_bundle as v

    return v(*args, **kw)


def _is_image_folder(cfg) -> bool:
    return bool(cfg.calibration.data) and Path(cfg.calibration.data).is_dir()


def check_bundle_config(cfg) -> None:
    """Usage errors of --bundle / --preprocess / --bundle-labels, before any model is loaded."""
    from autoglm_compress.bundle.archive import is_archive

    b = cfg.bundle
    if not b.path:
        given = [o for o, v in (("--preprocess", b.preprocess), ("--bundle-labels", b.labels)) if v]
        if given:
            raise ConfigError(f"{' and '.join(given)} describe(s) the bundle's contents: add "
                              "--bundle FILE.tar.gz (or a folder)")
        return
    if b.preprocess and _is_image_folder(cfg):
        raise ConfigError("--preprocess states the preprocessing of array data; --calib is an "
                          "image folder, whose --image-* options the bundle records: drop "
                          "--preprocess")
    if b.labels and not Path(b.labels).is_file():
        raise ConfigError(f"--bundle-labels {b.labels!r}: no such file")
    dest = Path(b.path)
    out = Path(cfg.out_dir).resolve()
    if dest.resolve() == out or dest.resolve() in out.parents:
        raise ConfigError(f"--bundle {b.path!r} would hold the output folder -o; choose a path "
                          "beside it or inside it")
    if is_archive(dest):
        if dest.is_dir():
            raise ConfigError(f"--bundle {b.path!r} is a folder; remove it or choose another "
                              "path")
        return
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"--bundle {b.path!r} exists and is not a folder; a bundle path "
                          "ending .tar.gz / .tgz is an archive, any other a folder")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / "manifest.json").is_file():
        raise ConfigError(f"--bundle {b.path!r} is a folder that holds no bundle; remove it or "
                          "choose another path (an earlier bundle folder is replaced)")


def preprocess_record(cfg, model) -> dict | None:
    """The manifest's preprocessing for this run (checked against the model's inputs now, so a
    --preprocess that does not fit fails before any work): the image folder's, the stated one,
    or None (array data, nothing stated)."""
    from autoglm_compress.bundle.preprocess import image_record, parse_preprocess, spec_record
    from autoglm_compress.inputs import model_inputs

    specs = model_inputs(model)
    if _is_image_folder(cfg):
        from autoglm_compress.api import image_preprocess
        from autoglm_compress.calibration.images import ImagePreprocess

        return image_record(image_preprocess(cfg.calibration) or ImagePreprocess(), specs)
    if cfg.bundle.preprocess:
        return spec_record(parse_preprocess(cfg.bundle.preprocess), specs)
    return None
