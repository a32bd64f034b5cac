"""MIMIC-CXR (Johnson et al., Scientific Data 2019; MIMIC-CXR-JPG, arXiv:1901.07042): chest
radiographs of the Beth Israel Deaconess Medical Center (2011-2016) with their free-text
radiology reports, one record per image, captioned with the report's FINDINGS and IMPRESSION.

Images and tables come from MIMIC-CXR-JPG 2.0.0 / 2.1.0 (physionet.org/content/mimic-cxr-jpg),
the reports from MIMIC-CXR 2.0.0 / 2.1.0 (physionet.org/content/mimic-cxr,
``mimic-cxr-reports.zip``). manual_dir is the MIMIC-CXR-JPG folder, or a folder holding it as
``mimic-cxr-jpg/<version>/`` or ``physionet.org/files/mimic-cxr-jpg/<version>/`` (what
``wget -r`` makes)::

    physionet.org/files/
    ├── mimic-cxr-jpg/2.0.0/                   (or 2.1.0; or manual_dir itself)
    │   ├── files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg
    │   ├── mimic-cxr-2.0.0-split.csv.gz       dicom_id,study_id,subject_id,split
    │   │                                      (train | validate | test)
    │   ├── mimic-cxr-2.0.0-metadata.csv.gz    dicom_id,subject_id,study_id,...,ViewPosition,...
    │   └── mimic-cxr-2.0.0-chexpert.csv.gz    subject_id,study_id,Atelectasis,...,
    │                                          Support Devices (1.0, 0.0, -1.0 or blank)
    └── mimic-cxr/2.0.0/mimic-cxr-reports.zip  files/p10/p10000032/s50414267.txt

Each table may also be a plain ``.csv`` (or carry ``2.1.0`` in its name).

Reports (``pXX/pXXXXXXXX/sXXXXXXXX.txt``, one per study) are looked for in these folders: the
MIMIC-CXR-JPG folder, manual_dir, manual_dir's parent and, in the wget layout,
``physionet.org/files/mimic-cxr/<2.1.0|2.0.0>/``. A study's report is taken from the first
``mimic-cxr-reports.zip`` in these folders that holds it (members ``files/pXX/...``, with or
without a leading folder), else from the first tree that holds it: ``mimic-cxr-reports/files/``,
``mimic-cxr-reports/`` (the zip unpacked next to the images) or ``files/`` (the zip unpacked
into the MIMIC-CXR-JPG folder, or the MIMIC-CXR DICOM release). When no study has a report the
build stops with a one-line error naming the places looked in.

Caption. A report is cut into sections at heading lines: at the start of a line, upper-case
words (letters, spaces, ``( ) / , & -``) followed by a colon; text after the colon on the same
line belongs to the section. Heading names are normalised as in the publisher's section parser
(github.com/MIT-LCP/mimic-cxr, ``txt/section_parser.py``): IMPRESSION, CONCLUSION, FINDINGS AND
IMPRESSION, FINDINGS/IMPRESSION and misspellings (IMPRESSON, ...) are the impression; FINDINGS,
FINDING, misspellings, and headings that name the views (``PA AND LATERAL VIEWS OF THE
CHEST:``, ``CHEST, TWO VIEWS:``, ``PORTABLE AP:``) are the findings. ``findings`` and
``impression`` are the last non-empty section of each kind, whitespace collapsed, else "".

* both present: caption = findings + " " + impression (no heading words), source
  ``findings_impression``; one present: that one, source ``findings`` or ``impression``;
* neither (the fallback, recorded in ``caption_source``):
  ``full_text``       the report has no heading: all of it, without the ``FINAL REPORT``
                      title and the underscore lines that delimit addenda;
  ``last_section``    the last section, when it is not boilerplate (e.g. ADDENDUM, REPORT);
  ``last_paragraphs`` the last section is boilerplate (EXAMINATION, INDICATION, HISTORY,
                      COMPARISON, TECHNIQUE and their variants): its paragraphs after the first
                      (old reports put the reading below e.g. the HISTORY paragraph);
  ``comparison``      else the last non-empty COMPARISON section (some radiologists wrote the
                      reading there, as the publisher's create_section_files.py notes);
  otherwise the caption is empty: reject ``empty_caption``.

Rejects: a split-file row that is malformed (``malformed_row``; counted in train), has a split
other than train/validate/test (``unknown_split``; in train), has no metadata row
(``missing_metadata``), whose study has no report (``missing_report``), a report that is not
UTF-8 (``not_utf8``), an empty caption (``empty_caption``), a CheXpert value other than
1/0/-1/blank (``bad_label``), a duplicate dicom_id (``duplicate_id``), a missing or corrupt jpg
(the converter's ``missing_file`` / ``corrupt`` / ...). A study without a CheXpert row (the
publisher labelled 227,827 of the 227,835 studies) gets all-NaN labels; so do the studies of
unreadable CheXpert rows, whose line numbers are logged and kept in metadata
``chexpert_unreadable_lines``.

Split: the official one (``validate`` -> ``validation``), patient-disjoint by design.

Records: ``id`` (dicom_id), ``image``, ``caption``, ``captions`` ([caption]), ``subject_id``,
``study_id``, ``view_position`` (ViewPosition as published, "" when blank), ``findings``,
``impression``, ``caption_source``, ``chexpert`` (float32 (14,): 1 positive, 0 negative,
-1 uncertain, NaN not mentioned; order in metadata ``chexpert_labels``). Metadata ``tasks``
holds the multi-label zero-shot task ``chexpert`` for ``evals/zero_shot.py`` (13 labels: all
but No Finding; see ``ZERO_SHOT_LABELS``). Config ``frontal`` (default) keeps ViewPosition
PA or AP: other images are not items of it (not rejects); their number per split is logged
and stored in metadata ``non_frontal_skipped``. ``all_views`` keeps every image.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import zipfile
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from data_prep import core
from medclip_jax.errors import UserError

CHEXPERT_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                   "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity",
                   "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                   "Pneumothorax", "Support Devices")
CHEXPERT_VALUES = {"": math.nan, "1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0,
                   "-1.0": -1.0}
SPLIT_NAMES = {"train": "train", "validate": "validation", "test": "test"}
FRONTAL_VIEWS = ("PA", "AP")
VERSIONS = ("2.1.0", "2.0.0")

_HEADING = re.compile(r"^[ \t]*([A-Z][A-Z ()/,&-]*[A-Z)])[ \t]*:(?=\s|$)", re.MULTILINE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_ADDENDUM_RULE = re.compile(r"^[ \t]*_{10,}[ \t]*$", re.MULTILINE)
_TITLE = re.compile(r"^[ \t]*FINAL REPORT[ \t]*$", re.MULTILINE)
_REPORT_MEMBER = re.compile(r"(?:^|/)p\d\d/p(\d+)/s(\d+)\.txt$")
_ID = re.compile(r"^\d+$")
_WORD = re.compile(r"[^\W_]")

# Heading names (lower case, spaces collapsed) -> section kind.
_IMPRESSION = {"conclusion", "impresson", "imprression", "imoression", "impressoin", "imprssion",
               "impresion", "imperssion", "mpression", "impession"}
_FINDINGS = {"finding", "findins", "findindgs", "findgings", "findngs", "findnings", "finidngs"}
_BOILERPLATE = {
    "examination": "examination", "exam": "examination", "type of examination": "examination",
    "indication": "indication", "reason for examination": "indication",
    "reason for exam": "indication", "clinical indication": "indication",
    "idication": "indication", "history": "history", "clinical history": "history",
    "clinical information": "history", "patient history": "history", "pfi": "history",
    "comparison": "comparison", "comparisons": "comparison", "comparison exam": "comparison",
    "comparison film": "comparison", "reference exam": "comparison",
    "comparision": "comparison", "comparsion": "comparison", "comparrison": "comparison",
    "comparisions": "comparison", "technique": "technique",
}
_VIEW_HEADING = re.compile(
    r"chest|portable|pa and lat|lateral and pa|ap and lat|lateral and ap|frontal and|two views|"
    r"frontal view|pa view|ap view|one view|lateral view|bone window|frontal upright|"
    r"frontal semi-upright|ribs")


@dataclasses.dataclass(eq=False)
class MimicCxrConfig(tfds.core.BuilderConfig):
    views: tuple[str, ...] | None = FRONTAL_VIEWS  # None: every view


# --------------------------------------------------------------------------------------------
# Report sections
# --------------------------------------------------------------------------------------------


def section_kind(heading: str) -> str:
    """The normalised kind of a heading: impression, findings, a boilerplate kind, or the
    heading itself in lower case."""
    name = " ".join(heading.lower().split())
    if name in _IMPRESSION or "impression" in name:
        return "impression"
    if name in _FINDINGS or "findings" in name:
        return "findings"
    if name in _BOILERPLATE:
        return _BOILERPLATE[name]
    for kind in ("history", "comparison", "addendum"):
        if kind in name:
            return kind
    return "findings" if _VIEW_HEADING.search(name) else name


def split_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(text before the first heading, [(kind, raw section text)] in report order)."""
    matches = list(_HEADING.finditer(text))
    if not matches:
        return text, []
    sections = []
    for match, following in zip(matches, matches[1:] + [None]):
        end = following.start() if following else len(text)
        sections.append((section_kind(match.group(1)), text[match.end():end]))
    return text[:matches[0].start()], sections


