"""Quilt-1M (Ikezogwo et al., "Quilt-1M: One Million Image-Text Pairs for Histopathology",
NeurIPS 2023 Datasets & Benchmarks; QuiltNet): ~1M histopathology image-text pairs from
educational YouTube videos (subset ``quilt``), Twitter (``openpath``), PubMed papers (``pubmed``)
and LAION (``laion``).

Raw layout (github.com/wisdomikezogwo/quilt1m; the restricted-access release on Zenodo, record
8239942, with 512 px images, or the full-size Google Drive copy)::

    quilt_1M_lookup.csv    one row per image-text pair ( ``.csv.gz`` accepted too)
        ,caption,image_path,subset,split,pathology,roi_text,noisy_text,corrected_text,
        med_umls_ids,magnification,height,width
    quilt_1m/              the images, named as ``image_path`` (also accepted: ``images/``,
                           and the unpacked archives ``images_part_*/`` with or without a
                           ``quilt_1m/`` folder inside; the first folder holding a file wins)

Split: the lookup's ``split`` column has two values, ``train`` and ``val``. ``val`` is the only
held-out part of the release (~13.6K pairs), the set to score retrieval on (the paper evaluates
cross-modal retrieval on a Quilt-1M holdout), so it is written as **test**; ``train`` is train,
and there is no validation split. Another value is an ``unknown_split`` reject. To evaluate on a
different held-out list, mark its rows ``val`` in the lookup (and the rest ``train``).

Records, one per image (the ``quilt`` subset has ~1.8 texts per image; all are kept so
retrieval can score several positives): ``id`` (``image_path``), ``image``, ``caption`` (the
first), ``captions`` (every distinct caption, in file order), ``subset`` (of the first row),
``pathology`` (sub-pathology names, e.g. "Gastrointestinal", parsed from the list-like string
without eval; union over the rows), ``magnification`` (0 / 1 / 2 = the release's low / medium /
high magnification class of YouTube frames, -1 when not given) and ``umls_ids`` (the UMLS CUIs,
e.g. C0027651, found in ``med_umls_ids``; union over the rows).

Rejects (with ``file:line``): rows with the wrong number of fields, bad UTF-8, an empty caption
or image path, an unknown split, an unparsable ``pathology`` or ``magnification``; rows putting
an image in a second split (``split_conflict``); rows repeating a caption their image already
has (``duplicate_row``, the detail names the first row); missing or corrupt images. A row whose
split cannot be read is listed under ``unassigned``. Every row read is counted: rows read =
records written + rejected + rows kept as a further caption of a record.
"""

from __future__ import annotations

import ast
import glob
import math
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_prep import core
from data_prep.pmc_oa import UNASSIGNED, ImageGroup, ImageGroups, add_groups, safe_relative
from medclip_jax.errors import UserError

LOOKUP_NAMES = ("quilt_1M_lookup.csv", "quilt_1m_lookup.csv", "quilt_1M_lookup.csv.gz",
                "quilt_1m_lookup.csv.gz")
IMAGE_DIRS = ("quilt_1m", "images")
SPLIT_VALUES = {"train": "train", "val": "test"}
REQUIRED_COLUMNS = ("caption", "image_path", "split")
SUBSETS = ("quilt", "openpath", "pubmed", "laion")
_CUI = re.compile(r"\bC\d{7}\b")
_MISSING = ("", "nan", "none", "null")


# --------------------------------------------------------------------------------------------
# Reading the lookup table
# --------------------------------------------------------------------------------------------


def parse_pathology(text: str) -> list[str]:
    """``"['Gastrointestinal', 'Liver']"`` -> names; a bare name is a one-item list."""
    text = text.strip()
    if text.lower() in _MISSING:
        return []
    if not text.startswith(("[", "(")):
        return [text]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise core.BadText("malformed_row", f"pathology {text[:60]!r} is not a list") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise core.BadText("malformed_row", f"pathology {text[:60]!r} is not a list of names")
    return [v.strip() for v in value if v.strip()]


def parse_magnification(text: str) -> int:
    """``"0.0"`` / ``"1.0"`` / ``"2.0"`` -> 0 / 1 / 2; empty (non-YouTube subsets) -> -1."""
    text = text.strip()
    if text.lower() in _MISSING:
        return -1
    try:
        value = float(text)
    except ValueError:
        raise core.BadText("malformed_row", f"magnification {text[:20]!r} is not a number"
                           ) from None
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise core.BadText("malformed_row", f"magnification {text!r} is not a class 0, 1, 2")
    return int(value)


def parse_cuis(text: str) -> list[str]:
    """The UMLS CUIs in ``med_umls_ids`` (a python-literal list of entity dicts), in order,
    each once; read by pattern, so no eval and no failure on an odd structure."""
    return list(dict.fromkeys(_CUI.findall(text)))


