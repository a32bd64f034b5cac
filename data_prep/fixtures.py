"""Miniature raw releases of every `data_prep.build.BUILDERS` dataset, each in its publisher's
layout, so the whole benchmark can be rehearsed (fixtures -> ``data_prep.build all`` ->
training -> every evaluation -> report) in minutes, and so builder tests share one way of
writing fixture images.

    python -m data_prep.fixtures --out RAW [--seed N] [--roco_image_names roco_id|pmc] \
        [--planted planted.json]

`write_release(root, seed)` writes ``root/<builder name>/`` for every builder: the folder and
file names, table columns and file formats (CSV, gzipped CSV, JSON lines, JSON, xlsx, HDF5,
npz, pickle, zip) are the publisher's, as each builder's docstring describes them. Sizes are
as small as lets every evaluation produce a number: 24-40 px images (one larger ROCO figure
to be downscaled, 96 px PatchCamelyon patches, 28 px MedMNIST v2 arrays); every class at least twice in each classification split;
at least 8 test records per image-text corpus, some records sharing one caption (MIMIC-CXR,
ROCO, PMC-OA); CheXpert positives, negatives, uncertain and blank values in MIMIC-CXR's
test split; closed and open VQA questions in train and test, test answers seen in train.

Every release also holds bad items of each kind its builder rejects (corrupt, unreadable,
empty or missing images, empty captions, malformed rows, unknown labels, duplicate ids, ...).
`write_release` returns how many it planted, per build name (``name`` or ``name@config``,
as `core.BuildReport.dataset` spells it) and reject reason, for comparison with the build's
``rejects.jsonl``. The counts are for the configs ``data_prep.build all`` builds.

Deterministic: the file names, ids, labels and splits do not depend on `seed` (so every class
lands in every split whatever the seed); pixels and caption wording do. No network.

The image helpers (`image_bytes`, `write_image`, `GOOD_KINDS`, `BAD_KINDS`) are also what the
builder tests write their fixtures with.
"""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
import io
import json
import os
import pickle
import shutil
import sys
import time
import zipfile
import zlib
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

Planted = dict[str, collections.Counter]

# --------------------------------------------------------------------------------------------
# Fixture images
# --------------------------------------------------------------------------------------------

# Kinds that convert (awkward modes and sizes the converter normalises) and kinds that are
# rejected, with the converter's reason. `image_bytes` also makes plain "grey_jpeg" and
# "rgb_png" images.
GOOD_KINDS = ("rgb_jpeg", "grey_png", "png16", "cmyk_jpeg", "rgba_png", "palette_png", "tiff",
              "large_jpeg")
BAD_KINDS = {"truncated_jpeg": "corrupt", "garbage": "unreadable", "empty": "empty_file"}
MISSING = "missing_file"  # the converter's reason for an image file that is not there


def pixels(seed: int, size: tuple[int, int] = (24, 20), channels: int = 3) -> np.ndarray:
    """Random uint8 pixels, (height, width[, channels]) for a (width, height) `size`."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((channels,) if channels > 1 else ())
    return rng.integers(0, 256, shape, dtype=np.uint8)


def image_bytes(kind: str, seed: int = 0, size: tuple[int, int] = (24, 20)) -> bytes:
    """Encoded bytes of one fixture image of `kind` (see GOOD_KINDS / BAD_KINDS)."""
    out = io.BytesIO()
    if kind == "rgb_jpeg":
        Image.fromarray(pixels(seed, size)).save(out, format="JPEG", quality=90)
    elif kind == "grey_jpeg":
        Image.fromarray(pixels(seed, size, 1), "L").save(out, format="JPEG", quality=90)
    elif kind == "large_jpeg":
        Image.fromarray(pixels(seed, (size[0] * 8, size[1] * 8))).save(out, format="JPEG")
    elif kind == "rgb_png":
        Image.fromarray(pixels(seed, size)).save(out, format="PNG")
    elif kind == "grey_png":
        Image.fromarray(pixels(seed, size, 1), "L").save(out, format="PNG")
    elif kind == "png16":
        Image.fromarray(pixels(seed, size, 1).astype(np.uint16) * 200).save(out, format="PNG")
    elif kind == "cmyk_jpeg":
        Image.fromarray(pixels(seed, size)).convert("CMYK").save(out, format="JPEG")
    elif kind == "rgba_png":
        Image.fromarray(pixels(seed, size, 4), "RGBA").save(out, format="PNG")
    elif kind == "palette_png":
        Image.fromarray(pixels(seed, size)).convert("P").save(out, format="PNG")
    elif kind == "tiff":
        Image.fromarray(pixels(seed, size)).save(out, format="TIFF")
    elif kind == "truncated_jpeg":
        Image.fromarray(pixels(seed, size)).save(out, format="JPEG")
        return out.getvalue()[: len(out.getvalue()) // 2]
    elif kind == "garbage":
        return b"this is not an image" * 4
    elif kind == "empty":
        return b""
    else:
        raise ValueError(kind)
    return out.getvalue()


def write_image(path: str, kind: str = "rgb_jpeg", seed: int = 0,
                size: tuple[int, int] = (24, 20)) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(image_bytes(kind, seed, size))
    return path


# --------------------------------------------------------------------------------------------
# Small writers shared by the releases
# --------------------------------------------------------------------------------------------


def sub_seed(seed: int, *parts: Any) -> int:
    """A stable per-item seed: the same (seed, parts) give the same pixels in every run."""
    return zlib.crc32("/".join(map(str, (seed, *parts))).encode())


def hex_id(*parts: Any, length: int = 8) -> str:
    """Stable hex digits for publisher ids that look random (MIMIC dicom ids, Quilt names).
    Not seeded: ids decide splits, which must not move with the seed."""
    digits = "".join(f"{sub_seed(k, *parts):08x}" for k in range(-(-length // 8)))
    return digits[:length]


def write_bytes(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]], delimiter: str = ",") -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def write_xlsx(path: str, header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """A one-sheet workbook, as pandas' ``to_excel`` writes one (header row first)."""
    import openpyxl
    os.makedirs(os.path.dirname(path), exist_ok=True)
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(list(header))
    for row in rows:
        sheet.append(list(row))
    workbook.save(path)
    return path


def write_h5(path: str, name: str, array: np.ndarray) -> str:
    """An HDF5 file holding one contiguous dataset, gzipped as the PCam release ships it."""
    import h5py
    raw = io.BytesIO()
    with h5py.File(raw, "w") as f:
        f.create_dataset(name, data=array)
    return write_bytes(path, gzip.compress(raw.getvalue(), mtime=0))


def pick(seed: int, options: Sequence[Any], *parts: Any) -> Any:
    """One of `options`, chosen by (seed, parts): caption wording that varies with the seed."""
    return options[sub_seed(seed, *parts) % len(options)]


def add(planted: Planted, dataset: str, reason: str, count: int = 1) -> None:
    planted.setdefault(dataset, collections.Counter())[reason] += count


# --------------------------------------------------------------------------------------------
# ROCO: the roco-dataset repository's data/ after scripts/fetch.py
# --------------------------------------------------------------------------------------------

ROCO_MODALITIES = ("Axial CT", "Coronal CT", "Contrast-enhanced CT", "Sagittal T2-weighted MRI",
                   "Axial T1-weighted MRI", "Ultrasound", "Chest X-ray", "Plain radiograph",
                   "Digital subtraction angiography", "PET-CT")