def has_words(text: str) -> bool:
    """Whether text holds a letter or digit: de-identification leaves sections such as
    "COMPARISON: ___." that hold nothing a caption can use."""
    return _WORD.search(text) is not None


def last_of(sections: list[tuple[str, str]], kind: str) -> str:
    """The last section of `kind` that has words, whitespace collapsed ("" if none)."""
    for name, body in reversed(sections):
        if name == kind and has_words(body):
            return core.clean_text(body)
    return ""


def fallback_caption(text: str, sections: list[tuple[str, str]]) -> tuple[str, str]:
    """(caption, source) of a report with neither FINDINGS nor IMPRESSION (see the module
    docstring); the caption may be empty."""
    if not sections:
        return core.clean_text(_ADDENDUM_RULE.sub(" ", _TITLE.sub(" ", text))), "full_text"
    kind, body = sections[-1]
    if kind not in set(_BOILERPLATE.values()):
        return core.clean_text(body), "last_section"
    later = core.clean_text(" ".join(_PARAGRAPH_BREAK.split(body.strip("\n"))[1:]))
    if later:
        return later, "last_paragraphs"
    return last_of(sections, "comparison"), "comparison"


def report_fields(text: str) -> dict[str, str]:
    """findings, impression, caption and caption_source of one report (caption may be "")."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    _, sections = split_sections(text)
    findings, impression = last_of(sections, "findings"), last_of(sections, "impression")
    if findings and impression:
        caption, source = f"{findings} {impression}", "findings_impression"
    elif findings or impression:
        caption, source = findings or impression, "findings" if findings else "impression"
    else:
        caption, source = fallback_caption(text, sections)
        caption = caption if has_words(caption) else ""
    return {"caption": caption, "findings": findings, "impression": impression,
            "caption_source": source}


# --------------------------------------------------------------------------------------------
# Finding the files
# --------------------------------------------------------------------------------------------


def table_names(table: str) -> list[str]:
    return [f"mimic-cxr-{v}-{table}.csv{ext}" for v in reversed(VERSIONS) for ext in (".gz", "")]


def jpg_root(manual_dir: str) -> str:
    """The MIMIC-CXR-JPG folder: manual_dir or its ``[physionet.org/files/]mimic-cxr-jpg/<v>``."""
    candidates = [""] + [os.path.join(prefix, "mimic-cxr-jpg", v) for prefix in
                         ("", os.path.join("physionet.org", "files")) for v in VERSIONS]
    for candidate in candidates:
        folder = os.path.join(manual_dir, candidate)
        if any(os.path.exists(os.path.join(folder, n)) for n in table_names("split")):
            return folder
    raise UserError(f"{manual_dir}: no {' or '.join(table_names('split')[:2])} in it or in "
                    f"{', '.join(c for c in candidates if c)}: expected the MIMIC-CXR-JPG "
                    f"folder (files/, mimic-cxr-2.0.0-split.csv.gz, -metadata, -chexpert)")


def report_folders(root: str, manual_dir: str) -> list[str]:
    """Folders that may hold the reports, in lookup order, without repeats."""
    folders = [root, manual_dir, os.path.dirname(os.path.abspath(manual_dir))]
    version_dir = os.path.abspath(root)
    if os.path.basename(os.path.dirname(version_dir)) == "mimic-cxr-jpg":
        files_dir = os.path.dirname(os.path.dirname(version_dir))
        folders += [os.path.join(files_dir, "mimic-cxr", v) for v in VERSIONS]
    unique: dict[str, str] = {}
    for folder in folders:
        unique.setdefault(os.path.realpath(folder), folder)
    return [f for f in unique.values() if os.path.isdir(f)]


class Reports:
    """Report bytes by (subject_id, study_id), from the first source holding each."""

    def __init__(self, folders: list[str]):
        self.places: list[str] = []
        self.trees: list[str] = []
        self.zips: list[tuple[zipfile.ZipFile, dict[str, str]]] = []
        self.found = 0
        for folder in folders:
            archive = os.path.join(folder, "mimic-cxr-reports.zip")
            if os.path.isfile(archive):
                self.zips.append(open_report_zip(archive))
                self.places.append(archive)
            for tree in (os.path.join(folder, "mimic-cxr-reports", "files"),
                         os.path.join(folder, "mimic-cxr-reports"),
                         os.path.join(folder, "files")):
                if os.path.isdir(tree) and os.path.realpath(tree) not in map(
                        os.path.realpath, self.trees):
                    self.trees.append(tree)
                    self.places.append(tree)

    def read(self, subject_id: str, study_id: str) -> bytes | None:
        for archive, members in self.zips:
            if study_id in members:
                self.found += 1
                return archive.read(members[study_id])
        relative = report_path(subject_id, study_id)
        for tree in self.trees:
            path = os.path.join(tree, relative)
            if os.path.isfile(path):
                self.found += 1
                with open(path, "rb") as f:
                    return f.read()
        return None

    def close(self) -> None:
        for archive, _ in self.zips:
            archive.close()


def open_report_zip(path: str) -> tuple[zipfile.ZipFile, dict[str, str]]:
    """The zip and its report members by study id (any leading folder)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path}: cannot open the reports zip ({e}): expected MIMIC-CXR's "
                        f"mimic-cxr-reports.zip") from None
    members = {}
    for name in archive.namelist():
        match = _REPORT_MEMBER.search(name)
        if match:
            members.setdefault(match.group(2), name)
    return archive, members


