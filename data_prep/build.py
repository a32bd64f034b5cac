"""Build a dataset from the folder its publisher ships, into a TFDS data_dir.

    python -m data_prep.build <name>[@config] --manual_dir RAW --data_dir OUT \\
        [--file_format array_record|tfrecord] [--max_image_side 512] [--workers N]

``<name>`` is one of `BUILDERS` (``python -m data_prep.build --list`` prints them with their
configs), or ``all``: then ``--manual_dir`` is a folder holding one raw folder per dataset, named
as in `BUILDERS` (``RAW/roco``, ``RAW/mimic_cxr``, ...), and every one present is built. Without ``@config``, a builder with several configs builds every config whose raw
files are present (MedMNIST: each npz found) and says which it skipped. Converts with
``--workers`` processes (default: all cores), shows a progress bar, and ends with a summary:
records written per split, records rejected per reason, and the path of the rejects file that
lists each rejected item with its path and reason. An interrupted build (Ctrl-C, a killed
job) resumes when the same command is run again: images converted before are not converted
again (`data_prep.conversion_cache`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from typing import Any

from data_prep import core
from medclip_jax.errors import UserError

# name -> "module:Class"; modules are imported only when their dataset is built.
BUILDERS: dict[str, str] = {
    # Pretraining corpora (their test splits are the retrieval tasks).
    "roco": "data_prep.roco:Roco",
    "pmc_oa": "data_prep.pmc_oa:PmcOa",
    "quilt_1m": "data_prep.quilt:Quilt1M",
    "mimic_cxr": "data_prep.mimic_cxr:MimicCxr",
    # Classification (zero-shot and linear probe).
    "bach": "data_prep.pathology:Bach",
    "lc25000": "data_prep.pathology:Lc25000",
    "nct_crc_he": "data_prep.pathology:NctCrcHe",
    "patch_camelyon": "data_prep.pathology:PatchCamelyon",
    "sicapv2": "data_prep.pathology:Sicapv2",
    "ham10000": "data_prep.dermatology:Ham10000",
    "pad_ufes_20": "data_prep.dermatology:PadUfes20",
    "medmnist": "data_prep.medmnist:MedMnist",
    # VQA.
    "vqa_rad": "data_prep.vqa:VqaRad",
    "path_vqa": "data_prep.vqa:PathVqa",
}


def builder_class(name: str) -> Any:
    if name not in BUILDERS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(BUILDERS)}")
    module, _, cls = BUILDERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def config_names(cls: Any) -> list[str]:
    return [c.name for c in (cls.BUILDER_CONFIGS or [])]


def build(spec: str, manual_dir: str, data_dir: str, file_format: str = "array_record",
          max_image_side: int = 512, workers: int = 1, progress: bool = False,
          resume: bool = True, log=None) -> list[core.BuildReport]:
    """Builds ``name[@config]``; every config with raw files present when none is named;
    ``all``: `build_all` of `manual_dir`. Every config shares one pool of conversion
    processes (starting one costs about a second)."""
    kwargs = dict(file_format=file_format, max_image_side=max_image_side, workers=workers,
                  progress=progress, resume=resume, log=log)
    with core.conversion_pool(workers):
        if spec == "all":
            return build_all(manual_dir, data_dir, **kwargs)
        return build_configs(spec, manual_dir, data_dir, **kwargs)


def build_configs(spec: str, manual_dir: str, data_dir: str, file_format: str,
                  max_image_side: int, workers: int, progress: bool, resume: bool,
                  log=None) -> list[core.BuildReport]:
    """`build` of one dataset, ``name[@config]``."""
    name, _, config = spec.partition("@")
    cls = builder_class(name)
    options = core.ConversionOptions(max_image_side, workers, progress, resume)
    configs = config_names(cls)
    if config and config not in configs:
        raise UserError(f"{name}: unknown config {config!r}; choose one of "
                        f"{', '.join(configs) or '(none: the dataset has no configs)'}")
    if config or len(configs) <= 1 or not getattr(cls, "BUILD_ALL_CONFIGS", False):
        return [core.prepare(cls, manual_dir, data_dir, config or None, file_format, options)]
    reports, skipped = [], []
    for candidate in configs:
        try:
            reports.append(core.prepare(cls, manual_dir, data_dir, candidate, file_format,
                                        options))
        except core.RawMissing as e:
            skipped.append(f"{candidate} ({e})")
    if log is not None and skipped:
        log(f"{name}: skipped configs without raw files: {'; '.join(skipped)}")
    if not reports:
        raise UserError(f"{name}: no config's raw files found in {manual_dir}: "
                        f"{'; '.join(skipped)}")
    return reports


def build_all(manual_root: str, data_dir: str, log=None, **kwargs: Any
              ) -> list[core.BuildReport]:
    """Every dataset whose raw folder ``<manual_root>/<name>`` exists; lists the others. One
    pool of conversion processes serves them all."""
    present = [n for n in BUILDERS if os.path.isdir(os.path.join(manual_root, n))]
    if not present:
        raise UserError(f"{manual_root}: no dataset folder found; expected one or more of "
                        f"{', '.join(BUILDERS)} (each as its publisher ships it)")
    if log is not None:
        missing = [n for n in BUILDERS if n not in present]
        log(f"building {', '.join(present)}; no folder for {', '.join(missing) or 'none'}")
    reports = []
    with core.conversion_pool(kwargs.get("workers", 1)):
        for name in present:
            reports.extend(build(name, os.path.join(manual_root, name), data_dir, log=log,
                                 **kwargs))
    return reports


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.build",
        description="Convert a dataset folder (as its publisher ships it) to a TFDS dataset "
                    "(ArrayRecord, or TFRecord: neither needs TensorFlow).")
    parser.add_argument("name", nargs="?",
                        help="dataset[@config] (--list shows them), or 'all'")
    parser.add_argument("--manual_dir", help="the raw dataset folder")
    parser.add_argument("--data_dir", help="TFDS data_dir to write into")
    parser.add_argument("--file_format", default="array_record", choices=core.FILE_FORMATS)
    parser.add_argument("--max_image_side", type=int, default=512,
                        help="longer image side after conversion (larger images are downscaled)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="image conversion processes (default: all cores)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--no_resume", action="store_true",
                        help="do not keep converted images for resuming an interrupted build")
    parser.add_argument("--list", action="store_true", help="list datasets and configs")
    args = parser.parse_args(argv)
    if not args.list and not (args.name and args.manual_dir and args.data_dir):
        parser.error("name, --manual_dir and --data_dir are required (or --list)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from absl import logging as absl_logging
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS warns about the folder it will create
    try:
        return run(args)
    finally:  # called in-process (tests, scripts), the caller's warnings stay on
        absl_logging.set_verbosity(verbosity)


def run(args: argparse.Namespace) -> int:
    """`main` after parsing: builds what `args` names; 2 with one line on a UserError."""
    try:
        if args.list:
            for name in BUILDERS:
                configs = config_names(builder_class(name))
                print(name + (f"  configs: {', '.join(configs)}" if configs else ""))
            return 0
        start = time.perf_counter()
        options = dict(file_format=args.file_format, max_image_side=args.max_image_side,
                       workers=args.workers, progress=not args.no_progress,
                       resume=not args.no_resume,
                       log=lambda m: print(m, file=sys.stderr))
        if args.name == "all":
            reports = build_all(args.manual_dir, args.data_dir, **options)
        else:
            reports = build(args.name, args.manual_dir, args.data_dir, **options)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for report in reports:
        print(report.summary())
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
