"""Skin-lesion classification: HAM10000 (dermoscopy) and PAD-UFES-20 (smartphone photographs).

HAM10000 (Tschandl, Rosendahl & Kittler, "The HAM10000 dataset, a large collection of
multi-source dermatoscopic images of common pigmented skin lesions", Scientific Data 2018;
Harvard Dataverse doi:10.7910/DVN/DBW86T, also on Kaggle as kmader/skin-cancer-mnist-ham10000).
Raw layout, under manual_dir::

    HAM10000_metadata.csv          lesion_id,image_id,dx,dx_type,age,sex,localization[,dataset]
                                   (Dataverse's tab-separated download, HAM10000_metadata.tab
                                   or HAM10000_metadata without extension, is read the same way)
    HAM10000_images_part_1/        ISIC_0024306.jpg ... (the two zips unpacked; Kaggle's
    HAM10000_images_part_2/        lower-case copies or loose files in manual_dir work too)
    ISIC2018_Task3_Test_Images/    optional, config official_test: the 1,511 test images
    ISIC2018_Task3_Test_GroundTruth.csv|.tab   optional: Dataverse's file in the metadata
                                   format above, or the challenge's one-hot file
                                   (image,MEL,NV,BCC,AKIEC,BKL,DF,VASC)

Images are found by file name (``<image_id>.jpg``) anywhere below manual_dir. Configs:

* ``lesion_split`` (default): HAM10000 has no official split; train 70 % / validation 10 % /
  test 20 % by `core.group_split` over ``lesion_id`` (all images of a lesion in one split),
  stratified by dx, seed 0.
* ``official_test``: test = the ISIC 2018 Task 3 test set (ground truth and images must be
  present); HAM10000 is split lesion-disjoint into train 90 % / validation 10 % the same way.

Records: ``id`` (image_id), ``image``, ``label`` / ``class_name`` / ``source_label`` (dx:
akiec, bcc, bkl, df, mel, nv, vasc), ``lesion_id``, ``dx_type`` (histo, follow_up, consensus,
confocal), ``age`` (-1 when unknown), ``sex``, ``localization``, ``dataset`` (the source
collection; "" in releases without that column).

PAD-UFES-20 (Pacheco et al., "PAD-UFES-20: a skin lesion dataset composed of patient data and
clinical images collected from smartphones", Data in Brief 2020; Mendeley Data
doi:10.17632/zr7vgbcyr2.1). Raw layout, under manual_dir (or its single subfolder that holds
metadata.csv)::

    metadata.csv     patient_id,lesion_id,smoke,...,age,...,gender,...,fitspatrick,region,
                     diameter_1,diameter_2,diagnostic,...,img_id,biopsed
    images/imgs_part_1/PAT_1516_1765_530.png ...   (images/imgs_part_{1,2,3}.zip unpacked;
    images/imgs_part_2/ ..., images/imgs_part_3/    imgs_part_N/imgs_part_N/ as on Kaggle, or
                                                    a flat images/ folder, work too)

No official split: train 70 % / validation 10 % / test 20 % by `core.group_split` over
``patient_id`` (all images of a patient in one split), stratified by diagnostic, seed 0.
Records: ``id`` (img_id without .png), ``image``, the label fields (diagnostic: ACK, BCC, MEL,
NEV, SCC — which includes Bowen's disease —, SEK), ``patient_id``, ``lesion_id``,
``biopsed``, ``age`` / ``fitzpatrick`` (-1 when unknown), ``gender``, ``region``.

For both: metadata rows that cannot be read (wrong field count, not UTF-8) are rejects of the
train split (they belong to no split; of the test split in the ISIC test file); unknown labels, missing image files and duplicate ids
are rejects of the split their row falls in. Prompt templates: ``dermatology`` from
`classification.TEMPLATES` (for PAD-UFES-20 only the clinical-photograph ones, not the
dermoscopic ones).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import math
import os
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from data_prep import classification, core
from medclip_jax.errors import UserError

SEED = 0
FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

HAM_CODES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
HAM_CLASS_NAMES = ("actinic keratosis or intraepithelial carcinoma", "basal cell carcinoma",
                   "benign keratosis-like lesion", "dermatofibroma", "melanoma",
                   "melanocytic nevus", "vascular lesion")
HAM_SOURCE_LABELS = {code: i for i, code in enumerate(HAM_CODES)}
HAM_METADATA = ("HAM10000_metadata.csv", "HAM10000_metadata.tab", "HAM10000_metadata",
                "HAM10000_metadata.txt", "HAM10000_metadata.csv.gz")
ISIC_TEST_TRUTH = ("ISIC2018_Task3_Test_GroundTruth.csv", "ISIC2018_Task3_Test_GroundTruth.tab",
                   "ISIC2018_Task3_Test_GroundTruth",
                   "ISIC2018_Task3_Test_GroundTruth/ISIC2018_Task3_Test_GroundTruth.csv")
ISIC_ONE_HOT = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
HAM_COLUMNS = ("lesion_id", "image_id", "dx")

PAD_CODES = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
PAD_CLASS_NAMES = ("actinic keratosis", "basal cell carcinoma", "melanoma", "nevus",
                   "squamous cell carcinoma", "seborrheic keratosis")
PAD_SOURCE_LABELS = {code: i for i, code in enumerate(PAD_CODES)}
PAD_COLUMNS = ("patient_id", "lesion_id", "img_id", "diagnostic")


# --------------------------------------------------------------------------------------------
# Shared reading helpers
# --------------------------------------------------------------------------------------------


def index_images(root: str) -> dict[str, str]:
    """Image file stem -> path, for every image below `root` (first in sorted order wins;
    macOS ``__MACOSX`` / ``._*`` leftovers of the zips are skipped)."""
    index: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__MACOSX")
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() in _IMAGE_EXTENSIONS and not name.startswith("._"):
                index.setdefault(stem, os.path.join(folder, name))
    return index


def require_unpacked(root: str, index: dict[str, str], archives: str) -> None:
    """A one-line error when no image is there but the publisher's zips are."""
    zips = sorted(glob.glob(os.path.join(root, "**", archives), recursive=True))
    if not index and zips:
        raise UserError(f"{root}: no image files, only {', '.join(zips)}: unzip them in place")


