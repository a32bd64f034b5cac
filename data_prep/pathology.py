"""Histopathology classification datasets (zero-shot and linear probe): BACH, LC25000,
NCT-CRC-HE-100K, PatchCamelyon and SICAPv2, each read from the folder its publisher ships.

Every builder writes the shared classification schema (`data_prep.classification`): ``id``,
``image``, ``label`` (ClassLabel over prompt-ready class names), ``class_name``,
``source_label`` (the publisher's code: folder name, h5 label or xlsx column), plus the
per-dataset fields named below. Metadata: one zero-shot task with the ``histopathology``
templates, ``source_labels``, ``split_rule`` and ``source``.

Class names are noun phrases that read in every histopathology template ("an H&E image of
{}.", "a microscopy image of {} tissue."), so none ends in "tissue".

Datasets without an official split (BACH, LC25000) get a deterministic train 70 % /
validation 10 % / test 20 % split: `core.group_split`, seed 0, stratified by class. Neither
release names patients or source images, so each image is its own group (see each class).

BACH (ICIAR 2018 Grand Challenge on BreAst Cancer Histology images; Aresta et al., Medical
Image Analysis 2019), ``bach``: the labelled microscopy part of ``ICIAR2018_BACH_Challenge.zip``
(zenodo.org/records/3632035, or the challenge site)::

    ICIAR2018_BACH_Challenge/Photos/        (or Photos/ directly under manual_dir)
        Benign/b001.tif ...  InSitu/is001.tif ...  Invasive/iv001.tif ...  Normal/n001.tif ...
        microscopy_ground_truth.csv          optional; "b001.tif,Benign" lines, no header

400 RGB TIFFs, 2048x1536, 100 per class. The class folder is the label. When the CSV is there
it is a cross-check: an image it labels differently is rejected (``label_conflict``), an image
it lists that is in no folder is rejected (``missing_file``); CSV lines without two fields are
not image references and are skipped (items always come from the folders, so none is lost).
The labels of the challenge test images were never published, and the zenodo release has no
patient ids (the challenge site links a separate, partial patient-origin sheet; not read), so
the split is image-level: images of one patient can land in two splits.

LC25000 (Borkowski et al., arXiv:1912.12142, 2019), ``lc25000@lung`` / ``lc25000@colon``
(two tasks; a build without ``@config`` builds both when present)::

    lung_colon_image_set/                    (or its two folders directly under manual_dir)
        lung_image_sets/{lung_aca,lung_n,lung_scc}/lungaca1.jpeg ...   5,000 per class
        colon_image_sets/{colon_aca,colon_n}/colonca1.jpeg ...         5,000 per class

768x768 JPEGs. The 25,000 images are Augmentor augmentations (rotations, flips) of 750 lung
and 500 colon originals, and the release does not say which original an image came from, so
a random split puts near-duplicates of one original in train and test: accuracy on it is
optimistic. There is no better rule; ``split_rule`` says so.

NCT-CRC-HE-100K (Kather et al., PLOS Medicine 2019; zenodo.org/records/1214456),
``nct_crc_he`` (config ``default``; ``nct_crc_he@nonorm`` trains on the unnormalised copy)::

    NCT-CRC-HE-100K/{ADI,BACK,DEB,LYM,MUC,MUS,NORM,STR,TUM}/ADI-AAAFLCLY.tif ...  train
    NCT-CRC-HE-100K-NONORM/{...}/...         train of config nonorm (no Macenko normalisation)
    CRC-VAL-HE-7K/{ADI,...,TUM}/ADI-TCGA-AAICEQFN.tif ...                        test

224x224 TIFFs at 0.5 um/px. Official split: NCT-CRC-HE-100K (86 slides) is train,
CRC-VAL-HE-7K (50 other patients) is test; there is no validation split. CRC-VAL-HE-7K is
Macenko-normalised, so the ``nonorm`` config tests across a stain shift. A split whose folder
is absent is not built (a test-only build is a valid zero-shot benchmark).

PatchCamelyon (Veeling et al., MICCAI 2018; github.com/basveeling/pcam,
zenodo.org/records/2546921), ``patch_camelyon``; under manual_dir (or its ``pcam/``)::

    camelyonpatch_level_2_split_{train,valid,test}_x.h5[.gz]    "x": (N, 96, 96, 3) uint8
    camelyonpatch_level_2_split_{train,valid,test}_y.h5[.gz]    "y": (N, 1, 1, 1) uint8
    camelyonpatch_level_2_split_{train,valid,test}_meta.csv     optional:
        ,coord_y,coord_x,tumor_patch,center_tumor_patch,wsi

Official WSI-disjoint split (valid -> validation). The release ships the h5 files gzipped:
an ``.h5.gz`` is decompressed into a temporary folder in the output data_dir
(``patch_camelyon_tmp_*``; about 8.3 GB for the three x files) that is removed when the build
ends; an ``.h5`` is read in place. Pixels are never loaded whole (the train x file is 6.7 GB):
a contiguous ``x`` dataset is memory-mapped and each item's image is a view of its row, paged
in when it is converted; a chunked one is first copied, 4,096 rows at a time, to a ``.npy`` in
the temporary folder and mapped from there. Label 1 = tumour in the centre 32x32 px. Extra
fields: ``wsi``, ``coord_x``, ``coord_y``, ``tumor_patch`` (tumour anywhere in the patch: 1/0,
-1 without a meta file) and ``h5_index`` (the row). With a meta file, a patch whose row is
missing or malformed is rejected; x and y of different lengths reject the rows one of them
lacks (``length_mismatch``). A split whose x and y files are both absent is not built.

SICAPv2 (Silva-Rodríguez et al., Computer Methods and Programs in Biomedicine 2020;
data.mendeley.com/datasets/9xxm58dvs3)::

    SICAPv2/                                 (or its content directly under manual_dir)
        images/16B0001851_Block_Region_1_0_0_xini_6803_yini_59786.jpg ...   512x512
        partition/Test/{Train,Test}.xlsx      image_name, NC, G3, G4, G5, G4C (one-hot 0/1)
        partition/Validation/Val{1..4}/{Train,Test}.xlsx   patient-level folds of Test/Train
        wsi_labels.xlsx                       optional: slide_id, patient_id, Gleason_...

Official patient-level partition ``partition/Test``: Test.xlsx is test; Train.xlsx is train +
validation, where validation is the rows listed in ``Validation/Val1/Test.xlsx`` (the first of
the publisher's four patient-level folds; without it there is no validation split). So
``sicapv2/train+validation`` is the published 9,959-patch training set. The label is the one
column of NC, G3, G4, G5 set to 1; a row with none set is rejected (``no_label``), one with
several (``multiple_labels``), one with a value other than 0/1/empty (``malformed_row``). G4C
(cribriform Gleason 4) is a flag, not a class: field ``cribriform`` (1/0, -1 without the
column). Extra fields: ``slide_id`` (the image name before ``_Block_``) and ``patient_id``
(from wsi_labels.xlsx, "" without it).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import os
import shutil
import tempfile
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_prep import classification, core
from medclip_jax.errors import UserError

SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}
SPLIT_SEED = 0
TIFF = (".tif", ".tiff")
JPEG = (".jpeg", ".jpg")

# (publisher label, class name), in label order.
BACH_CLASSES = (("Normal", "normal breast"), ("Benign", "benign breast lesion"),
                ("InSitu", "breast carcinoma in situ"),
                ("Invasive", "invasive breast carcinoma"))
LUNG_CLASSES = (("lung_aca", "lung adenocarcinoma"), ("lung_n", "benign lung parenchyma"),
                ("lung_scc", "lung squamous cell carcinoma"))
COLON_CLASSES = (("colon_aca", "colon adenocarcinoma"), ("colon_n", "benign colonic mucosa"))
NCT_CLASSES = (("ADI", "adipose"), ("BACK", "background"), ("DEB", "debris"),
               ("LYM", "lymphocytes"), ("MUC", "mucus"), ("MUS", "smooth muscle"),
               ("NORM", "normal colon mucosa"), ("STR", "cancer-associated stroma"),
               ("TUM", "colorectal adenocarcinoma epithelium"))
PCAM_CLASSES = (("0", "normal lymph node"), ("1", "lymph node metastasis"))
SICAP_CLASSES = (("NC", "non-cancerous prostate"), ("G3", "Gleason pattern 3"),
                 ("G4", "Gleason pattern 4"), ("G5", "Gleason pattern 5"))


def random_split_rule(what: str) -> str:
    return (f"no official split: deterministic train 70% / validation 10% / test 20% by "
            f"core.group_split (seed {SPLIT_SEED}), stratified by class, each image its own "
            f"group ({what})")


# --------------------------------------------------------------------------------------------
# Shared schema, metadata and folder reading
# --------------------------------------------------------------------------------------------


class PathologyBuilder(core.ManualImageBuilder, skip_registration=True):
    """The classification schema and metadata, from `classes()` and the class attributes."""

    CLASSES: tuple[tuple[str, str], ...] = ()
    SOURCE = ""
    SPLIT_RULE = ""

    def classes(self) -> tuple[tuple[str, str], ...]:
        return self.CLASSES

    def task(self) -> str:
        return self.name

    def class_names(self) -> list[str]:
        return [name for _, name in self.classes()]

    def source_labels(self) -> dict[str, int]:
        return {code: i for i, (code, _) in enumerate(self.classes())}

    def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
        return {}

    def record_features(self) -> dict[str, tfds.features.FeatureConnector]:
        return {**classification.label_features(self.class_names()), **self.extra_features()}

    def metadata(self) -> dict[str, Any]:
        return classification.task_metadata(
            self.task(), self.class_names(), classification.templates("histopathology"),
            self.source_labels(), self.SPLIT_RULE, self.SOURCE)

    def add(self, scan: core.Scan, split: str, item_id: str, image: Any, where: str,
            source_label: str, **extra: Any) -> None:
        classification.add_labelled(scan, split, item_id, image, where, self.class_names(),
                                    self.source_labels(), source_label, **extra)


def unpacked(path: str) -> str:
    """`path`, or `path/<same name>` when an archive was extracted into a folder of its name."""
    inner = os.path.join(path, os.path.basename(os.path.normpath(path)))
    return inner if os.path.isdir(inner) else path


def files_with(folder: str, extensions: Sequence[str]) -> list[str]:
    """Sorted paths of the files in `folder` with one of `extensions` (any case)."""
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.lower().endswith(tuple(extensions)) and not name.startswith(".")
                  and os.path.isfile(os.path.join(folder, name)))


def class_folder_images(root: str, known: Sequence[str], extensions: Sequence[str]
                        ) -> list[tuple[str, str]]:
    """(folder name, image path) for every image in every subfolder of `root`; an unknown
    folder's images come back too (they become ``unknown_label`` rejects), a missing known
    folder is a one-line error."""
    if not os.path.isdir(root):
        raise UserError(f"{root} is not a folder: expected class folders {', '.join(known)}")
    missing = [k for k in known if not os.path.isdir(os.path.join(root, k))]
    if missing:
        raise UserError(f"{root}: missing class folder(s) {', '.join(missing)} "
                        f"(expected {', '.join(known)})")
    return [(folder, path) for folder in sorted(os.listdir(root))
            if os.path.isdir(os.path.join(root, folder)) and not folder.startswith(".")
            for path in files_with(os.path.join(root, folder), extensions)]


def stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def random_splits(ids: Sequence[str], labels: Sequence[str]) -> dict[str, str]:
    """id -> split of the deterministic 70/10/20 split, one group per id."""
    return dict(zip(ids, core.group_split(list(ids), list(labels), SPLIT_FRACTIONS,
                                          SPLIT_SEED)))


# --------------------------------------------------------------------------------------------
# BACH
# --------------------------------------------------------------------------------------------


class Bach(PathologyBuilder):
    """BACH: breast histology microscopy images, normal / benign / in situ / invasive."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    CLASSES = BACH_CLASSES
    SOURCE = "BACH, ICIAR 2018 Grand Challenge (zenodo.org/records/3632035)"
    SPLIT_RULE = random_split_rule(
        "the challenge test labels are not public and the release has no patient ids, so "
        "the split is image-level, not patient-disjoint")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "ICIAR2018_BACH_Challenge/Photos/{Benign,InSitu,Invasive,Normal}/*.tif from "
        "ICIAR2018_BACH_Challenge.zip (zenodo.org/records/3632035)")

    def scan(self, manual_dir: str) -> core.Scan:
        photos = find_bach_photos(manual_dir)
        images = class_folder_images(photos, [c for c, _ in BACH_CLASSES], TIFF)
        truth = read_bach_ground_truth(os.path.join(photos, "microscopy_ground_truth.csv"))
        found = {stem(p) for _, p in images}
        absent = sorted(n for n in truth if n not in found)
        split_of = random_splits([stem(p) for _, p in images] + absent,
                                 [f for f, _ in images] + [truth[n][0] for n in absent])
        scan = core.Scan()
        for folder, path in images:
            item_id = stem(path)
            split = split_of[item_id]
            listed = truth.get(item_id)
            if listed is not None and listed[0] != folder:
                scan.reject(split, item_id, path, "label_conflict",
                            f"in folder {folder} but {listed[1]} says {listed[0]}")
                continue
            self.add(scan, split, item_id, path, path, folder)
        for name in absent:
            scan.reject(split_of[name], name, truth[name][1], "missing_file",
                        f"listed as {truth[name][0]} but no {name}.tif in {photos}/*/")
        return scan