def report_path(subject_id: str, study_id: str) -> str:
    return os.path.join(f"p{subject_id[:2]}", f"p{subject_id}", f"s{study_id}.txt")


def image_path(root: str, subject_id: str, study_id: str, dicom_id: str) -> str:
    return os.path.join(root, "files", f"p{subject_id[:2]}", f"p{subject_id}", f"s{study_id}",
                        f"{dicom_id}.jpg")


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def table_rows(path: str, columns: tuple[str, ...]
               ) -> Iterator[tuple[int, dict[str, str] | core.BadText]]:
    """`core.read_csv_rows`, checking the header's columns once."""
    checked = False
    for number, row in core.read_csv_rows(path):
        if not checked and isinstance(row, dict):
            core.require_columns(path, row, columns)
            checked = True
        yield number, row


def read_views(path: str) -> dict[str, str]:
    """dicom_id -> ViewPosition ("" when blank); unreadable rows are skipped (their images
    become ``missing_metadata`` rejects)."""
    return {row["dicom_id"].strip(): row["ViewPosition"].strip()
            for _, row in table_rows(path, ("dicom_id", "ViewPosition"))
            if isinstance(row, dict)}


def parse_chexpert(row: dict[str, str]) -> np.ndarray:
    """The 14 labels of a CheXpert row; raises BadText(bad_label) on a value other than
    1 / 0 / -1 / blank."""
    values = []
    for label in CHEXPERT_LABELS:
        raw = row[label].strip()
        if raw not in CHEXPERT_VALUES:
            raise core.BadText("bad_label", f"CheXpert {label!r} is {raw!r}; expected 1.0, "
                               f"0.0, -1.0 or blank")
        values.append(CHEXPERT_VALUES[raw])
    return np.asarray(values, np.float32)