ROCO_FINDINGS = ("a hypodense lesion", "a well-defined cystic mass", "free fluid",
                 "a displaced fracture", "an enhancing nodule", "diffuse wall thickening",
                 "a calcified mass", "an air-fluid level")
ROCO_PLACES = ("in the right hepatic lobe", "of the left kidney", "in the pelvis",
               "of the distal radius", "in the right upper lobe", "of the pancreatic head",
               "in the posterior fossa", "of the thoracic aorta")
ROCO_SHARED_CAPTION = "Chest X-ray showing no abnormality."


def roco_caption(seed: int, n: int) -> str:
    return (f"{pick(seed, ROCO_MODALITIES, 'roco', n, 'm')} showing "
            f"{pick(seed, ROCO_FINDINGS, 'roco', n, 'f')} "
            f"{pick(seed, ROCO_PLACES, 'roco', n, 'p')} (arrow, case {n}).")


def roco_split(folder: str, rows: list[tuple[str, bytes, str | None]], seed: int,
               image_names: str, extra_lines: bytes = b"") -> None:
    """One {split}/{subset}/ folder. rows: (ROCO id, caption bytes, image kind or None for a
    file fetch.py did not get); the files are named as `image_names` says."""
    captions, dlinks, keywords, semtypes, cuis = [], [], [], [], []
    for roco_id, caption, kind in rows:
        number = int(roco_id.split("_")[1])
        pmcid, name = f"PMC{3000000 + number}", f"JRCR-{number % 97}-{number}-g001.jpg"
        captions.append(roco_id.encode() + b"\t " + caption)
        dlinks.append(f"{roco_id}\twget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/"
                      f"{hex_id('a', pmcid, length=2)}/{hex_id('b', pmcid, length=2)}/{pmcid}"
                      f".tar.gz -P /path/to/Dir\t{name}".encode())
        keywords.append(f"{roco_id}\t\tlesion\tradiograph".encode())
        semtypes.append(f"{roco_id}\t\tT060\tDiagnostic Procedure\tT033\tFinding".encode())
        cuis.append(f"{roco_id}\t\tC0040405\tX-Ray Computed Tomography".encode())
        file_name = f"{roco_id}.jpg" if image_names == "roco_id" else f"{pmcid}_{name}"
        if kind is not None:
            write_image(os.path.join(folder, "images", file_name), kind,
                        sub_seed(seed, "roco", roco_id), (36, 28))
    for stem, lines in (("captions", captions), ("dlinks", dlinks), ("keywords", keywords),
                        ("semtypes", semtypes), ("cuis", cuis)):
        tail = extra_lines if stem == "captions" else b""
        write_bytes(os.path.join(folder, f"{stem}.txt"), b"\n".join(lines) + b"\n" + tail)


def write_roco(root: str, seed: int, image_names: str = "roco_id") -> Planted:
    """``data/{train,validation,test}/{radiology,non-radiology}/`` with captions.txt,
    dlinks.txt, keywords.txt, semtypes.txt, cuis.txt and images/. `image_names`:
    ``roco_id`` (fetch.py since January 2022: ``images/<ROCO id>.jpg``) or ``pmc`` (older
    copies: ``images/<PMCID>_<name in dlinks.txt>``)."""
    if image_names not in ("roco_id", "pmc"):
        raise ValueError(f"image_names must be roco_id or pmc, got {image_names!r}")
    planted: Planted = {}
    name, kinds = "roco@radiology", ("rgb_jpeg", "grey_jpeg", "cmyk_jpeg")
    counter = iter(range(20, 10_000))

    def rows(count: int, subset: str, shared: int = 0) -> list[tuple[str, bytes, str | None]]:
        out = []
        for i in range(count):
            n = next(counter)
            caption = ROCO_SHARED_CAPTION if i < shared else roco_caption(seed, n)
            if subset == "non-radiology":
                caption = f"Clinical photograph of the lesion before surgery (case {n})."
            out.append((f"ROCO_{n:05d}", caption.encode(), kinds[i % len(kinds)]))
        return out

    data = os.path.join(root, "data")
    train = rows(16, "radiology", shared=3)
    train[3] = (*train[3][:2], "large_jpeg")  # a figure the build downscales
    train += [(f"ROCO_{next(counter):05d}", b"Axial CT of the chest.", kind)
              for kind in BAD_KINDS]
    train += [(f"ROCO_{next(counter):05d}", b"A figure fetch.py could not download.", None),
              (f"ROCO_{next(counter):05d}", b"   ", "rgb_jpeg"),
              (f"ROCO_{next(counter):05d}", b"Caf\xe9-au-lait spots on MRI.", "rgb_jpeg"),
              (train[0][0], b"A second caption line for one id.", "rgb_jpeg")]
    for reason in list(BAD_KINDS.values()) + [MISSING, "empty_caption", "not_utf8",
                                              "duplicate_id", "malformed_row"]:
        add(planted, name, reason)
    roco_split(os.path.join(data, "train", "radiology"), train, seed, image_names,
               extra_lines=b"a line without a tab\n")
    roco_split(os.path.join(data, "validation", "radiology"), rows(6, "radiology"), seed,
               image_names)
    test = rows(10, "radiology", shared=2)
    test.append((f"ROCO_{next(counter):05d}", b"Ultrasound of the thyroid.", "truncated_jpeg"))
    add(planted, name, "corrupt")
    roco_split(os.path.join(data, "test", "radiology"), test, seed, image_names)
    for split, count in (("train", 3), ("validation", 2), ("test", 3)):
        roco_split(os.path.join(data, split, "non-radiology"), rows(count, "non-radiology"),
                   seed, image_names)
    return planted


# --------------------------------------------------------------------------------------------
# PMC-OA: huggingface.co/datasets/axiong/pmc_oa (the current, unsplit release)
# --------------------------------------------------------------------------------------------

PMC_IMAGES = "caption_T060_filtered_top4_sep_v0_subfigures"
PMC_STAINS = ("H&E staining", "Immunohistochemistry for Ki-67", "Masson trichrome staining",
              "Confocal microscopy", "Western blot", "Fluorescence microscopy")
PMC_SUBJECTS = ("of the tumour margin", "of liver sections", "of the infarct zone",
                "of transfected cells", "of the control group", "of kidney biopsies")
PMC_SHARED_CAPTION = "Scale bar, 50 um."


def pmc_line(image: str, caption: str, **extra: Any) -> bytes:
    return json.dumps({"image": image, "caption": caption, **extra}).encode()


