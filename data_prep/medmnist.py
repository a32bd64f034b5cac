"""MedMNIST v2 and MedMNIST+ (Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark
for 2D and 3D biomedical image classification", Scientific Data 2023; the "+" release adds 64,
128 and 224 px versions of the same images, splits and sample indices): the eleven 2D
multi-class datasets, one config each.

Raw layout (the npz files of zenodo.org/records/10519652, as the ``medmnist`` package stores
them in its root folder), directly in manual_dir::

    pathmnist_224.npz      MedMNIST+ 224 px (what the benchmark uses)
    pathmnist_128.npz      MedMNIST+ 128 px
    pathmnist_64.npz       MedMNIST+ 64 px
    pathmnist.npz          MedMNIST v2, 28 px
    dermamnist_224.npz, octmnist_224.npz, ...

Each npz holds ``{train,val,test}_images`` (uint8, (N, H, W) grey or (N, H, W, 3) RGB) and
``{train,val,test}_labels`` ((N, 1) class indices). A config reads the first file present in
the order 224, 128, 64, 28 px (to build another size, give a manual_dir holding only that
file); the file read and its image size are stored in the metadata (``npz_file``,
``image_size``). A config whose file is absent raises `core.RawMissing`, so ``medmnist``
without ``@config`` builds every dataset whose npz is present.

The arrays are streamed: an npz is a zip of ``.npy`` members, read here a block of rows at a
time through `zipfile` (stored or deflated alike), so pathmnist_224's 13 GB training array is
never in memory at once. Splits: the publisher's train / val (-> validation) / test.

Records: ``id`` (``<dataset>_<train|val|test>_<row index>``, the row of the publisher's
array), ``image``, ``label`` / ``class_name`` / ``source_label`` (the publisher's class index
as a string, "0".."K-1"; see `classification`). A label outside 0..K-1 (or not an integer) is
a reject ``unknown_label``; rows of an images array without a label (or the reverse) are
rejects ``missing_label`` / ``missing_image``.

Class names are those of the ``medmnist`` package's INFO (kept in the metadata as
``medmnist_label_names``), made prompt-ready where needed: RetinaMNIST's grades "0".."4"
become the ICDR diabetic-retinopathy grades, "normal" gets its noun (retina, no pneumonia),
organ names read "left femur", TissueMNIST's names are lower-cased, BreastMNIST's
"normal, benign" reads "normal or benign", BloodMNIST's "immature granulocytes(...)" reads
"immature granulocyte". Prompt templates by modality from `classification.TEMPLATES`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
import zlib
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from data_prep import classification, core
from medclip_jax.errors import UserError

SIZES = (224, 128, 64, 28)  # preference order of the npz files
PUBLISHER_SPLITS = {"train": "train", "val": "validation", "test": "test"}
CHUNK_BYTES = 16 << 20  # rows read from an npz at a time: about this many bytes
SOURCE = ("MedMNIST v2 / MedMNIST+ (Yang et al., Sci. Data 2023; medmnist.com, "
          "zenodo.org/records/10519652)")


@dataclasses.dataclass(eq=False)
class MedMnistConfig(tfds.core.BuilderConfig):
    modality: str = ""  # a key of classification.TEMPLATES
    task: str = ""
    label_names: tuple[str, ...] = ()  # the medmnist package's INFO names, by class index
    class_names: tuple[str, ...] = ()  # prompt-ready


def _config(name: str, modality: str, task: str, label_names: tuple[str, ...],
            renames: dict[str, str] | None = None) -> MedMnistConfig:
    renames = renames or {}
    return MedMnistConfig(
        name=name, description=f"{name} (MedMNIST): {task} from {modality} images.",
        modality=modality, task=task, label_names=label_names,
        class_names=tuple(renames.get(n, n) for n in label_names))


_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
           "liver", "lung-left", "lung-right", "pancreas", "spleen")
_ORGAN_NAMES = {n: " ".join(reversed(n.split("-"))) for n in _ORGANS if "-" in n}
_TISSUE = ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
           "Glomerular endothelial cells", "Interstitial endothelial cells", "Leukocytes",
           "Podocytes", "Proximal Tubule Segments", "Thick Ascending Limb")

CONFIGS = [
    _config("pathmnist", "histopathology", "tissue_type",
            ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
             "normal colon mucosa", "cancer-associated stroma",
             "colorectal adenocarcinoma epithelium")),
    _config("dermamnist", "dermatology", "diagnosis",
            ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
             "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
             "vascular lesions")),
    _config("octmnist", "retinal_oct", "diagnosis",
            ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
            {"normal": "normal retina"}),
    _config("pneumoniamnist", "chest_xray", "pneumonia", ("normal", "pneumonia"),
            {"normal": "no pneumonia"}),
    _config("retinamnist", "fundus", "dr_grade", ("0", "1", "2", "3", "4"),
            {"0": "no diabetic retinopathy",
             "1": "mild non-proliferative diabetic retinopathy",
             "2": "moderate non-proliferative diabetic retinopathy",
             "3": "severe non-proliferative diabetic retinopathy",
             "4": "proliferative diabetic retinopathy"}),
    _config("breastmnist", "breast_ultrasound", "malignancy", ("malignant", "normal, benign"),
            {"normal, benign": "normal or benign"}),
    _config("bloodmnist", "blood_cell", "cell_type",
            ("basophil", "eosinophil", "erythroblast",
             "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
             "lymphocyte", "monocyte", "neutrophil", "platelet"),
            {"immature granulocytes(myelocytes, metamyelocytes and promyelocytes)":
             "immature granulocyte"}),
    _config("tissuemnist", "kidney_cell", "cell_type", _TISSUE,
            {n: n.lower().replace(", ", " or ") for n in _TISSUE}),
    _config("organamnist", "abdominal_ct", "organ", _ORGANS, _ORGAN_NAMES),
    _config("organcmnist", "abdominal_ct", "organ", _ORGANS, _ORGAN_NAMES),
    _config("organsmnist", "abdominal_ct", "organ", _ORGANS, _ORGAN_NAMES),
]


# --------------------------------------------------------------------------------------------
# Streaming .npy members of an npz
# --------------------------------------------------------------------------------------------


def npz_file(manual_dir: str, name: str) -> str:
    """The first of ``<name>_224.npz``, ``_128``, ``_64``, ``<name>.npz`` (28 px) present."""
    candidates = [f"{name}_{s}.npz" if s != 28 else f"{name}.npz" for s in SIZES]
    for candidate in candidates:
        path = os.path.join(manual_dir, candidate)
        if os.path.isfile(path):
            return path
    raise core.RawMissing(f"{manual_dir}: none of {', '.join(candidates)} exists: expected "
                          f"the {name} npz of MedMNIST+ / MedMNIST v2")


def npz_keys(path: str) -> set[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return {n[:-4] for n in z.namelist() if n.endswith(".npy")}
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path}: not a readable npz (zip) file ({e}): download it again"
                        ) from None


def read_npy_header(fp: Any, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the ``.npy`` stream `fp`, left at the first data byte."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as e:
        raise UserError(f"{where}: not a .npy array: {e}") from None
    if dtype.hasobject:
        raise UserError(f"{where}: an object array (pickled data): expected numbers")
    if fortran and len(shape) > 1:
        raise UserError(f"{where}: a Fortran-order array cannot be read by rows")
    if not shape:
        raise UserError(f"{where}: a scalar: expected one row per image")
    return tuple(shape), dtype


def npy_shape(path: str, key: str) -> tuple[tuple[int, ...], np.dtype]:
    with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as fp:
        return read_npy_header(fp, f"{path}:{key}")


def iter_npy_rows(path: str, key: str, chunk_bytes: int = CHUNK_BYTES
                  ) -> Iterator[tuple[int, np.ndarray]]:
    """(index of the first row, block of rows) over the array `key` of the npz `path`; holds
    one block (about `chunk_bytes`) at a time."""
    where = f"{path}:{key}"
    try:
        with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as fp:
            shape, dtype = read_npy_header(fp, where)
            row_bytes = dtype.itemsize * math.prod(shape[1:])
            step = max(1, chunk_bytes // max(1, row_bytes))
            for start in range(0, shape[0], step):
                count = min(step, shape[0] - start)
                data = fp.read(count * row_bytes)
                if len(data) != count * row_bytes:
                    raise UserError(f"{where}: the array ends before row {start + count} of "
                                    f"{shape[0]}: download the file again")
                yield start, np.frombuffer(data, dtype).reshape((count, *shape[1:]))
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise UserError(f"{where}: corrupt npz member ({e}): download the file again") from None


def read_npy(path: str, key: str) -> np.ndarray:
    """A whole (small) array of the npz, e.g. the labels."""
    shape, dtype = npy_shape(path, key)
    blocks = [block for _, block in iter_npy_rows(path, key)]
    return np.concatenate(blocks) if blocks else np.zeros(shape, dtype)


# --------------------------------------------------------------------------------------------
# Items read lazily
# --------------------------------------------------------------------------------------------


class NpzItems:
    """A split's item list whose images are read from the npz only while it is iterated, a
    block at a time: stands in for the list in `core.Scan.items` (len + iteration, the way the
    base class uses it) so a 13 GB array is never in memory. Iterating again reads again."""

    def __init__(self, path: str, key: str, rows: list[int],
                 make_item: Callable[[int, np.ndarray], core.Item]):
        self.path, self.key, self.rows, self.make_item = path, key, rows, make_item

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[core.Item]:
        wanted = iter(self.rows)  # ascending
        row = next(wanted, None)
        for start, block in iter_npy_rows(self.path, self.key):
            while row is not None and row < start + len(block):
                yield self.make_item(row, pixels(block[row - start]))
                row = next(wanted, None)
            if row is None:
                return


def pixels(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8, as PIL takes it ((H, W, 1) loses its channel axis)."""
    return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image