def read_chexpert(path: str) -> tuple[dict[str, np.ndarray | core.BadText], list[int]]:
    """study_id -> labels (or the BadText that makes that study's images rejects), and the
    line numbers of unreadable rows (no study id to blame: their studies get NaN labels)."""
    labels: dict[str, np.ndarray | core.BadText] = {}
    unreadable = []
    for number, row in table_rows(path, ("study_id",) + CHEXPERT_LABELS):
        if isinstance(row, core.BadText):
            unreadable.append(number)
            continue
        try:
            labels[row["study_id"].strip()] = parse_chexpert(row)
        except core.BadText as e:
            labels[row["study_id"].strip()] = core.BadText(e.reason, f"{path}:{number}: {e}")
    return labels, unreadable


# --------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------

# The multi-label zero-shot task (evals/zero_shot.py, "type": "multilabel"). Scored: the 12
# findings and Support Devices. "No Finding" is left out: it is defined as the absence of the
# others, and its negative prompt ("no no finding") says nothing; its information is in the
# other labels. Support Devices stays: lines, tubes and pacemakers are visible objects that the
# prompts name well. Natural-language names are the radiology report wording (CheXpert's
# "Pleural Other" covers pleural thickening, fibrosis and calcification).
ZERO_SHOT_LABELS = tuple(label for label in CHEXPERT_LABELS if label != "No Finding")
ZERO_SHOT_NAMES = {
    "Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation", "Edema": "pulmonary edema",
    "Enlarged Cardiomediastinum": "enlarged cardiomediastinum", "Fracture": "fracture",
    "Lung Lesion": "lung lesion", "Lung Opacity": "lung opacity",
    "Pleural Effusion": "pleural effusion", "Pleural Other": "pleural thickening",
    "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax",
    "Support Devices": "support devices"}