def write_pmc_oa(root: str, seed: int) -> Planted:
    """``pmc_oa.jsonl`` (subcaptions) and ``pmc_oa_beta.jsonl`` (compound captions), no split,
    images.zip unpacked to ``caption_T060_filtered_top4_sep_v0_subfigures/``."""
    planted: Planted = {}
    name, images = "pmc_oa@pmc_oa", os.path.join(root, PMC_IMAGES)
    lines, beta = [], []
    for article in range(24):
        pmcid = f"PMC{4100000 + 37 * article}"
        for fig in range(2):
            image = f"{pmcid}_Fig{1 + article % 4}_{fig}.jpg"
            write_image(os.path.join(images, image), "rgb_jpeg",
                        sub_seed(seed, "pmc", image), (32, 26 + 4 * fig))
            shared = article % 3 == 0 and fig == 1
            caption = (PMC_SHARED_CAPTION if shared else
                       f"({'ab'[fig]}) {pick(seed, PMC_STAINS, image, 's')} "
                       f"{pick(seed, PMC_SUBJECTS, image, 'o')}, panel {article}.{fig}.")
            lines.append(pmc_line(image, caption, alignment_type="ocr",
                                  alignment_score=round(0.5 + 0.02 * article, 3)))
            beta.append(pmc_line(image, f"Figure {1 + article % 4} of article {article}: "
                                        f"(a) overview; (b) detail. Scale bar, 50 um."))
        if article % 5 == 0:  # a second subcaption row for one subfigure: one record, 2 captions
            lines.append(pmc_line(f"{pmcid}_Fig{1 + article % 4}_0.jpg",
                                  f"Magnified view of panel {article}.0."))
    for i, kind in enumerate(BAD_KINDS):
        image = f"PMC{4200000 + i}_Fig1_0.jpg"
        write_image(os.path.join(images, image), kind, sub_seed(seed, "pmc", image))
        lines.append(pmc_line(image, "A subfigure whose file is broken."))
        add(planted, name, BAD_KINDS[kind])
    lines += [pmc_line("PMC4300000_Fig2_1.jpg", "A subfigure that was not extracted."),
              pmc_line("PMC4300001_Fig1_0.jpg", "   "),
              b'{"image": "PMC4300002_Fig1_0.jpg", "caption": "Caf\xe9 au lait."}',
              b'{"image": "PMC4300003_Fig1_0.jpg", "caption": "cut short',
              json.dumps({"image": "PMC4300004_Fig1_0.jpg", "caption": 17}).encode(),
              pmc_line("../PMC4300005_Fig1_0.jpg", "A name outside the image folder.")]
    for reason, count in ((MISSING, 1), ("empty_caption", 1), ("not_utf8", 1),
                          ("malformed_row", 3)):
        add(planted, name, reason, count)
    write_bytes(os.path.join(root, "pmc_oa.jsonl"), b"\n".join(lines) + b"\n")
    write_bytes(os.path.join(root, "pmc_oa_beta.jsonl"), b"\n".join(beta) + b"\n")
    return planted


# --------------------------------------------------------------------------------------------
# Quilt-1M: quilt_1M_lookup.csv and quilt_1m/ (Zenodo record 8239942)
# --------------------------------------------------------------------------------------------

QUILT_HEADER = ("", "caption", "image_path", "subset", "split", "pathology", "roi_text",
                "noisy_text", "corrected_text", "med_umls_ids", "magnification", "height",
                "width")
QUILT_TEXTS = ("Here we see sheets of atypical lymphocytes", "This shows a glandular pattern",
               "Notice the keratin pearls", "These are granulomas with giant cells",
               "You can see hepatocytes with steatosis", "There is necrosis in the centre")
QUILT_ORGANS = (("Hematopathology", "in this lymph node."), ("Gastrointestinal", "in the colon."),
                ("Dermatopathology", "in the skin."), ("Pulmonary", "in the lung."),
                ("Hepatobiliary", "in the liver."), ("Bone", "in the marrow."))
QUILT_UMLS = "[[{'entity': 'lymphocytes', 'umls_id': 'C0024264'}]]"


def quilt_row(index: int, image: str, caption: str, split: str, subset: str = "quilt",
              pathology: str = "['Hematopathology']", magnification: str = "1.0"
              ) -> list[str]:
    return [str(index), caption, image, subset, split, pathology, "['lymphocytes']",
            "so here we see the " + caption.lower(), caption, QUILT_UMLS, magnification,
            "512", "512"]


def quilt_image_name(i: int) -> str:
    """``<video id>_image_<uuid>.jpg``, the release's name of a YouTube frame."""
    u = hex_id("quilt", i, length=32)
    return (f"{hex_id('video', i % 7, length=11)}_image_"
            f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}.jpg")


def write_quilt(root: str, seed: int) -> Planted:
    """``quilt_1M_lookup.csv`` (pandas-written, unnamed index column) and ``quilt_1m/``."""
    planted: Planted = {}
    name, images = "quilt_1m", os.path.join(root, "quilt_1m")
    rows: list[list[str]] = []

    def image(i: int, kind: str = "rgb_jpeg") -> str:
        file_name = quilt_image_name(i)
        if kind != MISSING:
            write_image(os.path.join(images, file_name), kind,
                        sub_seed(seed, "quilt", i), (32, 32))
        return file_name

    for i in range(30):
        split = "val" if i % 3 == 0 else "train"
        organ, place = QUILT_ORGANS[i % len(QUILT_ORGANS)]
        caption = f"{pick(seed, QUILT_TEXTS, 'quilt', i)} {place}"
        subset = ("quilt", "quilt", "openpath", "pubmed", "laion")[i % 5]
        path = image(i)
        rows.append(quilt_row(len(rows), path, caption, split, subset, f"['{organ}']",
                              "" if subset != "quilt" else f"{i % 3}.0"))
        if i % 4 == 1:  # the YouTube subset has ~1.8 texts per image
            rows.append(quilt_row(len(rows), path, f"At higher power, {caption.lower()}",
                                  split, subset, f"['{organ}']"))
    conflict = rows[1][2]  # a train image named again by a val row
    bad = [(image(100, "truncated_jpeg"), "Broken frame.", "train", {}, "corrupt"),
           (image(101, MISSING), "A frame that was never extracted.", "val", {}, MISSING),
           (image(102), "", "train", {}, "empty_caption"),
           (image(103), "An unknown split.", "holdout", {}, "unknown_split"),
           (image(104), "Bad pathology.", "train", {"pathology": "['Renal'"}, "malformed_row"),
           (image(105), "Bad magnification.", "train", {"magnification": "high"},
            "malformed_row"),
           (conflict, "The same frame again.", "val", {}, "split_conflict")]
    for path, caption, split, extra, reason in bad:
        rows.append(quilt_row(len(rows), path, caption, split, **extra))
        add(planted, name, reason)
    text = csv_text(QUILT_HEADER, rows).encode()
    text += (f"{len(rows)},only three,fields\n".encode() +
             f'{len(rows) + 1},"Caf\xe9 au lait",{image(106)},quilt,train,[],[],x,x,[],0.0,'
             f'512,512\n'.encode("latin-1"))
    add(planted, name, "malformed_row")
    add(planted, name, "not_utf8")
    write_bytes(os.path.join(root, "quilt_1M_lookup.csv"), text)
    return planted


# --------------------------------------------------------------------------------------------
# MIMIC-CXR: MIMIC-CXR-JPG 2.0.0 and MIMIC-CXR's reports zip, as `wget -r` lays them out
# --------------------------------------------------------------------------------------------

CHEXPERT_COLUMNS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                    "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity",
                    "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                    "Pneumothorax", "Support Devices")
CHEXPERT_CYCLE = ("1.0", "0.0", "-1.0", "", "1.0", "0.0")
MIMIC_SHARED_IMPRESSION = "No acute cardiopulmonary process."
MIMIC_FINDINGS = ("There is a small left pleural effusion with adjacent atelectasis.",
                  "Moderate cardiomegaly with mild pulmonary vascular congestion.",
                  "Right lower lobe opacity concerning for pneumonia.",
                  "Endotracheal tube terminates 4 cm above the carina.",
                  "Small right apical pneumothorax.", "Lungs are hyperinflated but clear.")