def union(lists: list[list[str]]) -> list[str]:
    return list(dict.fromkeys(v for values in lists for v in values))


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def image_folders(root: str) -> list[str]:
    """Every folder that may hold images, in lookup order."""
    folders = [os.path.join(root, d) for d in IMAGE_DIRS if os.path.isdir(os.path.join(root, d))]
    for part in sorted(glob.glob(os.path.join(root, "images_part_*"))):
        inner = os.path.join(part, "quilt_1m")
        if os.path.isdir(inner):
            folders.append(inner)
        elif os.path.isdir(part):
            folders.append(part)
    if not folders:
        raise UserError(f"{root}: no image folder: expected the unpacked images as "
                        f"{' or '.join(d + '/' for d in IMAGE_DIRS)} or images_part_*/")
    return folders


class ImageFinder:
    """Path of an image name: joined directly with a single folder, else looked up in a
    listing of every folder (a stat per image per folder would be millions of calls)."""

    def __init__(self, folders: list[str]):
        self.folders = folders
        self.index: dict[str, str] | None = None

    def __call__(self, name: str) -> str:
        if len(self.folders) == 1:
            return os.path.join(self.folders[0], name)
        if self.index is None:
            self.index = {}
            for folder in reversed(self.folders):  # earlier folders win
                with os.scandir(folder) as entries:
                    self.index.update((e.name, folder) for e in entries)
        top = name.split(os.sep, 1)[0]  # the entry of a folder that holds this name
        return os.path.join(self.index.get(top, self.folders[0]), name)


# --------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------


def printable(text: str) -> str:
    """`text` with undecodable bytes replaced, fit for the rejects file."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def parse_row(row: dict[str, str]) -> tuple[str, str, str, dict[str, Any]]:
    """(split, image name, caption, metadata) of a lookup row, or `core.BadText`."""
    core.check_utf8(row)
    image = row["image_path"].strip()
    if not safe_relative(image):
        raise core.BadText("malformed_row", f"image_path {image!r} is not a file name")
    value = row["split"].strip().lower()
    if value not in SPLIT_VALUES:
        raise core.BadText("unknown_split", f"split {row['split']!r}; expected one of "
                           f"{', '.join(SPLIT_VALUES)}")
    caption = core.clean_caption(row["caption"])
    return SPLIT_VALUES[value], image, caption, {
        "subset": row.get("subset", "").strip(),
        "pathology": parse_pathology(row.get("pathology", "")),
        "magnification": parse_magnification(row.get("magnification", "")),
        "umls_ids": parse_cuis(row.get("med_umls_ids", "")),
    }


def record_fields(group: ImageGroup) -> dict[str, Any]:
    first = group.extras[0]
    return {
        "caption": group.captions[0],
        "captions": group.captions,
        "subset": first["subset"],
        "pathology": union([e["pathology"] for e in group.extras]),
        "magnification": first["magnification"],
        "umls_ids": union([e["umls_ids"] for e in group.extras]),
    }


def reject_split(row: dict[str, str] | core.BadText) -> str:
    """The split a rejected row belongs to, when its split column can be read."""
    if isinstance(row, dict):
        return SPLIT_VALUES.get(row.get("split", "").strip().lower(), UNASSIGNED)
    return UNASSIGNED


class Quilt1M(core.ManualImageBuilder):
    """Quilt-1M: histopathology images (YouTube, Twitter, PubMed, LAION) with their captions."""

    name = "quilt_1m"  # the registry's name (TFDS would derive "quilt1_m")
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "the Quilt-1M release (github.com/wisdomikezogwo/quilt1m, Zenodo record 8239942): "
        "quilt_1M_lookup.csv and the images unpacked to quilt_1m/")

    def record_features(self) -> dict[str, Any]:
        return {
            "caption": tfds.features.Text(),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "subset": tfds.features.Text(),
            "pathology": tfds.features.Sequence(tfds.features.Text()),
            "magnification": tfds.features.Scalar(dtype=np.int32),
            "umls_ids": tfds.features.Sequence(tfds.features.Text()),
        }

    def metadata(self) -> dict[str, Any]:
        return {
            "source": "Quilt-1M (github.com/wisdomikezogwo/quilt1m; Ikezogwo et al., NeurIPS "
                      "2023)",
            "split_rule": "the lookup's split column: train -> train, val (the release's "
                          "held-out set) -> test; no validation split",
            "retrieval": "test split; every caption in `captions` is a positive of its image",
            "subsets": list(SUBSETS),
            "magnification": {"-1": "not given", "0": "low", "1": "medium", "2": "high"},
        }

    def scan(self, manual_dir: str) -> core.Scan:
        lookup = core.find_first(manual_dir, LOOKUP_NAMES, "the Quilt-1M lookup table")
        find_image = ImageFinder(image_folders(manual_dir))
        scan, groups = core.Scan(), ImageGroups()
        for number, row in core.read_csv_rows(
                lookup, required=REQUIRED_COLUMNS, keep_undecodable=True):
            where = f"{lookup}:{number}"
            try:
                if isinstance(row, core.BadText):
                    raise row
                split, image, caption, extra = parse_row(row)
            except core.BadText as e:
                item_id = printable(row["image_path"].strip()) if isinstance(row, dict) else ""
                scan.count_rows(reject_split(row))
                scan.reject(reject_split(row), item_id or where, where, e.reason, str(e))
                continue
            scan.count_rows(split)
            groups.add(scan, image, split, find_image(image), where, caption, extra)
        add_groups(scan, groups, lambda group: group.image, record_fields)
        return scan