def delimiter_of(path: str) -> str:
    """Tab for Dataverse's .tab downloads (any extension), else comma."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        header = f.readline()
    return "\t" if b"\t" in header else ","


def read_table(scan: core.Scan, path: str, columns: tuple[str, ...], split: str = "train"
               ) -> Iterator[tuple[str, dict[str, str]]]:
    """(file:line, row) per readable row of a CSV / TSV; unreadable rows are rejects of
    `split` (rows of a file without a split: train)."""
    for number, row in core.read_csv_rows(path, delimiter_of(path)):
        where = f"{path}:{number}"
        if isinstance(row, core.BadText):
            scan.reject(split, f"{os.path.basename(path)}:{number}", where, row.reason,
                        str(row))
            continue
        core.require_columns(path, row, columns)
        yield where, {k: v.strip() for k, v in row.items()}


def number(text: str, default: float = -1.0) -> float:
    try:
        value = float(text)
    except ValueError:
        return default
    return value if math.isfinite(value) else default


@dataclasses.dataclass
class Row:
    """A metadata row on its way to an item: split decided later from `group` and `label`."""

    where: str
    item_id: str
    image_name: str
    group: str
    label: str
    fields: dict[str, Any]


def add_rows(scan: core.Scan, rows: list[Row], splits: list[str], images: dict[str, str],
             class_names: tuple[str, ...], source_labels: dict[str, int]) -> None:
    """Items of `rows` (or rejects: unknown label, no image file, duplicate id)."""
    for row, split in zip(rows, splits):
        image = images.get(os.path.splitext(row.image_name)[0])
        if image is None and row.label in source_labels:
            scan.reject(split, row.item_id, row.where, "missing_file",
                        f"no image file {row.image_name} below the raw folder")
            continue
        # An unknown label is rejected here, at its metadata row (there may be no image).
        classification.add_labelled(scan, split, row.item_id, image, image or row.where,
                                    class_names, source_labels, row.label, **row.fields)


def split_rows(rows: list[Row], fractions: dict[str, float]) -> list[str]:
    return core.group_split([r.group for r in rows], [r.label for r in rows], fractions, SEED)


def group_rule(group: str, label: str, fractions: dict[str, float]) -> str:
    shares = " / ".join(f"{k} {round(v * 100)} %" for k, v in fractions.items())
    return (f"{group}-disjoint deterministic split (core.group_split over {group}, stratified "
            f"by {label}, seed {SEED}): {shares}")


# --------------------------------------------------------------------------------------------
# HAM10000
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class HamConfig(tfds.core.BuilderConfig):
    official_test: bool = False


HAM_TRAIN_VALIDATION = {"train": 0.9, "validation": 0.1}


def ham_row(where: str, row: dict[str, str], label: str) -> Row:
    image_id = row.get("image_id") or row.get("image", "")
    lesion_id = row.get("lesion_id", "")
    return Row(where, image_id, f"{image_id}.jpg", lesion_id or image_id, label, {
        "lesion_id": lesion_id,
        "dx_type": row.get("dx_type", ""),
        "age": number(row.get("age", "")),
        "sex": row.get("sex", ""),
        "localization": row.get("localization", ""),
        "dataset": row.get("dataset", ""),
    })


def one_hot_label(row: dict[str, str]) -> str:
    """The dx code of a challenge-format row (image,MEL,NV,...: one 1.0), or the row's cells
    when it is not exactly one-hot (an unknown label then)."""
    hot = [c for c in ISIC_ONE_HOT if number(row[c], 0.0) == 1.0]
    return hot[0].lower() if len(hot) == 1 else "/".join(row[c] for c in ISIC_ONE_HOT)


def read_ham_rows(scan: core.Scan, path: str, split: str = "train") -> list[Row]:
    """Rows of HAM10000_metadata, or of the ISIC 2018 test ground truth in either format
    (unreadable rows: rejects of `split`)."""
    rows = []
    for where, row in read_table(scan, path, (), split):
        one_hot = "dx" not in row and "image" in row
        core.require_columns(path, row, ("image", *ISIC_ONE_HOT) if one_hot else HAM_COLUMNS)
        parsed = ham_row(where, row, one_hot_label(row) if one_hot else row["dx"].lower())
        if not parsed.item_id:
            scan.reject(split, where, where, "malformed_row", "empty image_id")
            continue
        rows.append(parsed)
    return rows


class Ham10000(core.ManualImageBuilder):
    """HAM10000: dermoscopic images of 7 kinds of pigmented skin lesion."""

    name = "ham10000"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        HamConfig(name="lesion_split", description="HAM10000 split lesion-disjoint 70/10/20."),
        HamConfig(name="official_test", official_test=True,
                  description="Test: ISIC 2018 Task 3 test set; HAM10000 split 90/10."),
    ]
    DEFAULT_CONFIG_NAME = "lesion_split"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "HAM10000 from Harvard Dataverse (doi:10.7910/DVN/DBW86T) or Kaggle: "
        "HAM10000_metadata.csv (or .tab) and the unzipped HAM10000_images_part_1/ and "
        "HAM10000_images_part_2/; for config official_test also ISIC2018_Task3_Test_Images/ and "
        "ISIC2018_Task3_Test_GroundTruth.csv (or .tab)")

    def record_features(self) -> dict[str, Any]:
        text = tfds.features.Text()
        return {**classification.label_features(HAM_CLASS_NAMES), "lesion_id": text,
                "dx_type": text, "age": tfds.features.Scalar(dtype=np.float32), "sex": text,
                "localization": text, "dataset": text}

    def metadata(self) -> dict[str, Any]:
        if self.builder_config.official_test:
            rule = ("test: the ISIC 2018 Task 3 test set (official ground truth); train / "
                    "validation: " + group_rule("lesion_id", "dx", HAM_TRAIN_VALIDATION))
        else:
            rule = group_rule("lesion_id", "dx", FRACTIONS)
        return classification.task_metadata(
            "diagnosis", HAM_CLASS_NAMES, classification.templates("dermatology"),
            HAM_SOURCE_LABELS, rule,
            "HAM10000 (Tschandl et al., Sci. Data 2018; doi:10.7910/DVN/DBW86T)")

    def scan(self, manual_dir: str) -> core.Scan:
        metadata = core.find_first(manual_dir, HAM_METADATA,
                                   "the HAM10000 metadata (lesion_id, image_id, dx, ...)")
        truth = (core.find_first(manual_dir, ISIC_TEST_TRUTH,
                                 "the ISIC 2018 Task 3 test ground truth (config "
                                 "official_test)") if self.builder_config.official_test else None)
        images = index_images(manual_dir)
        require_unpacked(manual_dir, images, "*images_part_*.zip")
        scan = core.Scan()
        rows = read_ham_rows(scan, metadata)
        fractions = FRACTIONS if truth is None else HAM_TRAIN_VALIDATION
        add_rows(scan, rows, split_rows(rows, fractions), images, HAM_CLASS_NAMES,
                 HAM_SOURCE_LABELS)
        if truth is not None:
            test_rows = read_ham_rows(scan, truth, "test")
            add_rows(scan, test_rows, ["test"] * len(test_rows), images, HAM_CLASS_NAMES,
                     HAM_SOURCE_LABELS)
        return scan


# --------------------------------------------------------------------------------------------
# PAD-UFES-20
# --------------------------------------------------------------------------------------------


def pad_root(manual_dir: str) -> str:
    """manual_dir, or its single subfolder holding metadata.csv (the archive's top folder)."""
    if os.path.exists(os.path.join(manual_dir, "metadata.csv")):
        return manual_dir
    nested = sorted(glob.glob(os.path.join(manual_dir, "*", "metadata.csv")))
    if len(nested) == 1:
        return os.path.dirname(nested[0])
    raise UserError(f"{manual_dir}: no metadata.csv: expected PAD-UFES-20's metadata.csv "
                    f"(patient_id, lesion_id, ..., diagnostic, ..., img_id, biopsed) and "
                    f"images/imgs_part_{{1,2,3}}/")


def pad_row(where: str, row: dict[str, str]) -> Row:
    image_name = row["img_id"]
    item_id = os.path.splitext(image_name)[0]
    group = row["patient_id"] or row["lesion_id"] or item_id
    return Row(where, item_id, image_name, group, row["diagnostic"].upper(), {
        "patient_id": row["patient_id"],
        "lesion_id": row["lesion_id"],
        "biopsed": row.get("biopsed", "").lower() == "true",
        "age": int(number(row.get("age", ""))),
        "gender": row.get("gender", ""),
        "region": row.get("region", ""),
        "fitzpatrick": int(number(row.get("fitspatrick", ""))),
    })


class PadUfes20(core.ManualImageBuilder):
    """PAD-UFES-20: smartphone photographs of 6 kinds of skin lesion, with patient data."""

    name = "pad_ufes_20"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "PAD-UFES-20 from Mendeley Data (doi:10.17632/zr7vgbcyr2.1): metadata.csv and "
        "images/ with imgs_part_1.zip, imgs_part_2.zip, imgs_part_3.zip unzipped in place")

    def record_features(self) -> dict[str, Any]:
        text, int32 = tfds.features.Text(), tfds.features.Scalar(dtype=np.int32)
        return {**classification.label_features(PAD_CLASS_NAMES), "patient_id": text,
                "lesion_id": text, "biopsed": tfds.features.Scalar(dtype=np.bool_),
                "age": int32, "gender": text, "region": text, "fitzpatrick": int32}

    def metadata(self) -> dict[str, Any]:
        clinical = [t for t in classification.templates("dermatology")
                    if "dermoscop" not in t and "dermatoscop" not in t]
        return classification.task_metadata(
            "diagnosis", PAD_CLASS_NAMES, clinical, PAD_SOURCE_LABELS,
            group_rule("patient_id", "diagnostic", FRACTIONS),
            "PAD-UFES-20 (Pacheco et al., Data in Brief 2020; doi:10.17632/zr7vgbcyr2.1)")

    def scan(self, manual_dir: str) -> core.Scan:
        root = pad_root(manual_dir)
        images = index_images(root)
        require_unpacked(root, images, "imgs_part_*.zip")
        scan = core.Scan()
        rows = []
        for where, row in read_table(scan, os.path.join(root, "metadata.csv"), PAD_COLUMNS):
            if not row["img_id"]:
                scan.reject("train", where, where, "malformed_row", "empty img_id")
                continue
            rows.append(pad_row(where, row))
        add_rows(scan, rows, split_rows(rows, FRACTIONS), images, PAD_CLASS_NAMES,
                 PAD_SOURCE_LABELS)
        return scan