def check_images(path: str, key: str) -> int:
    """The number of images of `key`; a one-line error unless uint8 (N, H, W[, 1|3])."""
    shape, dtype = npy_shape(path, key)
    grey_or_rgb = len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3))
    if dtype != np.uint8 or not grey_or_rgb:
        raise UserError(f"{path}:{key}: {dtype} array of shape {shape}: expected uint8 "
                        f"images (N, H, W) or (N, H, W, 3)")
    return shape[0]


def label_values(path: str, key: str) -> np.ndarray:
    """The labels as a 1-D float array ((N,) or (N, 1) in the file)."""
    labels = read_npy(path, key)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.dtype.kind not in "biuf":
        raise UserError(f"{path}:{key}: {labels.dtype} array of shape {labels.shape}: "
                        f"expected one class index per image, shape (N, 1)")
    return labels.astype(np.float64)


class MedMnist(core.ManualImageBuilder):
    """MedMNIST v2 / MedMNIST+: 2D biomedical image classification, official splits."""

    name = "medmnist"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = CONFIGS
    BUILD_ALL_CONFIGS = True  # `medmnist` without @config: every dataset whose npz is present
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "the MedMNIST npz files (zenodo.org/records/10519652), e.g. pathmnist_224.npz "
        "(MedMNIST+, 224 px) or pathmnist.npz (28 px), directly in manual_dir")

    def record_features(self) -> dict[str, Any]:
        return classification.label_features(self.builder_config.class_names)

    def source_labels(self) -> dict[str, int]:
        return {str(i): i for i in range(len(self.builder_config.class_names))}

    def metadata(self) -> dict[str, Any]:
        c = self.builder_config
        return classification.task_metadata(
            c.task, c.class_names, classification.templates(c.modality), self.source_labels(),
            "official MedMNIST splits: train / val (as validation) / test", SOURCE,
            dataset=c.name, modality=c.modality, medmnist_label_names=list(c.label_names))

    def scan(self, manual_dir: str) -> core.Scan:
        path = npz_file(manual_dir, self.builder_config.name)
        expected = {f"{s}_{kind}" for s in PUBLISHER_SPLITS for kind in ("images", "labels")}
        missing = sorted(expected - npz_keys(path))
        if missing:
            raise UserError(f"{path}: no array {', '.join(missing)}: expected "
                            f"{', '.join(sorted(expected))}")
        scan = core.Scan()
        for publisher_split, split in PUBLISHER_SPLITS.items():
            self.scan_split(scan, path, publisher_split, split)
        size = npy_shape(path, "train_images")[0][1]
        self.info.metadata.update({"npz_file": os.path.basename(path), "image_size": size})
        return scan

    def scan_split(self, scan: core.Scan, path: str, publisher_split: str, split: str) -> None:
        images_key, labels_key = f"{publisher_split}_images", f"{publisher_split}_labels"
        num_images = check_images(path, images_key)
        labels = label_values(path, labels_key)
        class_names, source_labels = self.builder_config.class_names, self.source_labels()
        name = self.builder_config.name

        def item_id(row: int) -> str:
            return f"{name}_{publisher_split}_{row:06d}"

        def where(row: int) -> str:
            return f"{path}:{images_key}[{row}]"

        known = (labels >= 0) & (labels < len(class_names)) & (labels == np.floor(labels))
        rows = []
        for row in range(max(num_images, len(labels))):
            if row >= len(labels):
                scan.reject(split, item_id(row), where(row), "missing_label",
                            f"{labels_key} has {len(labels)} rows, {images_key} {num_images}")
            elif row >= num_images:
                scan.reject(split, item_id(row), where(row), "missing_image",
                            f"{images_key} has {num_images} rows, {labels_key} {len(labels)}")
            elif known[row]:
                rows.append(row)
            else:
                scan.reject(split, item_id(row), where(row), "unknown_label",
                            f"label {labels[row]:g} is not one of 0..{len(class_names) - 1}")

        def make_item(row: int, image: np.ndarray) -> core.Item:
            fields = classification.label_fields(class_names, source_labels,
                                                 str(int(labels[row])))
            return core.Item(split, item_id(row), image, fields, path=where(row))

        scan.items[split] = NpzItems(path, images_key, rows, make_item)  # type: ignore[assignment]