MIMIC_IMPRESSIONS = ("Small left effusion.", "Cardiomegaly and mild edema.",
                     "Right lower lobe pneumonia.", "Lines and tubes as described.",
                     "Small right pneumothorax.", "No pneumonia.")
MIMIC_META = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
              "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
              "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
              "PatientOrientationCodeSequence_CodeMeaning")


def mimic_report(seed: int, study: str, kind: str) -> bytes:
    """A report as the publisher writes them; `kind`: findings (FINDINGS and IMPRESSION),
    impression (only the shared "no acute process" reading), boilerplate (EXAMINATION and
    INDICATION only: an empty caption) or latin1 (not UTF-8)."""
    title = " " * 33 + "FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  ___ "
    head = (title + "year old with cough\n \n TECHNIQUE:  Chest PA and lateral\n \n "
            "COMPARISON:  ___\n \n")
    if kind == "impression":
        return (head + f" IMPRESSION: \n \n {MIMIC_SHARED_IMPRESSION}\n").encode()
    if kind == "boilerplate":
        return (title + "year old with cough\n").encode()
    if kind == "latin1":
        return head.encode() + b" IMPRESSION:  Caf\xe9 lungs.\n"
    n = sub_seed(seed, "mimic", study)
    return (head + f" FINDINGS: \n \n {MIMIC_FINDINGS[n % 6]}\n \n IMPRESSION: \n \n "
            f"{MIMIC_IMPRESSIONS[n % 6]}\n").encode()


def write_mimic_cxr(root: str, seed: int) -> Planted:
    """``physionet.org/files/mimic-cxr-jpg/2.0.0/`` (files/pXX/pXXXXXXXX/sXXXXXXXX/*.jpg,
    mimic-cxr-2.0.0-{split,metadata,chexpert}.csv.gz) and
    ``physionet.org/files/mimic-cxr/2.0.0/mimic-cxr-reports.zip``."""
    planted: Planted = {}
    name = "mimic_cxr@frontal"
    jpg = os.path.join(root, "physionet.org", "files", "mimic-cxr-jpg", "2.0.0")
    split_rows: list[list[str]] = []
    meta_rows: list[list[str]] = []
    chexpert_rows: list[list[str]] = []
    reports: dict[str, bytes] = {}
    studies = iter(range(50_000_000, 60_000_000, 7919))

    def image(subject: str, study: str, split: str, view: str, kind: str = "grey_jpeg",
              meta: bool = True) -> str:
        dicom = "-".join(hex_id("dicom", study, view, len(split_rows), k) for k in range(5))
        split_rows.append([dicom, study, subject, split])
        if meta:
            meta_rows.append([dicom, subject, study, "CHEST (PA AND LAT)", view, "36", "32",
                              "21800506", "213014.531", "CHEST (PA AND LAT)",
                              "postero-anterior" if view == "PA" else view.lower(), "Erect"])
        if kind != MISSING:
            path = os.path.join(jpg, "files", f"p{subject[:2]}", f"p{subject}", f"s{study}",
                                f"{dicom}.jpg")
            write_image(path, kind, sub_seed(seed, "mimic", dicom), (32, 36))
        return dicom

    def study(subject: str, split: str, views: Sequence[str], report: str = "findings",
              labels: Sequence[str] | None = None, has_report: bool = True) -> str:
        study_id = str(next(studies))
        index = len(chexpert_rows)
        values = labels or [CHEXPERT_CYCLE[(index + j) % len(CHEXPERT_CYCLE)]
                            for j in range(len(CHEXPERT_COLUMNS))]
        chexpert_rows.append([subject, study_id, *values])
        if has_report:
            reports[f"files/p{subject[:2]}/p{subject}/s{study_id}.txt"] = mimic_report(
                seed, study_id, report)
        for view in views:
            image(subject, study_id, split, view)
        return study_id

    layout = {"train": 8, "validate": 3, "test": 5}  # the split file's values
    subject_ids = iter(range(10_000_032, 20_000_000, 104_729))
    for split, subjects in layout.items():
        for s in range(subjects):
            subject = str(next(subject_ids))
            study(subject, split, ("PA", "LATERAL"), "impression" if s % 3 == 0 else "findings")
            study(subject, split, ("AP",) if s % 2 else ("PA", "AP"))
    train_subject, test_subject = str(next(subject_ids)), str(next(subject_ids))
    s = study(train_subject, "train", ("PA", "LATERAL"), "impression")
    repeated = list(split_rows[-2])                                 # the study's PA row
    image(train_subject, s, "train", "AP", "truncated_jpeg")
    image(train_subject, s, "train", "PA", MISSING)
    image(train_subject, s, "train", "PA", meta=False)              # no metadata row
    image(train_subject, s, "holdout", "PA")                        # unknown split
    split_rows.append(repeated)                                     # a repeated row
    study(train_subject, "train", ("PA",), has_report=False)        # missing report
    study(train_subject, "train", ("AP", "LL"), "latin1")           # report not UTF-8
    study(train_subject, "train", ("PA",), "boilerplate")           # empty caption
    study(test_subject, "test", ("PA", "LATERAL"), "impression")
    study(test_subject, "test", ("PA",), labels=["maybe"] + [""] * 13)   # bad CheXpert value
    for reason in ("corrupt", MISSING, "missing_metadata", "unknown_split", "duplicate_id",
                   "missing_report", "not_utf8", "empty_caption", "bad_label"):
        add(planted, name, reason)
    split_csv = csv_text(("dicom_id", "study_id", "subject_id", "split"), split_rows)
    split_csv += "p1x,5x,1x,train,extra\n0000-bad,not-a-study,10000032,train\n"
    add(planted, name, "malformed_row", 2)
    tables = {"split": split_csv, "metadata": csv_text(MIMIC_META, meta_rows),
              "chexpert": csv_text(("subject_id", "study_id", *CHEXPERT_COLUMNS),
                                   chexpert_rows)}
    for table, text in tables.items():
        write_bytes(os.path.join(jpg, f"mimic-cxr-2.0.0-{table}.csv.gz"),
                    gzip.compress(text.encode(), mtime=0))
    reports_zip = os.path.join(root, "physionet.org", "files", "mimic-cxr", "2.0.0",
                               "mimic-cxr-reports.zip")
    os.makedirs(os.path.dirname(reports_zip), exist_ok=True)
    with zipfile.ZipFile(reports_zip, "w", zipfile.ZIP_DEFLATED) as z:
        for member in sorted(reports):
            z.writestr(zipfile.ZipInfo(member, (2019, 9, 1, 0, 0, 0)), reports[member])
    return planted


# --------------------------------------------------------------------------------------------
# Histopathology: BACH, LC25000, NCT-CRC-HE, PatchCamelyon, SICAPv2
# --------------------------------------------------------------------------------------------

# Items per class of the datasets split here 70 / 10 / 20 (stratified by class, in item
# order): 12 clean items give 8 / 2 / 2, and each bad item in a class's stratum can take one
# validation or test place, so 21 good items cover one bad item and 30 cover two, whatever
# the split's shuffle (`core.group_split`).
BACH_PER_CLASS = 30  # up to two bad items per class
LC25000_PER_CLASS = 21
HAM_LESIONS_PER_CLASS = 21
PAD_PATIENTS_PER_CLASS = 21