ZERO_SHOT_POSITIVE = ("{}.", "a chest X-ray showing {}.", "findings consistent with {}.",
                      "there is evidence of {}.")
ZERO_SHOT_NEGATIVE = ("no {}.", "a chest X-ray with no {}.", "no evidence of {}.",
                      "there is no evidence of {}.")



class MimicCxr(core.ManualImageBuilder):
    """MIMIC-CXR: chest radiographs with their reports' FINDINGS and IMPRESSION as captions."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        MimicCxrConfig(name="frontal", description="Frontal images (ViewPosition PA or AP).",
                       views=FRONTAL_VIEWS),
        MimicCxrConfig(name="all_views", description="Every image (frontal, lateral, other).",
                       views=None),
    ]
    DEFAULT_CONFIG_NAME = "frontal"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "the MIMIC-CXR-JPG 2.0.0/2.1.0 folder (physionet.org/content/mimic-cxr-jpg): files/pXX/"
        "pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg and mimic-cxr-2.0.0-{split,metadata,chexpert}.csv.gz, "
        "plus MIMIC-CXR's mimic-cxr-reports.zip (physionet.org/content/mimic-cxr) in that folder "
        "or next to manual_dir (or unpacked there)")

    def record_features(self) -> dict[str, Any]:
        return {
            "caption": tfds.features.Text(),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "subject_id": tfds.features.Text(),
            "study_id": tfds.features.Text(),
            "view_position": tfds.features.Text(),
            "findings": tfds.features.Text(),
            "impression": tfds.features.Text(),
            "caption_source": tfds.features.Text(),
            "chexpert": tfds.features.Tensor(shape=(len(CHEXPERT_LABELS),), dtype=np.float32),
        }

    def metadata(self) -> dict[str, Any]:
        views = self.builder_config.views
        return {
            "source": "MIMIC-CXR-JPG 2.0.0/2.1.0 and MIMIC-CXR reports (physionet.org)",
            "citation": "Johnson et al., MIMIC-CXR, Scientific Data 6:317 (2019); "
                        "MIMIC-CXR-JPG, arXiv:1901.07042",
            "split_rule": "official: mimic-cxr-2.0.0-split.csv (validate -> validation), "
                          "patient-disjoint",
            "caption_rule": "findings + ' ' + impression of the report (the last non-empty "
                            "section of each); without either: full_text, last_section, "
                            "last_paragraphs or comparison (field caption_source)",
            "views": list(views) if views else "all",
            "chexpert_labels": list(CHEXPERT_LABELS),
            "chexpert_values": {"1": "positive", "0": "negative", "-1": "uncertain",
                                "nan": "not mentioned"},
            "retrieval": "test split; one caption per image",
            "tasks": {"chexpert": {
                "type": "multilabel", "label_field": "chexpert",
                "columns": list(CHEXPERT_LABELS), "labels": list(ZERO_SHOT_LABELS),
                "class_names": [ZERO_SHOT_NAMES[label] for label in ZERO_SHOT_LABELS],
                "positive_templates": list(ZERO_SHOT_POSITIVE),
                "negative_templates": list(ZERO_SHOT_NEGATIVE)}},
        }

    def scan(self, manual_dir: str) -> core.Scan:
        root = jpg_root(manual_dir)
        split_path = core.find_first(root, table_names("split"), "the official split file")
        views = read_views(core.find_first(root, table_names("metadata"),
                                           "the MIMIC-CXR-JPG metadata (ViewPosition) table"))
        chexpert_path = core.find_first(root, table_names("chexpert"),
                                        "the MIMIC-CXR-JPG CheXpert label table")
        labels, unreadable = read_chexpert(chexpert_path)
        if unreadable:
            self.info.metadata["chexpert_unreadable_lines"] = unreadable
            print(f"{chexpert_path}: {len(unreadable)} unreadable rows (lines "
                  f"{', '.join(map(str, unreadable[:10]))}{', ...' if len(unreadable) > 10 else ''}"
                  f"): their studies get NaN CheXpert labels", file=sys.stderr)
        reports = Reports(report_folders(root, manual_dir))
        scan = core.Scan()
        skipped = {split: 0 for split in core.SPLITS}
        try:
            studies: dict[str, dict[str, Any] | core.BadText | None] = {}
            for number, row in table_rows(split_path, ("dicom_id", "study_id", "subject_id",
                                                       "split")):
                where = f"{split_path}:{number}"
                if isinstance(row, core.BadText):
                    scan.reject("train", "", where, row.reason, str(row))
                    continue
                dicom_id, study_id, subject_id = (row[k].strip() for k in
                                                  ("dicom_id", "study_id", "subject_id"))
                split = SPLIT_NAMES.get(row["split"].strip())
                if split is None:
                    scan.reject("train", dicom_id, where, "unknown_split",
                                f"split {row['split']!r} is not train, validate or test")
                    continue
                if not (dicom_id and _ID.match(study_id) and _ID.match(subject_id)):
                    scan.reject(split, dicom_id, where, "malformed_row",
                                "expected a dicom_id and numeric study_id and subject_id")
                    continue
                if dicom_id not in views:
                    scan.reject(split, dicom_id, where, "missing_metadata",
                                "no row for this dicom_id in the metadata table")
                    continue
                if self.builder_config.views and views[dicom_id] not in self.builder_config.views:
                    skipped[split] += 1
                    continue
                if study_id not in studies:
                    studies[study_id] = study_fields(reports, subject_id, study_id,
                                                     labels.get(study_id))
                add_image(scan, split, image_path(root, subject_id, study_id, dicom_id),
                          dicom_id, subject_id, study_id, views[dicom_id], studies[study_id],
                          reports.places)
        finally:
            reports.close()
        if studies and not reports.found:
            raise UserError(f"no MIMIC-CXR report found for any of {len(studies)} studies; "
                            f"looked in: {', '.join(reports.places) or 'nothing'}. Expected "
                            f"mimic-cxr-reports.zip (files/pXX/pXXXXXXXX/sXXXXXXXX.txt) in "
                            f"{root} or next to {manual_dir}")
        self.note_skipped(skipped)
        return scan

    def note_skipped(self, skipped: dict[str, int]) -> None:
        """Images of other views are not items of this config: say how many, per split."""
        if not self.builder_config.views:
            return
        self.info.metadata["non_frontal_skipped"] = dict(skipped)
        print(f"{self.name}@{self.builder_config.name}: {sum(skipped.values())} images with "
              f"another ViewPosition than {'/'.join(self.builder_config.views)} are not items "
              f"of this config (" + ", ".join(f"{s} {n}" for s, n in skipped.items()) + ")",
              file=sys.stderr)


def add_image(scan: core.Scan, split: str, image: str, dicom_id: str, subject_id: str,
              study_id: str, view: str, study: dict[str, Any] | core.BadText | None,
              places: list[str]) -> None:
    """One image of a study: an item, or a reject when its study has no usable report."""
    if study is None:
        scan.reject(split, dicom_id, image, "missing_report",
                    f"no report {report_path(subject_id, study_id)} in "
                    f"{', '.join(places) or 'any reports folder or zip'}")
    elif isinstance(study, core.BadText):
        scan.reject(split, dicom_id, image, study.reason, str(study))
    else:
        scan.add(core.Item(split, dicom_id, image, {
            **study, "subject_id": subject_id, "study_id": study_id, "view_position": view}))


def study_fields(reports: Reports, subject_id: str, study_id: str,
                 labels: np.ndarray | core.BadText | None
                 ) -> dict[str, Any] | core.BadText | None:
    """The record fields a study's images share, a BadText saying why they are rejects, or
    None when the study has no report."""
    raw = reports.read(subject_id, study_id)
    if raw is None:
        return None
    if isinstance(labels, core.BadText):
        return labels
    try:
        fields = report_fields(core.decode_utf8(raw))
        core.clean_caption(fields["caption"])
    except core.BadText as e:
        return core.BadText(e.reason, f"report s{study_id}.txt: {e}")
    chexpert = labels if labels is not None else np.full(len(CHEXPERT_LABELS), np.nan,
                                                          np.float32)
    return {**fields, "captions": [fields["caption"]], "chexpert": chexpert}
