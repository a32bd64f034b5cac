"""PMC-OA (Lin et al., "PMC-CLIP: Contrastive Language-Image Pre-training using Biomedical
Documents", MICCAI 2023): 1.6M subfigure-caption pairs from PubMed Central Open Access papers.
Subfigures were cut from compound figures by a detector; in ``pmc_oa`` the compound captions
were also divided into subcaptions (ChatGPT) and aligned with the subfigures, while
``pmc_oa_beta`` pairs every subfigure with the whole compound caption.

Raw layout (huggingface.co/datasets/axiong/pmc_oa), under manual_dir directly or below a
``pmc_oa/`` folder::

    images.zip -> caption_T060_filtered_top4_sep_v0_subfigures/PMC212319_Fig3_4.jpg ...
                  (``images/caption_T060_filtered_top4_sep_v0_subfigures/`` or a flat
                  ``images/`` folder are accepted too)
    pmc_oa.jsonl          the current release, subcaptions, no split: {"image", "caption",
                          "alignment_type", "alignment_score"}
    pmc_oa_beta.jsonl     the current release, whole compound captions, no split
    train.jsonl, valid.jsonl, test.jsonl   the first release (since struck from the dataset
                  card): the publisher's split, of whole captions, i.e. PMC-OA Beta (the authors,
                  PMC-CLIP issue #4); {"image", "caption", "pmcid", "url_name"}. PMC-CLIP's own
                  retrieval evaluation reads test.jsonl (2,000 samples of it).

Configs: both read the publisher's split files ``train/valid/test.jsonl`` when any is present
(the per-split layout this project's benchmark specifies, so the official split is used);
without them ``pmc_oa`` (default) reads ``pmc_oa.jsonl`` (subcaptions) and ``pmc_oa_beta``
reads ``pmc_oa_beta.jsonl`` (whole captions). The metadata's ``captions`` field says which.

Splits: the split files' train / valid / test become train / validation / test. A file without
split (``pmc_oa.jsonl``, ``pmc_oa_beta.jsonl``) is split here: train 70 % / validation 10 % /
test 20 % of the images, article-disjoint (all subfigures of one PMCID in one split), by
`core.group_split` with seed 0. The PMCID is the record's ``pmcid`` or the ``PMC<digits>``
prefix of the image name.

Records, one per image file (rows that name the same image are one record, so retrieval scores
every caption of an image as a positive): ``id`` (the image name), ``image``, ``caption`` (the
first caption), ``captions`` (every distinct caption of the image, in file order), ``pmcid``,
``url_name`` (the figure's name on PMC; "" when not given), and per caption (parallel to
``captions``) ``alignment_types`` and ``alignment_scores`` ("" / NaN when not given).

Rejects (with ``file:line``): lines that are not UTF-8 or not a JSON object, lines missing
``image`` or ``caption``, captions that are not strings or are empty, image names that leave
the image folder, unparsable alignment fields, rows putting an image in a second split
(``split_conflict``), rows repeating a caption their image already has (``duplicate_row``, the
detail names the first row; in the image's split), and images that are missing or corrupt. A
reject whose split cannot be known (a malformed line of a file without split) is listed under
``unassigned``. Every row read is counted, so the build summary adds up per row: rows read =
records written + rejected + rows kept as a further caption of a record.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from data_prep import core

IMAGE_FOLDER = "caption_T060_filtered_top4_sep_v0_subfigures"
IMAGE_DIRS = (IMAGE_FOLDER, os.path.join("images", IMAGE_FOLDER), "images")
SPLIT_FILES = {"train": ("train.jsonl",), "validation": ("valid.jsonl", "validation.jsonl"),
               "test": ("test.jsonl",)}
UNSPLIT_FILES = {"pmc_oa": "pmc_oa.jsonl", "pmc_oa_beta": "pmc_oa_beta.jsonl"}
FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}
SEED = 0
UNASSIGNED = "unassigned"  # split of a reject that belongs to no known split
_PMCID = re.compile(r"^(PMC\d+)(?:[_.\-]|$)")


# --------------------------------------------------------------------------------------------
# Rows (one caption each) grouped into one record per image; shared with data_prep.quilt
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ImageGroup:
    """The rows naming one image: their distinct captions, per-caption extras and where each
    caption was read, and the rows that repeated a caption (where, where it was first read)."""

    split: str
    image: str
    where: str
    captions: list[str]
    extras: list[Any]
    wheres: list[str]
    repeats: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def rows(self) -> int:
        return len(self.captions) + len(self.repeats)


class ImageGroups:
    """Caption rows grouped by image key, in order of first appearance. A row that puts an
    already seen image in another split is a ``split_conflict`` reject (an image in two splits
    would leak into retrieval); a caption the image already has is kept once, and the row that
    repeats it becomes a ``duplicate_row`` reject when the groups are added to the scan
    (`add_groups`: only then is the split of an unsplit file's image known)."""

    def __init__(self) -> None:
        self.groups: dict[str, ImageGroup] = {}

    def add(self, scan: core.Scan, key: str, split: str, image: str, where: str, caption: str,
            extra: Any = None) -> None:
        group = self.groups.get(key)
        if group is None:
            self.groups[key] = ImageGroup(split, image, where, [caption], [extra], [where])
        elif group.split != split:
            scan.reject(split, key, where, "split_conflict",
                        f"image already in split {group.split} ({group.where})")
        elif caption in group.captions:
            group.repeats.append((where, group.wheres[group.captions.index(caption)]))
        else:
            group.captions.append(caption)
            group.extras.append(extra)
            group.wheres.append(where)


def add_groups(scan: core.Scan, groups: ImageGroups, image_path: Callable[[ImageGroup], str],
               fields: Callable[[ImageGroup], dict[str, Any]]) -> None:
    """One item per image group, gathering its captions' rows, and a ``duplicate_row`` reject
    per row that repeated one of them, in the image's split."""
    for key, group in groups.groups.items():
        scan.add(core.Item(group.split, key, image_path(group), fields(group), path=group.where,
                           rows=len(group.captions)))
        for where, first in group.repeats:
            scan.reject(group.split, key, where, "duplicate_row",
                        f"same image and caption as {first}")


def safe_relative(name: str) -> bool:
    """An image name that stays inside its folder (no absolute path, no ``..``)."""
    norm = os.path.normpath(name)
    return bool(name) and not os.path.isabs(name) and norm != ".." and not norm.startswith(
        ".." + os.sep)


# --------------------------------------------------------------------------------------------
# JSON lines
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    image: str
    caption: str
    where: str
    pmcid: str
    url_name: str
    alignment_type: str
    alignment_score: float


@dataclasses.dataclass(frozen=True)
class BadRow:
    id: str
    pmcid: str
    where: str
    reason: str
    detail: str


def pmcid_of(image: str, record: dict[str, Any]) -> str:
    given = record.get("pmcid")
    if isinstance(given, str) and given.strip():
        return given.strip()
    match = _PMCID.match(os.path.basename(image))
    return match.group(1) if match else ""


def optional_text(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise core.BadText("malformed_row", f"{key} is a {type(value).__name__}, not a string")
    return value.strip()


def optional_number(record: dict[str, Any], key: str) -> float:
    value = record.get(key)
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise core.BadText("malformed_row", f"{key} is a {type(value).__name__}, not a number")
    return float(value)


def parse_line(raw: bytes, where: str) -> Row:
    """One JSON line -> `Row`, or `core.BadText` saying why it cannot be one."""
    text = core.decode_utf8(raw)
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise core.BadText("malformed_row", f"not valid JSON: {e.msg} (column {e.colno})"
                           ) from None
    if not isinstance(record, dict):
        raise core.BadText("malformed_row", f"a JSON {type(record).__name__}, not an object")
    missing = [k for k in ("image", "caption") if k not in record]
    if missing:
        raise core.BadText("malformed_row", f"missing key(s) {', '.join(missing)} "
                           f"(keys: {', '.join(record) or 'none'})")
    image, caption = record["image"], record["caption"]
    if not isinstance(image, str) or not safe_relative(image.strip()):
        raise core.BadText("malformed_row", f"image {image!r} is not a file name inside the "
                           "image folder")
    if not isinstance(caption, str):
        raise core.BadText("malformed_row", f"caption is a {type(caption).__name__}, "
                           "not a string")
    image = image.strip()
    return Row(image, core.clean_caption(caption), where, pmcid_of(image, record),
               optional_text(record, "url_name"), optional_text(record, "alignment_type"),
               optional_number(record, "alignment_score"))


def read_jsonl(path: str) -> Iterator[Row | BadRow]:
    for number, raw in core.read_lines(path):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield parse_line(raw, where)
        except core.BadText as e:
            yield BadRow(*guess_image(raw), where=where, reason=e.reason, detail=str(e))


def guess_image(raw: bytes) -> tuple[str, str]:
    """(id, PMCID) of a rejected line, as far as they can be read, for the rejects file."""
    match = re.search(rb'"image"\s*:\s*"([^"]+)"', raw)
    image = match.group(1).decode("utf-8", "replace") if match else ""
    found = _PMCID.match(os.path.basename(image))
    return image, found.group(1) if found else ""


# --------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------


def data_root(manual_dir: str) -> str:
    """manual_dir itself, or its ``pmc_oa/`` (a Hugging Face snapshot folder)."""
    names = [n for files in SPLIT_FILES.values() for n in files] + list(UNSPLIT_FILES.values())
    for candidate in (manual_dir, os.path.join(manual_dir, "pmc_oa")):
        if any(os.path.exists(os.path.join(candidate, n)) for n in names):
            return candidate
    return manual_dir


def split_files(root: str) -> dict[str, str]:
    """The publisher's split files present: {split: path}."""
    found = {}
    for split, names in SPLIT_FILES.items():
        for name in names:
            if os.path.exists(os.path.join(root, name)):
                found[split] = os.path.join(root, name)
                break
    return found


def record_fields(group: ImageGroup) -> dict[str, Any]:
    first: Row = group.extras[0]
    return {
        "caption": group.captions[0],
        "captions": group.captions,
        "pmcid": first.pmcid,
        "url_name": first.url_name,
        "alignment_types": [r.alignment_type for r in group.extras],
        "alignment_scores": [r.alignment_score for r in group.extras],
    }


class PmcOa(core.ManualImageBuilder):
    """PMC-OA: subfigures of PubMed Central Open Access papers with their (sub)captions."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="pmc_oa", description=(
            "The publisher's train/valid/test.jsonl when present, else subfigure-subcaption "
            "pairs (pmc_oa.jsonl) with an article-disjoint 70/10/20 split.")),
        tfds.core.BuilderConfig(name="pmc_oa_beta", description=(
            "Subfigure-compound caption pairs: the publisher's train/valid/test.jsonl when "
            "present, else pmc_oa_beta.jsonl with an article-disjoint 70/10/20 split.")),
    ]
    DEFAULT_CONFIG_NAME = "pmc_oa"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "the files of huggingface.co/datasets/axiong/pmc_oa: images.zip unpacked to "
        f"{IMAGE_FOLDER}/ (or images/), and train.jsonl/valid.jsonl/test.jsonl, or "
        "pmc_oa.jsonl (config pmc_oa) / pmc_oa_beta.jsonl (config pmc_oa_beta)")

    def record_features(self) -> dict[str, Any]:
        return {
            "caption": tfds.features.Text(),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "pmcid": tfds.features.Text(),
            "url_name": tfds.features.Text(),
            "alignment_types": tfds.features.Sequence(tfds.features.Text()),
            "alignment_scores": tfds.features.Sequence(tfds.features.Scalar(dtype=np.float32)),
        }

    def metadata(self) -> dict[str, Any]:
        made = (f"train {FRACTIONS['train']:.0%} / validation {FRACTIONS['validation']:.0%} / "
                f"test {FRACTIONS['test']:.0%} of the images of "
                f"{UNSPLIT_FILES[self.builder_config.name]}, article-disjoint by PMCID "
                f"(core.group_split, seed {SEED})")
        beta = self.builder_config.name == "pmc_oa_beta"
        return {
            "source": "PMC-OA (huggingface.co/datasets/axiong/pmc_oa; Lin et al., MICCAI 2023)",
            "config": self.builder_config.name,
            "captions": ("whole compound captions (split files: whole captions per the "
                         "authors, PMC-CLIP issue #4)" if beta else
                         "the split files' captions when present (whole captions per the "
                         "authors), else subcaptions"),
            "split_rule": ("train.jsonl/valid.jsonl/test.jsonl -> train/validation/test when "
                           f"present, else {made}"),
            "retrieval": "test split; every caption in `captions` is a positive of its image",
        }

    def scan(self, manual_dir: str) -> core.Scan:
        root = data_root(manual_dir)
        images_dir = core.find_first(root, IMAGE_DIRS, "the unpacked images.zip")
        scan = core.Scan()
        files = split_files(root)
        if files:
            groups = ImageGroups()
            for split, path in files.items():
                for row in read_jsonl(path):
                    scan.count_rows(split)
                    add_row(scan, groups, split, row)
        else:
            groups = self.scan_unsplit(scan, root)
        add_groups(scan, groups, lambda group: os.path.join(images_dir, group.image),
                   record_fields)
        return scan

    def scan_unsplit(self, scan: core.Scan, root: str) -> ImageGroups:
        """A file without split: rows grouped by image, then images dealt to splits by PMCID."""
        name = UNSPLIT_FILES[self.builder_config.name]
        path = os.path.join(root, name)
        if not os.path.exists(path):
            raise core.RawMissing(f"{root}: no split files and no {name} for config "
                                  f"{self.builder_config.name}; expected "
                                  f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        groups, bad = ImageGroups(), []
        for row in read_jsonl(path):
            if isinstance(row, BadRow):
                bad.append(row)
            else:
                groups.add(scan, row.image, UNASSIGNED, row.image, row.where, row.caption, row)
        keys = list(groups.groups)
        articles = [groups.groups[k].extras[0].pmcid or k for k in keys]
        assigned = core.group_split(articles, [0] * len(keys), FRACTIONS, SEED)
        by_article = dict(zip(articles, assigned))
        for key, split in zip(keys, assigned):
            groups.groups[key].split = split
            scan.count_rows(split, groups.groups[key].rows())
        for row in bad:
            split = by_article.get(row.pmcid or row.id, UNASSIGNED)
            scan.count_rows(split)
            scan.reject(split, row.id or row.where, row.where, row.reason, row.detail)
        return groups


def add_row(scan: core.Scan, groups: ImageGroups, split: str, row: Row | BadRow) -> None:
    if isinstance(row, BadRow):
        scan.reject(split, row.id or row.where, row.where, row.reason, row.detail)
    else:
        groups.add(scan, row.image, split, row.image, row.where, row.caption, row)