def write_bach(root: str, seed: int) -> Planted:
    """``ICIAR2018_BACH_Challenge/Photos/{Benign,InSitu,Invasive,Normal}/*.tif`` and
    ``microscopy_ground_truth.csv`` (``b001.tif,Benign``, no header)."""
    planted: Planted = {}
    photos = os.path.join(root, "ICIAR2018_BACH_Challenge", "Photos")
    prefixes = {"Benign": "b", "InSitu": "is", "Invasive": "iv", "Normal": "n"}
    truth = []
    for folder, prefix in prefixes.items():
        for i in range(1, 1 + BACH_PER_CLASS):
            file_name = f"{prefix}{i:03d}.tif"
            write_image(os.path.join(photos, folder, file_name), "tiff",
                        sub_seed(seed, "bach", file_name), (32, 24))
            truth.append(f"{file_name},{folder}")
    for i, kind in enumerate(BAD_KINDS, start=101):
        write_image(os.path.join(photos, "Invasive", f"iv{i}.tif"), kind)
        add(planted, "bach", BAD_KINDS[kind])
    write_image(os.path.join(photos, "Normal", "n101.tif"), "tiff", sub_seed(seed, "n101"))
    for folder in ("Benign", "Normal"):  # one file name in two class folders
        write_image(os.path.join(photos, folder, "b900.tif"), "tiff", sub_seed(seed, "b900"))
    truth += ["n101.tif,Invasive", "b200.tif,Benign"]
    for reason in ("label_conflict", "duplicate_id", MISSING):
        add(planted, "bach", reason)
    write_bytes(os.path.join(photos, "microscopy_ground_truth.csv"),
                ("\n".join(truth) + "\n").encode())
    return planted


LC25000_FOLDERS = {"lung": ("lung_aca", "lung_n", "lung_scc"),
                   "colon": ("colon_aca", "colon_n")}


def write_lc25000(root: str, seed: int) -> Planted:
    """``lung_colon_image_set/{lung,colon}_image_sets/<class>/<class without _><n>.jpeg``."""
    planted: Planted = {}
    base = os.path.join(root, "lung_colon_image_set")
    for organ, folders in LC25000_FOLDERS.items():
        for folder in folders:
            stem = folder.replace("_", "").replace("colonaca", "colonca")
            for i in range(1, 1 + LC25000_PER_CLASS):
                write_image(os.path.join(base, f"{organ}_image_sets", folder, f"{stem}{i}.jpeg"),
                            "rgb_jpeg", sub_seed(seed, "lc", folder, i), (32, 32))
    sets = os.path.join(base, "lung_image_sets")
    write_image(os.path.join(sets, "lung_scc", "lungscc901.jpeg"), "truncated_jpeg")
    write_image(os.path.join(sets, "lung_n", "lungn901.jpeg"), "garbage")
    add(planted, "lc25000@lung", "corrupt")
    add(planted, "lc25000@lung", "unreadable")
    sets = os.path.join(base, "colon_image_sets")
    write_image(os.path.join(sets, "colon_n", "colonn901.jpeg"), "empty")
    write_image(os.path.join(sets, "colon_n", "colonca1.jpeg"), "rgb_jpeg", sub_seed(seed, "dup"))
    add(planted, "lc25000@colon", "empty_file")
    add(planted, "lc25000@colon", "duplicate_id")
    return planted


NCT_CODES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")


def write_nct_crc_he(root: str, seed: int) -> Planted:
    """``NCT-CRC-HE-100K/<class>/<class>-<id>.tif`` (train) and
    ``CRC-VAL-HE-7K/<class>/<class>-TCGA-<id>.tif`` (test)."""
    planted: Planted = {}
    for folder, per_class, tag in (("NCT-CRC-HE-100K", 4, ""), ("CRC-VAL-HE-7K", 2, "TCGA-")):
        for code in NCT_CODES:
            for i in range(per_class):
                file_name = f"{code}-{tag}{hex_id(folder, code, i).upper()}.tif"
                write_image(os.path.join(root, folder, code, file_name), "tiff",
                            sub_seed(seed, "nct", file_name), (32, 32))
    write_image(os.path.join(root, "NCT-CRC-HE-100K", "TUM", "TUM-BROKEN1.tif"), "truncated_jpeg")
    write_image(os.path.join(root, "CRC-VAL-HE-7K", "ADI", "ADI-TCGA-EMPTY1.tif"), "empty")
    write_image(os.path.join(root, "NCT-CRC-HE-100K", "DEB", "DEB-GARBAGE1.tif"), "garbage")
    for reason in ("corrupt", "empty_file", "unreadable"):
        add(planted, "nct_crc_he@default", reason)
    return planted


PCAM_PREFIX = "camelyonpatch_level_2_split_"


def write_patch_camelyon(root: str, seed: int) -> Planted:
    """``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5.gz`` (x: (N, 96, 96, 3)
    uint8, y: (N, 1, 1, 1) uint8) and the ``_meta.csv`` files."""
    planted: Planted = {}
    name = "patch_camelyon"
    splits = {"train": ([0, 1, 0, 1, 0, 1, 2, 0, 1], "camelyon16_train_{}_{:03d}"),
              "valid": ([1, 0, 1, 0, 0, 1], "camelyon16_train_{}_{:03d}"),
              "test": ([0, 1, 1, 0, 1, 0], "test_{1:03d}")}
    for split, (labels, wsi_name) in splits.items():
        count = len(labels)
        rng = np.random.default_rng(sub_seed(seed, "pcam", split))
        x = rng.integers(0, 256, (count - (split == "train"), 96, 96, 3), dtype=np.uint8)
        y = np.asarray(labels, np.uint8).reshape(-1, 1, 1, 1)
        write_h5(os.path.join(root, f"{PCAM_PREFIX}{split}_x.h5.gz"), "x", x)
        write_h5(os.path.join(root, f"{PCAM_PREFIX}{split}_y.h5.gz"), "y", y)
        slide_offset = {"train": 1, "valid": 40, "test": 1}[split]
        meta = []
        for i, label in enumerate(labels):
            if split == "test" and i == 3:
                continue  # a patch without its meta row
            kind = "tumor" if i % 2 else "normal"
            wsi = wsi_name.format(kind, slide_offset + i % 2)
            coord = f"not_a_number,{64 * i}" if split == "valid" and i == 4 else \
                f"{96 * i},{64 * i}"
            meta.append(f"{i},{coord},{bool(label)},{bool(label)},{wsi}")
        write_bytes(os.path.join(root, f"{PCAM_PREFIX}{split}_meta.csv"),
                    ("\n".join([",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi"] + meta)
                     + "\n").encode())
    for reason in ("unknown_label", "length_mismatch", "malformed_row", "missing_metadata"):
        add(planted, name, reason)
    return planted


SICAP_HEADER = (None, "image_name", "NC", "G3", "G4", "G5", "G4C")  # pandas' index column
SICAP_ONE_HOT = {"NC": (1, 0, 0, 0, 0), "G3": (0, 1, 0, 0, 0), "G4": (0, 0, 1, 0, 0),
                 "G4C": (0, 0, 1, 0, 1), "G5": (0, 0, 0, 1, 0)}


def sicap_patch(slide: str, i: int) -> str:
    return f"{slide}_Block_Region_{i}_{i % 3}_{i % 2}_xini_{2560 * i}_yini_{1280 * i}.jpg"