def find_bach_photos(manual_dir: str) -> str:
    return core.find_first(manual_dir, [
        os.path.join("ICIAR2018_BACH_Challenge", "Photos"),
        os.path.join("ICIAR2018_BACH_Challenge", "ICIAR2018_BACH_Challenge", "Photos"),
        "Photos"], "BACH's Photos/ folder with Benign/ InSitu/ Invasive/ Normal/ of .tif images")


def read_bach_ground_truth(path: str) -> dict[str, tuple[str, str]]:
    """image stem -> (label, "file:line") from the optional headerless CSV ({} if absent)."""
    if not os.path.exists(path):
        return {}
    truth = {}
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for number, row in enumerate(csv.reader(f), start=1):
            if len(row) >= 2 and row[0].strip():
                truth[stem(row[0].strip())] = (row[1].strip(), f"{path}:{number}")
    return truth


# --------------------------------------------------------------------------------------------
# LC25000
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Lc25000Config(tfds.core.BuilderConfig):
    folder: str = ""
    classes: tuple[tuple[str, str], ...] = ()


class Lc25000(PathologyBuilder):
    """LC25000: lung (3 classes) and colon (2 classes) histopathology, one config each."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        Lc25000Config(name="lung", description="Lung: adenocarcinoma, benign, squamous.",
                      folder="lung_image_sets", classes=LUNG_CLASSES),
        Lc25000Config(name="colon", description="Colon: adenocarcinoma, benign.",
                      folder="colon_image_sets", classes=COLON_CLASSES),
    ]
    BUILD_ALL_CONFIGS = True
    SOURCE = "LC25000 (github.com/tampapath/lung_colon_image_set)"
    SPLIT_RULE = random_split_rule(
        "the images are augmentations of 750 lung / 500 colon originals and no original ids "
        "are published, so near-duplicates of one original can be in train and test")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "lung_colon_image_set/lung_image_sets/{lung_aca,lung_n,lung_scc}/*.jpeg and "
        "lung_colon_image_set/colon_image_sets/{colon_aca,colon_n}/*.jpeg from LC25000.zip")

    def classes(self) -> tuple[tuple[str, str], ...]:
        return self.builder_config.classes

    def task(self) -> str:
        return f"{self.name}_{self.builder_config.name}"

    def scan(self, manual_dir: str) -> core.Scan:
        folder = self.builder_config.folder
        candidates = [os.path.join(unpacked(os.path.join(manual_dir, "lung_colon_image_set")),
                                   folder), os.path.join(manual_dir, folder)]
        root = next((c for c in candidates if os.path.isdir(c)), None)
        if root is None:
            raise core.RawMissing(f"{manual_dir}: no {folder}/ (looked for "
                                  f"{' and '.join(candidates)})")
        images = class_folder_images(root, [c for c, _ in self.classes()], JPEG)
        split_of = random_splits([stem(p) for _, p in images], [f for f, _ in images])
        scan = core.Scan()
        for label, path in images:
            self.add(scan, split_of[stem(path)], stem(path), path, path, label)
        return scan


# --------------------------------------------------------------------------------------------
# NCT-CRC-HE-100K
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class NctCrcHeConfig(tfds.core.BuilderConfig):
    train_folder: str = ""


class NctCrcHe(PathologyBuilder):
    """NCT-CRC-HE-100K (train) and CRC-VAL-HE-7K (test): nine colorectal tissue classes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        NctCrcHeConfig(name="default", description="Train on the Macenko-normalised "
                       "NCT-CRC-HE-100K.", train_folder="NCT-CRC-HE-100K"),
        NctCrcHeConfig(name="nonorm", description="Train on NCT-CRC-HE-100K-NONORM (no "
                       "colour normalisation).", train_folder="NCT-CRC-HE-100K-NONORM"),
    ]
    DEFAULT_CONFIG_NAME = "default"
    CLASSES = NCT_CLASSES
    TEST_FOLDER = "CRC-VAL-HE-7K"
    SOURCE = "NCT-CRC-HE-100K and CRC-VAL-HE-7K, Kather et al. (zenodo.org/records/1214456)"
    SPLIT_RULE = ("official: train = NCT-CRC-HE-100K (or NCT-CRC-HE-100K-NONORM in config "
                  "nonorm; 86 slides), test = CRC-VAL-HE-7K (50 other patients); no "
                  "validation split")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "NCT-CRC-HE-100K/ (or NCT-CRC-HE-100K-NONORM/ for config nonorm) and CRC-VAL-HE-7K/, "
        "each with {ADI,BACK,DEB,LYM,MUC,MUS,NORM,STR,TUM}/*.tif (zenodo.org/records/1214456)")

    def scan(self, manual_dir: str) -> core.Scan:
        folders = {"train": self.builder_config.train_folder, "test": self.TEST_FOLDER}
        present = {s: unpacked(os.path.join(manual_dir, f)) for s, f in folders.items()
                   if os.path.isdir(os.path.join(manual_dir, f))}
        other = next((c for c in self.BUILDER_CONFIGS if c.name != self.builder_config.name
                      and os.path.isdir(os.path.join(manual_dir, c.train_folder))), None)
        if "train" not in present and other is not None:
            raise UserError(f"{manual_dir}: no {folders['train']}/ (config "
                            f"{self.builder_config.name}), but {other.train_folder}/ is "
                            f"there: build {self.name}@{other.name} to train on it")
        if not present:
            raise UserError(f"{manual_dir}: neither {' nor '.join(folders.values())} exists: "
                            f"expected {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        scan = core.Scan()
        for split, root in present.items():
            for label, path in class_folder_images(root, [c for c, _ in NCT_CLASSES], TIFF):
                self.add(scan, split, stem(path), path, path, label)
        return scan


# --------------------------------------------------------------------------------------------
# PatchCamelyon
# --------------------------------------------------------------------------------------------

PCAM_PREFIX = "camelyonpatch_level_2_split_"
PCAM_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
PCAM_META_COLUMNS = ("coord_y", "coord_x", "tumor_patch", "wsi")
COPY_ROWS = 4096  # rows per read when a chunked HDF5 array is copied out (~113 MB for PCam)


class PatchCamelyon(PathologyBuilder):
    """PatchCamelyon: 96x96 lymph node patches, metastasis in the centre or not."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    CLASSES = PCAM_CLASSES
    SOURCE = "PatchCamelyon (github.com/basveeling/pcam, zenodo.org/records/2546921)"
    SPLIT_RULE = ("official: the train / valid / test h5 files (no WSI in two splits); "
                  "valid -> validation")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5 or .h5.gz (+ optional "
        "_meta.csv) from github.com/basveeling/pcam or zenodo.org/records/2546921")

    _temp_dir: str | None = None

    def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
        return {"wsi": tfds.features.Text(),
                "coord_x": tfds.features.Scalar(dtype=np.int64),
                "coord_y": tfds.features.Scalar(dtype=np.int64),
                "tumor_patch": tfds.features.Scalar(dtype=np.int64),
                "h5_index": tfds.features.Scalar(dtype=np.int64)}

    def _download_and_prepare(self, dl_manager: Any, download_config: Any) -> None:
        """The TFDS build, then the temporary files (decompressed h5, copied arrays) go."""
        try:
            super()._download_and_prepare(dl_manager, download_config)
        finally:
            if self._temp_dir:
                shutil.rmtree(self._temp_dir, ignore_errors=True)
                self._temp_dir = None

    def temp_dir(self) -> str:
        if not self._temp_dir:
            os.makedirs(os.fspath(self.data_dir_root), exist_ok=True)
            self._temp_dir = tempfile.mkdtemp(prefix="patch_camelyon_tmp_",
                                              dir=os.fspath(self.data_dir_root))
        return self._temp_dir

    def scan(self, manual_dir: str) -> core.Scan:
        root = next((d for d in (manual_dir, os.path.join(manual_dir, "pcam"))
                     if os.path.isdir(d) and any(n.startswith(PCAM_PREFIX)
                                                 for n in os.listdir(d))), None)
        if root is None:
            raise UserError(f"{manual_dir}: no {PCAM_PREFIX}* file: expected "
                            f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        scan = core.Scan()
        for name, split in PCAM_SPLITS.items():
            x_file, y_file = pcam_file(root, name, "x"), pcam_file(root, name, "y")
            if x_file is None and y_file is None:
                continue
            if x_file is None or y_file is None:
                lack = "y" if y_file is None else "x"
                raise UserError(f"{x_file or y_file}: no {PCAM_PREFIX}{name}_{lack}.h5[.gz] "
                                f"next to it (each split needs its x and y file)")
            pixels = self.pixels(self.local_h5(x_file), x_file)
            labels = read_h5_labels(self.local_h5(y_file))
            meta_path = os.path.join(root, f"{PCAM_PREFIX}{name}_meta.csv")
            meta = read_pcam_meta(meta_path) if os.path.exists(meta_path) else None
            self.scan_split(scan, name, split, pixels, labels, meta, meta_path, x_file)
        if not scan.splits():
            raise UserError(f"{root}: no {PCAM_PREFIX}{{train,valid,test}}_{{x,y}}.h5[.gz] "
                            f"pair: expected {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        return scan

    def local_h5(self, path: str) -> str:
        """`path`, or its decompressed copy in the temporary folder for a ``.gz``."""
        if not path.endswith(".gz"):
            return path
        return gunzip(path, os.path.join(self.temp_dir(), os.path.basename(path)[:-3]))

    def pixels(self, path: str, source: str) -> np.ndarray:
        """The (N, 96, 96, 3) uint8 ``x`` array, memory-mapped, not loaded: the train file
        is 6.7 GB. A contiguous dataset (the release's) is mapped in place; a chunked one is
        first copied, COPY_ROWS rows at a time, to a ``.npy`` in the temporary folder."""
        with open_h5(path) as f:
            if "x" not in f:
                raise UserError(f"{source}: no dataset 'x' (has {', '.join(f)})")
            data = f["x"]
            shape, dtype = tuple(data.shape), data.dtype
            if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8:
                raise UserError(f"{source}: dataset 'x' has shape {shape} and dtype {dtype}: "
                                f"expected (N, 96, 96, 3) uint8")
            if shape[0] == 0:
                return np.zeros(shape, dtype)
            offset = data.id.get_offset() if data.chunks is None else None
            if offset is None:
                copy = os.path.join(self.temp_dir(), os.path.basename(path) + ".npy")
                out = np.lib.format.open_memmap(copy, "w+", dtype, shape)
                try:
                    for start in range(0, shape[0], COPY_ROWS):
                        out[start:start + COPY_ROWS] = data[start:start + COPY_ROWS]
                except OSError as e:
                    raise UserError(f"{source}: cannot read dataset 'x' ({e})") from None
                out.flush()
                del out
                return np.asarray(np.load(copy, mmap_mode="r"))
        return np.asarray(np.memmap(path, dtype, "r", offset, shape))

    def scan_split(self, scan: core.Scan, name: str, split: str, pixels: np.ndarray,
                   labels: np.ndarray, meta: dict[int, Any] | None, meta_path: str,
                   source: str) -> None:
        for i in range(max(len(pixels), len(labels))):
            item_id = f"{name}_{i:06d}"
            where = f"{source}[{i}]"
            if i >= len(pixels) or i >= len(labels):
                scan.reject(split, item_id, where, "length_mismatch",
                            f"x has {len(pixels)} rows, y has {len(labels)}")
                continue
            extra = {"wsi": "", "coord_x": -1, "coord_y": -1, "tumor_patch": -1, "h5_index": i}
            if meta is not None:
                row = meta.get(i)
                if not isinstance(row, dict):
                    reason, detail = (("missing_metadata", f"no row {i} in {meta_path}")
                                      if row is None else (row.reason, f"{meta_path}: {row}"))
                    scan.reject(split, item_id, where, reason, detail)
                    continue
                extra.update(row)
            self.add(scan, split, item_id, pixels[i], where, str(int(labels[i])), **extra)


def pcam_file(root: str, name: str, kind: str) -> str | None:
    """The ``.h5`` (preferred) or ``.h5.gz`` of split `name` and kind x / y, if present."""
    base = os.path.join(root, f"{PCAM_PREFIX}{name}_{kind}.h5")
    return next((p for p in (base, base + ".gz") if os.path.exists(p)), None)


def gunzip(source: str, target: str) -> str:
    try:
        with gzip.open(source, "rb") as f, open(target, "wb") as out:
            shutil.copyfileobj(f, out, 16 << 20)
    except (OSError, EOFError) as e:
        raise UserError(f"{source}: cannot decompress ({type(e).__name__}: {e}); expected "
                        f"a gzipped HDF5 file") from None
    return target


def open_h5(path: str) -> Any:
    import h5py
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"{path}: not a readable HDF5 file ({e})") from None


def read_h5_labels(path: str) -> np.ndarray:
    """The ``y`` labels, flattened ((N, 1, 1, 1) in the release)."""
    with open_h5(path) as f:
        if "y" not in f:
            raise UserError(f"{path}: no dataset 'y' (has {', '.join(f)})")
        labels = np.asarray(f["y"][:])
    return labels.reshape(len(labels), -1)[:, 0] if labels.ndim > 1 else labels


def read_pcam_meta(path: str) -> dict[int, dict[str, Any] | core.BadText]:
    """Patch index -> fields (or why the row is unusable). The index is the unnamed first
    column when it is there, else the row's position."""
    meta: dict[int, dict[str, Any] | core.BadText] = {}
    for position, (_, row) in enumerate(core.read_csv_rows(path)):
        if isinstance(row, core.BadText):
            meta[position] = row
            continue
        core.require_columns(path, row, PCAM_META_COLUMNS)
        try:
            index = int(row[""]) if row.get("", "").strip() else position
        except ValueError:
            index = position
        meta[index] = parse_pcam_meta_row(row)
    return meta


def parse_pcam_meta_row(row: dict[str, str]) -> dict[str, Any] | core.BadText:
    flags = {"true": 1, "false": 0, "1": 1, "0": 0}
    tumor = flags.get(row["tumor_patch"].strip().lower())
    wsi = row["wsi"].strip()
    try:
        coord_x, coord_y = int(row["coord_x"]), int(row["coord_y"])
    except ValueError:
        return core.BadText("malformed_row", f"coordinates {row['coord_x']!r}, "
                            f"{row['coord_y']!r} are not integers")
    if tumor is None or not wsi:
        return core.BadText("malformed_row", f"tumor_patch {row['tumor_patch']!r} is not "
                            f"True/False or wsi is empty")
    return {"wsi": wsi, "coord_x": coord_x, "coord_y": coord_y, "tumor_patch": tumor}


# --------------------------------------------------------------------------------------------
# SICAPv2
# --------------------------------------------------------------------------------------------

SICAP_LABEL_COLUMNS = ("NC", "G3", "G4", "G5")


class Sicapv2(PathologyBuilder):
    """SICAPv2: prostate biopsy patches, non-cancerous or Gleason pattern 3 / 4 / 5."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    CLASSES = SICAP_CLASSES
    SOURCE = "SICAPv2, Silva-Rodríguez et al. 2020 (data.mendeley.com/datasets/9xxm58dvs3)"
    SPLIT_RULE = ("official patient-level partition/Test: Test.xlsx = test; Train.xlsx = "
                  "train + validation, validation = its rows listed in "
                  "partition/Validation/Val1/Test.xlsx (fold 1 of the publisher's 4 "
                  "patient-level folds; no validation split without it); "
                  "train+validation is the official training set")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "SICAPv2/ with images/*.jpg, partition/Test/{Train,Test}.xlsx, "
        "partition/Validation/Val1/Test.xlsx and wsi_labels.xlsx "
        "(data.mendeley.com/datasets/9xxm58dvs3)")

    def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
        return {"slide_id": tfds.features.Text(), "patient_id": tfds.features.Text(),
                "cribriform": tfds.features.Scalar(dtype=np.int64)}

    def scan(self, manual_dir: str) -> core.Scan:
        root = unpacked(os.path.join(manual_dir, "SICAPv2"))
        if not os.path.isdir(root):
            root = manual_dir
        partition = os.path.join(root, "partition")
        train_path = core.require_path(os.path.join(partition, "Test", "Train.xlsx"),
                                       "SICAPv2's official training partition")
        test_path = core.require_path(os.path.join(partition, "Test", "Test.xlsx"),
                                      "SICAPv2's official test partition")
        val_path = os.path.join(partition, "Validation", "Val1", "Test.xlsx")
        validation = ({cell_text(r["image_name"]) for _, r in read_xlsx(val_path, ["image_name"])}
                      if os.path.exists(val_path) else set())
        patients = read_patients(os.path.join(root, "wsi_labels.xlsx"))
        columns = ("image_name",) + SICAP_LABEL_COLUMNS
        scan = core.Scan()
        for path in (train_path, test_path):
            for number, row in read_xlsx(path, columns):
                split = ("test" if path == test_path else
                         "validation" if cell_text(row["image_name"]) in validation else "train")
                self.scan_row(scan, root, split, f"{path}:{number}", row, patients)
        return scan

    def scan_row(self, scan: core.Scan, root: str, split: str, where: str,
                 row: dict[str, Any], patients: dict[str, str]) -> None:
        name = cell_text(row["image_name"])
        item_id = stem(name)
        if not name:
            scan.reject(split, "", where, "malformed_row", "empty image_name")
            return
        try:
            flags = {c: one_hot_value(row[c]) for c in SICAP_LABEL_COLUMNS}
            cribriform = one_hot_value(row["G4C"]) if "G4C" in row else -1
        except ValueError as e:
            scan.reject(split, item_id, where, "malformed_row", str(e))
            return
        labels = [c for c, v in flags.items() if v]
        if len(labels) != 1:
            scan.reject(split, item_id, where, "no_label" if not labels else "multiple_labels",
                        f"{len(labels)} of {', '.join(SICAP_LABEL_COLUMNS)} set "
                        f"({', '.join(labels) or 'none'}); expected exactly one")
            return
        slide = item_id.split("_Block_")[0]
        self.add(scan, split, item_id, os.path.join(root, "images", name), where, labels[0],
                 slide_id=slide, patient_id=patients.get(slide, ""), cribriform=cribriform)


def read_xlsx(path: str, required: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(sheet row number, {header: value}) per non-empty row of the first sheet, after
    checking the header has the `required` columns; an unnamed header cell (pandas' index
    column) is named ""."""
    import openpyxl
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # noqa: BLE001 -- openpyxl raises zipfile, KeyError, ... errors
        raise UserError(f"{path}: not a readable .xlsx file ({type(e).__name__}: {e})"
                        ) from None
    try:
        rows = workbook.worksheets[0].iter_rows(values_only=True)
        header = [cell_text(h) for h in next(rows, ())]
        core.require_columns(path, dict.fromkeys(header), required)
        for number, values in enumerate(rows, start=2):
            if any(cell_text(v) for v in values):
                yield number, dict(zip(header, values))
    finally:
        workbook.close()


def cell_text(value: Any) -> str:
    """A cell as text: "" for an empty one, "7" for 7 or 7.0."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def one_hot_value(value: Any) -> int:
    """1 or 0 from an xlsx cell (1, 1.0, "1", True; empty is 0), else ValueError."""
    if not cell_text(value):
        return 0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"label value {value!r} is not 0 or 1") from None
    if number not in (0.0, 1.0):
        raise ValueError(f"label value {value!r} is not 0 or 1")
    return int(number)


def read_patients(path: str) -> dict[str, str]:
    """slide_id -> patient_id from the optional wsi_labels.xlsx ({} when absent)."""
    if not os.path.exists(path):
        return {}
    return {cell_text(row["slide_id"]): cell_text(row["patient_id"])
            for _, row in read_xlsx(path, ("slide_id", "patient_id"))
            if cell_text(row["slide_id"])}