def indexed(rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """Rows with pandas' index as their first cell (SICAPv2's sheets were written so)."""
    return [(i, *row) for i, row in enumerate(rows)]


def write_sicapv2(root: str, seed: int) -> Planted:
    """``SICAPv2/`` with images/*.jpg, partition/Test/{Train,Test}.xlsx,
    partition/Validation/Val{1..4}/{Train,Test}.xlsx and wsi_labels.xlsx."""
    planted: Planted = {}
    base = os.path.join(root, "SICAPv2")
    grades = ("NC", "G3", "G4C", "G5", "G4", "NC")
    # patient -> slide; folds 1..4 of the training patients, patients 7, 8 are the test set.
    patients = {p: f"{16 + p % 3}B{p:04d}{1851 + 97 * p}" for p in range(1, 9)}
    folds = {1: (1, 2), 2: (3,), 3: (4, 5), 4: (6,)}
    rows = {p: [(sicap_patch(slide, i), *SICAP_ONE_HOT[g]) for i, g in enumerate(grades)]
            for p, slide in patients.items()}
    for patient_rows in rows.values():
        for image_name, *_ in patient_rows:
            write_image(os.path.join(base, "images", image_name), "rgb_jpeg",
                        sub_seed(seed, "sicap", image_name), (32, 32))
    bad_slide = patients[3]
    bad = [(sicap_patch(bad_slide, 20), 0, 0, 0, 0, 0, "no_label"),
           (sicap_patch(bad_slide, 21), 1, 0, 1, 0, 0, "multiple_labels"),
           (sicap_patch(bad_slide, 22), 0, 2, 0, 0, 0, "malformed_row"),
           (None, 1, 0, 0, 0, 0, "malformed_row"),
           (sicap_patch(bad_slide, 23), 1, 0, 0, 0, 0, MISSING),
           (sicap_patch(bad_slide, 24), 0, 1, 0, 0, 0, "corrupt")]
    write_image(os.path.join(base, "images", sicap_patch(bad_slide, 24)), "truncated_jpeg")
    for *_, reason in bad:
        add(planted, "sicapv2", reason)
    train_patients = [p for fold in folds.values() for p in fold]
    train = [r for p in train_patients for r in rows[p]] + [b[:6] for b in bad]
    test = rows[7] + rows[8] + [rows[1][0]]  # a training patch listed again: duplicate id
    add(planted, "sicapv2", "duplicate_id")
    partition = os.path.join(base, "partition")
    write_xlsx(os.path.join(partition, "Test", "Train.xlsx"), SICAP_HEADER, indexed(train))
    write_xlsx(os.path.join(partition, "Test", "Test.xlsx"), SICAP_HEADER, indexed(test))
    for fold, held in folds.items():
        fold_test = [r for p in held for r in rows[p]]
        fold_train = [r for p in train_patients if p not in held for r in rows[p]]
        folder = os.path.join(partition, "Validation", f"Val{fold}")
        write_xlsx(os.path.join(folder, "Train.xlsx"), SICAP_HEADER, indexed(fold_train))
        write_xlsx(os.path.join(folder, "Test.xlsx"), SICAP_HEADER, indexed(fold_test))
    write_xlsx(os.path.join(base, "wsi_labels.xlsx"),
               ("slide_id", "patient_id", "Gleason_primary", "Gleason_secondary"),
               [(slide, p, 3 + p % 2, 4) for p, slide in patients.items()])
    return planted


# --------------------------------------------------------------------------------------------
# Dermatology: HAM10000 (Dataverse), PAD-UFES-20 (Mendeley)
# --------------------------------------------------------------------------------------------

HAM_CODES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
HAM_HEADER = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset")


def write_ham10000(root: str, seed: int) -> Planted:
    """``HAM10000_metadata.csv`` and the two unzipped image folders
    ``HAM10000_images_part_{1,2}/ISIC_<7 digits>.jpg``."""
    planted: Planted = {}
    name = "ham10000@lesion_split"
    rows, n = [], 0
    for c, dx in enumerate(HAM_CODES):
        for lesion in range(HAM_LESIONS_PER_CLASS):
            lesion_id = f"HAM_{1000 * c + lesion:07d}"
            for _ in range(2 if dx in ("nv", "mel") and lesion % 4 == 0 else 1):
                image_id = f"ISIC_{24306 + n:07d}"
                part = f"HAM10000_images_part_{1 + n % 2}"
                write_image(os.path.join(root, part, f"{image_id}.jpg"), "rgb_jpeg",
                            sub_seed(seed, "ham", image_id), (40, 30))
                rows.append([lesion_id, image_id, dx, ("histo", "follow_up", "consensus")[n % 3],
                             f"{30 + n % 50}.0", ("male", "female")[n % 2],
                             ("back", "lower extremity", "trunk", "face")[n % 4],
                             ("vidir_modern", "rosendahl", "vidir_molemax")[n % 3]])
                n += 1
    part = os.path.join(root, "HAM10000_images_part_1")
    write_image(os.path.join(part, "ISIC_0090000.jpg"), "rgb_jpeg", sub_seed(seed, "ham", "x"))
    write_image(os.path.join(part, "ISIC_0090002.jpg"), "truncated_jpeg")
    rows += [["HAM_0090000", "ISIC_0090000", "xyz", "histo", "50.0", "female", "face", "rosendahl"],
             ["HAM_0090001", "ISIC_0090001", "nv", "histo", "", "unknown", "face", "rosendahl"],
             ["HAM_0090002", "ISIC_0090002", "bkl", "follow_up", "", "male", "trunk",
              "rosendahl"],
             rows[0]]
    text = csv_text(HAM_HEADER, rows).encode()
    text += b"HAM_0090003,ISIC_0090003,nv\nHAM_0090004,ISIC_0090004,nv,histo,5.0,male,caf\xe9,x\n"
    for reason in ("unknown_label", MISSING, "corrupt", "duplicate_id", "malformed_row",
                   "not_utf8"):
        add(planted, name, reason)
    write_bytes(os.path.join(root, "HAM10000_metadata.csv"), text)
    return planted


PAD_CODES = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
PAD_HEADER = ("patient_id", "lesion_id", "smoke", "drink", "background_father",
              "background_mother", "age", "pesticide", "gender", "skin_cancer_history",
              "cancer_history", "has_piped_water", "has_sewage_system", "fitspatrick", "region",
              "diameter_1", "diameter_2", "diagnostic", "itch", "grew", "hurt", "changed",
              "bleed", "elevation", "img_id", "biopsed")


def pad_line(patient: str, lesion: int, diagnostic: str, img_id: str, n: int) -> list[str]:
    return [patient, str(lesion), "False", "False", "POMERANIA", "GERMANY", str(40 + n % 40),
            "False", ("FEMALE", "MALE")[n % 2], "True", "False", "True", "True",
            "" if n % 7 == 0 else f"{1 + n % 5}.0", ("NECK", "FACE", "CHEST", "FOREARM")[n % 4],
            "6.0", "5.0", diagnostic, "True", "False", "False", "True", "False", "True", img_id,
            "True" if diagnostic != "NEV" else "False"]


def write_pad_ufes_20(root: str, seed: int) -> Planted:
    """``metadata.csv`` and ``images/imgs_part_{1,2,3}/PAT_<patient>_<lesion>_<n>.png``."""
    planted: Planted = {}
    rows, n = [], 0
    for c, dx in enumerate(PAD_CODES):
        for p in range(PAD_PATIENTS_PER_CLASS):
            patient = f"PAT_{100 * c + p}"
            for lesion in range(2 if p % 5 == 0 else 1):
                lesion_id = 1000 + n
                img_id = f"{patient}_{lesion_id}_{n}.png"
                write_image(os.path.join(root, "images", f"imgs_part_{1 + n % 3}", img_id),
                            "rgb_png", sub_seed(seed, "pad", img_id), (36, 32))
                rows.append(pad_line(patient, lesion_id, dx, img_id, n))
                n += 1
    write_image(os.path.join(root, "images", "imgs_part_1", "PAT_900_1_1.png"), "garbage")
    write_image(os.path.join(root, "images", "imgs_part_2", "PAT_901_2_2.png"), "rgb_png",
                sub_seed(seed, "pad", "bod"))
    rows += [pad_line("PAT_900", 1, "BCC", "PAT_900_1_1.png", 0),
             pad_line("PAT_901", 2, "BOD", "PAT_901_2_2.png", 1),
             pad_line("PAT_902", 3, "MEL", "PAT_902_3_3.png", 2),
             pad_line("PAT_903", 4, "SCC", "", 3),
             rows[0]]
    text = csv_text(PAD_HEADER, rows) + "PAT_904,5,False\n"
    for reason, count in (("unreadable", 1), ("unknown_label", 1), (MISSING, 1),
                          ("malformed_row", 2), ("duplicate_id", 1)):
        add(planted, "pad_ufes_20", reason, count)
    write_bytes(os.path.join(root, "metadata.csv"), text.encode())
    return planted


# --------------------------------------------------------------------------------------------
# MedMNIST v2 (28 px npz files, zenodo.org/records/10519652)
# --------------------------------------------------------------------------------------------

# name -> (number of classes, RGB?) as in the medmnist package's INFO.
MEDMNIST = {"pathmnist": (9, True), "dermamnist": (7, True), "octmnist": (4, False),
            "pneumoniamnist": (2, False), "retinamnist": (5, True), "breastmnist": (2, False),
            "bloodmnist": (8, True), "tissuemnist": (8, False), "organamnist": (11, False),
            "organcmnist": (11, False), "organsmnist": (11, False)}


def medmnist_arrays(name: str, classes: int, rgb: bool, seed: int) -> dict[str, np.ndarray]:
    """Each class twice per split, plus one out-of-range label in train."""
    arrays = {}
    for split in ("train", "val", "test"):
        labels = [c for c in range(classes) for _ in range(2)] + ([classes] if split == "train"
                                                                   else [])
        rng = np.random.default_rng(sub_seed(seed, "medmnist", name, split))
        shape = (len(labels), 28, 28) + ((3,) if rgb else ())
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = np.asarray(labels, np.uint8).reshape(-1, 1)
    return arrays


def write_medmnist(root: str, seed: int) -> Planted:
    """``<name>.npz`` for the eleven 2D datasets: {train,val,test}_{images,labels}."""
    planted: Planted = {}
    for name, (classes, rgb) in MEDMNIST.items():
        arrays = medmnist_arrays(name, classes, rgb, seed)
        add(planted, f"medmnist@{name}", "unknown_label")
        if name == "pathmnist":  # an image row without its label
            arrays["train_images"] = np.concatenate([arrays["train_images"],
                                                     arrays["train_images"][:1]])
            add(planted, f"medmnist@{name}", "missing_label")
        if name == "dermamnist":  # a label row without its image
            arrays["test_labels"] = np.concatenate([arrays["test_labels"], [[0]]]).astype(np.uint8)
            add(planted, f"medmnist@{name}", "missing_image")
        os.makedirs(root, exist_ok=True)
        np.savez_compressed(os.path.join(root, f"{name}.npz"), **arrays)
    return planted


# --------------------------------------------------------------------------------------------
# VQA: VQA-RAD (the OSF archive), PathVQA (the pvqa/ folder)
# --------------------------------------------------------------------------------------------

VQA_RAD_JSON = "VQA_RAD Dataset Public.json"
LATIN1 = "@LATIN1@"
RAD_ORGANS = (("HEAD", "brain", "MRI"), ("CHEST", "chest", "X-ray"), ("ABD", "abdomen", "CT"))


def rad_row(qid: Any, image: str, question: str, answer: Any, answer_type: str = "CLOSED",
            phrase_type: str = "freeform", organ: str = "HEAD", question_type: str = "PRES"
            ) -> dict[str, Any]:
    return {"qid": qid, "phrase_type": phrase_type, "qid_linked_id": f"03f{qid}",
            "image_case_url": f"https://medpix.nlm.nih.gov/case?id={image[6:]}",
            "image_name": image, "image_organ": organ, "evaluation": "not evaluated",
            "question": question, "question_rephrase": "NULL", "question_relation": "NULL",
            "question_frame": "NULL", "question_type": question_type, "answer": answer,
            "answer_type": answer_type}


def vqa_rad_questions(images: list[str]) -> list[dict[str, Any]]:
    """Train: free-form questions and paraphrases, closed and open; test: questions whose
    answers all occur in train (the split is by question, so test images occur in train)."""
    rows, qid = [], iter(range(100_000))
    for i, image in enumerate(images):
        organ, part, modality = RAD_ORGANS[i % 3]
        mass = ("Yes", "No")[i % 2]
        side = ("Left", "Right")[i % 2]
        rows += [rad_row(next(qid), image, "Is there evidence of a mass?", mass, organ=organ),
                 rad_row(next(qid), image, "Is a mass present?", mass + ".",
                         phrase_type="para", organ=organ, answer_type="CLOSED "),
                 rad_row(next(qid), image, "What imaging modality was used?", modality,
                         "OPEN", organ=organ, question_type="MODALITY"),
                 rad_row(next(qid), image, "Which organ system is shown?", part, "OPEN",
                         organ=organ, question_type="ORGAN"),
                 rad_row(next(qid), image, "Is the abnormality on the left or right?", side,
                         organ=organ, question_type="POS"),
                 rad_row(next(qid), image, "How many lesions are seen?", 1 + i % 3, "OPEN",
                         organ=organ, question_type="COUNT")]
    for i, image in enumerate(images[:5]):
        organ, part, modality = RAD_ORGANS[i % 3]
        rows += [rad_row(next(qid), image, f"Is this an {modality} image?" if modality[0] in
                         "AEIMOX" else f"Is this a {modality} image?", "Yes",
                         phrase_type="test_freeform", organ=organ, question_type="MODALITY"),
                 rad_row(next(qid), image, "Was a mass found?", ("Yes", "No")[i % 2],
                         phrase_type="test_para", organ=organ),
                 rad_row(next(qid), image, "What organ is shown?", part, "OPEN",
                         phrase_type="test_freeform", organ=organ, question_type="ORGAN"),
                 rad_row(next(qid), image, "How many lesions are there?", 1 + i % 3, "OPEN",
                         phrase_type="test_para", organ=organ, question_type="COUNT")]
    return rows


def write_vqa_rad(root: str, seed: int) -> Planted:
    """``VQA_RAD Dataset Public.json`` and ``VQA_RAD Image Folder/synpicNNNNN.jpg``."""
    planted: Planted = {}
    folder = os.path.join(root, "VQA_RAD Image Folder")
    images = [f"synpic{54610 + 37 * i}.jpg" for i in range(8)]
    for i, image in enumerate(images):
        write_image(os.path.join(folder, image), ("grey_jpeg", "rgb_jpeg")[i % 2],
                    sub_seed(seed, "vqa_rad", image), (32, 32))
    write_image(os.path.join(folder, "synpic99999.jpg"), "truncated_jpeg")
    rows: list[Any] = vqa_rad_questions(images)
    first = rows[0]
    bad: list[tuple[Any, str]] = [
        (rad_row(900, images[0], "   ", "Yes"), "empty_question"),
        ({k: v for k, v in rad_row(901, "", "No image?", "Yes").items() if k != "image_name"},
         "missing_image"),
        (rad_row(902, "synpic11111.jpg", "Is the image missing?", "Yes"), MISSING),
        (rad_row(903, "synpic99999.jpg", "Is this image corrupt?", "Yes"), "corrupt"),
        (rad_row(904, images[1], "Is the answer a list?", ["yes"]), "bad_value"),
        (rad_row(905, images[1], "Is the answer null?", None), "empty_answer"),
        (rad_row(906, images[2], "Is the type odd?", "Yes", answer_type="MAYBE"),
         "unknown_answer_type"),
        (rad_row(907, first["image_name"], first["question"].lower(), "yes"), "duplicate_qa"),
        (rad_row(first["qid"], images[3], "Is the id reused?", "No"), "duplicate_id"),
        (rad_row(908, images[3], LATIN1, "Yes"), "not_utf8"),
        ({k: v for k, v in rad_row(0, images[4], "No qid?", "No").items() if k != "qid"},
         "missing_id"),
        ("not an object", "malformed_row"),
        (rad_row(909, "synpic22222.jpg", "Is there a test image?", "Yes",
                 phrase_type="test_freeform"), MISSING)]
    for row, reason in bad:
        rows.append(row)
        add(planted, "vqa_rad", reason)
    text = json.dumps(rows, indent=1).encode().replace(LATIN1.encode(), b"Caf\xe9 lesion?")
    write_bytes(os.path.join(root, VQA_RAD_JSON), text)
    return planted


PATH_FINDINGS = ("necrosis", "fibrosis", "granuloma", "hemorrhage", "metaplasia")


def path_vqa_questions(split: str, images: list[str]) -> list[dict[str, Any]]:
    rows = []
    for i, image in enumerate(images):
        finding = PATH_FINDINGS[i % len(PATH_FINDINGS)]
        rows += [{"image": image, "question": f"Is {finding} present?",
                  "answer": ("yes", "no")[i % 2]},
                 {"image": image, "question": "What is present?", "answer": finding},
                 {"image": image, "question": "Does this image show inflammation?",
                  "answer": ("no", "yes")[i % 2]}]
        if split == "train":
            rows.append({"image": image, "question": "How many nuclei are in the field?",
                         "answer": 2 + i % 2})
    return rows


def write_path_vqa(root: str, seed: int) -> Planted:
    """``pvqa/images/{train,val,test}/<split>_NNNN.jpg``, ``pvqa/qas/<split>/<split>_qa.pkl``
    (lists of {"image", "question", "answer"}) and the answer-vocabulary pickles."""
    planted: Planted = {}
    base = os.path.join(root, "pvqa")
    answers: set[str] = set()
    for split, count in (("train", 6), ("val", 3), ("test", 4)):
        images = [f"{split}_{i:04d}" for i in range(count)]
        for image in images:
            write_image(os.path.join(base, "images", split, f"{image}.jpg"), "rgb_jpeg",
                        sub_seed(seed, "pvqa", image), (32, 32))
        rows: list[Any] = path_vqa_questions(split, images)
        if split == "train":
            write_image(os.path.join(base, "images", split, "train_0900.jpg"), "truncated_jpeg")
            bad: list[tuple[Any, str]] = [
                ({"image": images[0], "question": "", "answer": "no"}, "empty_question"),
                ({"image": "train_9999", "question": "Is this image here?", "answer": "yes"},
                 MISSING),
                ({"question": "Which image?", "answer": "yes"}, "missing_image"),
                ({"image": "train_0900", "question": "Is it corrupt?", "answer": "no"},
                 "corrupt"),
                (dict(rows[0]), "duplicate_qa"),
                ({"image": images[1], "question": "Which answer?", "answer": {"a": 1}},
                 "bad_value"),
                ({"image": images[1], "question": "What is this?", "answer": "?"},
                 "empty_answer"),
                (["not", "a", "dict"], "malformed_row")]
            for row, reason in bad:
                rows.append(row)
                add(planted, "path_vqa", reason)
            answers = {str(r["answer"]) for r in rows[:-len(bad)]}
        path = os.path.join(base, "qas", split, f"{split}_qa.pkl")
        write_bytes(path, pickle.dumps(rows, protocol=2))
    vocabulary = sorted(answers)
    write_bytes(os.path.join(base, "qas", "trainval_ans2label.pkl"),
                pickle.dumps({a: i for i, a in enumerate(vocabulary)}, protocol=2))
    write_bytes(os.path.join(base, "qas", "trainval_label2ans.pkl"),
                pickle.dumps(vocabulary, protocol=2))
    return planted


# --------------------------------------------------------------------------------------------
# The whole release
# --------------------------------------------------------------------------------------------

WRITERS: dict[str, Callable[[str, int], Planted]] = {
    "roco": write_roco, "pmc_oa": write_pmc_oa, "quilt_1m": write_quilt,
    "mimic_cxr": write_mimic_cxr, "bach": write_bach, "lc25000": write_lc25000,
    "nct_crc_he": write_nct_crc_he, "patch_camelyon": write_patch_camelyon,
    "sicapv2": write_sicapv2, "ham10000": write_ham10000, "pad_ufes_20": write_pad_ufes_20,
    "medmnist": write_medmnist, "vqa_rad": write_vqa_rad, "path_vqa": write_path_vqa,
}


def write_release(root: str, seed: int = 0, roco_image_names: str = "roco_id",
                  datasets: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """Writes ``root/<name>/`` for every builder (or those in `datasets`) and returns the bad
    items planted: {build name: {reject reason: count}}. An existing ``root/<name>`` is
    replaced."""
    planted: dict[str, dict[str, int]] = {}
    for name in datasets or WRITERS:
        if name not in WRITERS:
            raise ValueError(f"no fixture for dataset {name!r}; have {', '.join(WRITERS)}")
        folder = os.path.join(root, name)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.makedirs(folder)
        if name == "roco":
            result = write_roco(folder, seed, roco_image_names)
        else:
            result = WRITERS[name](folder, seed)
        planted.update({k: dict(sorted(v.items())) for k, v in result.items()})
    return planted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.fixtures",
        description="Write a miniature raw release of every data_prep dataset, each in its "
                    "publisher's layout, with bad items planted (the rehearsal's input).")
    parser.add_argument("--out", required=True, help="folder for <dataset>/ raw folders")
    parser.add_argument("--seed", type=int, default=0, help="pixels and caption wording")
    parser.add_argument("--roco_image_names", default="roco_id", choices=("roco_id", "pmc"),
                        help="ROCO image files named <ROCO id>.jpg (fetch.py since 2022) or "
                             "<PMCID>_<name> (older copies)")
    parser.add_argument("--planted", default="",
                        help="also write the planted bad items ({dataset: {reason: count}}) "
                             "to this JSON file")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    planted = write_release(args.out, args.seed, args.roco_image_names)
    if args.planted:
        with open(args.planted, "w", encoding="utf-8") as f:
            json.dump(planted, f, indent=1)
    total = sum(sum(v.values()) for v in planted.values())
    print(f"wrote {len(WRITERS)} raw releases to {args.out} ({total} bad items planted in "
          f"{len(planted)} datasets) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
