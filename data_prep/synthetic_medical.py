"""The embedded synthetic dataset: procedurally drawn chest radiographs and H&E patches.

Why it exists: the real corpora (ROCO, MIMIC-CXR, PMC-OA, Quilt) need credentials and days of
downloading, yet every stage of the pipeline (builder -> ArrayRecord -> grain -> training ->
zero-shot / retrieval / VQA) should run end to end on any machine in seconds. The images are
simple but the findings are visually distinct, so a contrastive model can actually learn them.

Two modalities, balanced (even record index: chest X-ray, odd: histopathology):

* ``chest_xray``: grey radiographs (stored as 3 equal channels) with one finding. Sides follow the
  radiological convention: the patient's right lung is on the image's left.
* ``histopathology``: RGB H&E patches of six colorectal tissue types (stain via Beer-Lambert
  optical density of haematoxylin and eosin concentration maps, with stain variation).

Every record is generated from ``np.random.default_rng([seed, split_index, record_index])``, so
records are independent of each other and of generation order, and a config always produces
byte-identical files. TFDS writes them as ArrayRecord without TensorFlow (images are handed over
as PNG bytes encoded with PIL).

Build: ``python -m data_prep.synthetic_medical --data_dir data/tfds [--config tiny]`` or
``build(data_dir, "tiny")``, which returns the dataset directory. Read it with
``tfds.builder_from_directory(dataset_dir).as_data_source(split)``: text fields come back as
bytes, ``label`` as int, ``image`` as a decoded uint8 (H, W, 3) array (PIL), or as PNG bytes with
``decoders={"image": tfds.decode.SkipDecoding()}``; ``vqa`` is a dict of three lists of bytes.
The zero-shot classes and prompt templates are in ``builder.info.metadata["tasks"]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import sys
import time
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

MODALITIES: tuple[str, ...] = ("chest_xray", "histopathology")
SPLITS: tuple[str, ...] = ("train", "validation", "test")

CLASS_NAMES: dict[str, list[str]] = {
    "chest_xray": ["no finding", "nodule", "pleural effusion", "cardiomegaly", "pneumothorax"],
    "histopathology": ["adipose", "lymphocytes", "mucus", "normal colon mucosa",
                       "cancer-associated stroma", "colorectal adenocarcinoma epithelium"],
}

# Zero-shot prompt templates ("{}" takes a class name); also stored in the dataset metadata.
PROMPT_TEMPLATES: dict[str, list[str]] = {
    "chest_xray": [
        "a chest x-ray showing {}.",
        "a frontal radiograph with {}.",
        "a chest radiograph with {}.",
        "PA chest X-ray: {}.",
        "findings: {}.",
        "a photo of a chest x-ray with {}.",
    ],
    "histopathology": [
        "an H&E image of {}.",
        "a histopathology patch of {} tissue.",
        "an H&E stained section showing {}.",
        "a microscopy image of {}.",
        "histology of colorectal tissue: {}.",
        "a pathology slide patch of {}.",
    ],
}

# Lower-case substrings of which every caption of a class contains at least one (tests use it).
CLASS_SYNONYMS: dict[str, dict[str, list[str]]] = {
    "chest_xray": {
        "no finding": ["no finding", "normal", "no acute"],
        "nodule": ["nodule"],
        "pleural effusion": ["pleural effusion"],
        "cardiomegaly": ["cardiomegaly"],
        "pneumothorax": ["pneumothorax"],
    },
    "histopathology": {
        "adipose": ["adipose"],
        "lymphocytes": ["lymphocyte", "lymphocytic"],
        "mucus": ["mucus", "mucin"],
        "normal colon mucosa": ["normal colon mucosa", "normal colonic mucosa"],
        "cancer-associated stroma": ["stroma"],
        "colorectal adenocarcinoma epithelium": ["adenocarcinoma"],
    },
}

_ID_PREFIX = {"chest_xray": "cxr", "histopathology": "histo"}


# --------------------------------------------------------------------------------------------
# Config and builder
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class SyntheticMedicalConfig(tfds.core.BuilderConfig):
    """Split sizes, image side and seed; all data is a pure function of these."""

    train_size: int = 6000
    validation_size: int = 500
    test_size: int = 1000
    image_size: int = 64
    seed: int = 0

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.train_size, "validation": self.validation_size,
                "test": self.test_size}


def custom_config(train_size: int, validation_size: int, test_size: int, image_size: int,
                  seed: int) -> SyntheticMedicalConfig:
    """A config for arbitrary sizes, named after its parameters so distinct ones never clash."""
    name = f"custom_{train_size}_{validation_size}_{test_size}_{image_size}_{seed}"
    return SyntheticMedicalConfig(
        name=name, description="Custom sizes.", train_size=train_size,
        validation_size=validation_size, test_size=test_size, image_size=image_size, seed=seed)


DEFAULT_CONFIG = SyntheticMedicalConfig(
    name="default", description="Demo scale: 6000/500/1000 records at 64x64.",
    train_size=6000, validation_size=500, test_size=1000, image_size=64, seed=0)
TINY_CONFIG = SyntheticMedicalConfig(
    name="tiny", description="Test scale: 96/32/48 records at 32x32.",
    train_size=96, validation_size=32, test_size=48, image_size=32, seed=1)


def metadata() -> dict[str, Any]:
    """The zero-shot task description stored in dataset_info (read back as info.metadata)."""
    return {"tasks": {m: {"class_names": list(CLASS_NAMES[m]),
                          "templates": list(PROMPT_TEMPLATES[m])} for m in MODALITIES}}


class SyntheticMedical(tfds.core.GeneratorBasedBuilder):
    """Synthetic chest radiographs and colorectal H&E patches with captions and VQA pairs.

    Deterministic procedural data for running the vision-language pipeline without real
    corpora. Records alternate between the two modalities; classes cycle within a modality.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [DEFAULT_CONFIG, TINY_CONFIG]
    DEFAULT_CONFIG_NAME = "default"

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. TFDS's own lookup needs the `importlib_resources` backport, which is not
        a dependency here (without this override, building from an imported module fails)."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "caption": tfds.features.Text(),
            "modality": tfds.features.Text(),
            "label": tfds.features.Scalar(np.int64),
            "class_name": tfds.features.Text(),
            "vqa": tfds.features.Sequence({
                "question": tfds.features.Text(),
                "answer": tfds.features.Text(),
                "answer_type": tfds.features.Text(),
            }),
        })
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=features,
            metadata=tfds.core.MetadataDict(metadata()),
            # Keep record i == generated example i; consumers (grain) shuffle themselves.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict]]]:
        del dl_manager  # Nothing to download.
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        config: SyntheticMedicalConfig = self.builder_config
        for index in range(config.split_sizes()[split]):
            yield index, make_record(config.seed, split, index, config.image_size)


def build(data_dir: str, config: str | SyntheticMedicalConfig = "default") -> str:
    """Build the dataset under ``data_dir`` unless already there; return its dataset directory.

    The returned folder (``<data_dir>/synthetic_medical/<config>/1.0.0``) holds
    dataset_info.json and the ArrayRecord shards; pass it to ``tfds.builder_from_directory``.
    """
    builder = SyntheticMedical(config=config, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder.data_dir


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def record_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The per-record generator: independent of every other record and of build order."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def record_modality(index: int) -> str:
    return MODALITIES[index % len(MODALITIES)]


def record_label(index: int) -> int:
    """Classes cycle within each modality, so every split is class-balanced."""
    modality = record_modality(index)
    return (index // len(MODALITIES)) % len(CLASS_NAMES[modality])


def make_example(seed: int, split: str, index: int, image_size: int) -> dict[str, Any]:
    """One record with the image as a uint8 (H, W, 3) array (for tests and analysis)."""
    rng = record_rng(seed, split, index)
    modality = record_modality(index)
    label = record_label(index)
    class_name = CLASS_NAMES[modality][label]
    if modality == "chest_xray":
        finding = sample_cxr_finding(rng, class_name)
        image = render_chest_xray(rng, image_size, finding)
        caption = cxr_caption(rng, finding)
        vqa = cxr_vqa(rng, finding)
    else:
        image = render_histopathology(rng, image_size, class_name)
        caption = histo_caption(rng, class_name)
        vqa = histo_vqa(rng, class_name)
    return {
        "id": f"{_ID_PREFIX[modality]}-{split}-{index:06d}",
        "image": image,
        "caption": caption,
        "modality": modality,
        "label": np.int64(label),
        "class_name": class_name,
        "vqa": vqa,
    }


def make_record(seed: int, split: str, index: int, image_size: int) -> dict[str, Any]:
    """One record ready for TFDS: the image as PNG bytes (TFDS needs TF to encode arrays)."""
    example = make_example(seed, split, index, image_size)
    example["image"] = encode_png(example["image"])
    return example


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Shared drawing helpers (all vectorised; coordinates are in [0, 1] image units)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) in [0, 1], x to the right, y down."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.meshgrid(t, t)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@functools.lru_cache(maxsize=64)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells + 1) smoothstep interpolation weights: value noise is W @ grid @ W.T."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * cells
    i0 = np.minimum(np.floor(t).astype(np.int64), cells - 1)
    f = t - i0
    f = f * f * (3.0 - 2.0 * f)
    w = np.zeros((size, cells + 1), np.float32)
    w[np.arange(size), i0] = 1.0 - f
    w[np.arange(size), i0 + 1] = f
    w.flags.writeable = False
    return w


def smooth_noise(rng: np.random.Generator, size: int, cells_y: int, cells_x: int | None = None
                 ) -> np.ndarray:
    """Smooth value noise in [0, 1] with about ``cells`` bumps per side (anisotropic allowed)."""
    cells_x = cells_y if cells_x is None else cells_x
    grid = rng.random((cells_y + 1, cells_x + 1), dtype=np.float32)
    return _interp_matrix(size, cells_y) @ grid @ _interp_matrix(size, cells_x).T


def ellipse_radius(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float
                   ) -> np.ndarray:
    """Normalised elliptical radius: < 1 inside the ellipse."""
    return np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)


def soft_inside(radius: np.ndarray, scale: float, size: int) -> np.ndarray:
    """Anti-aliased mask of ``radius < 1`` with a ~1 pixel edge (``scale``: the axis length)."""
    edge = 1.0 / max(scale * size, 1e-6)
    return np.clip((1.0 - radius) / edge + 0.5, 0.0, 1.0)


@functools.lru_cache(maxsize=32)
def _cell_neighbours(size: int, cell: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Pixel centres (y, x) and, per pixel, the flat indices (9, size, size) of its 3x3
    neighbour cells in an (n, n) grid of ``cell``-pixel cells with a one-cell border."""
    n = int(np.ceil(size / cell)) + 2
    pix = np.arange(size, dtype=np.float32) + 0.5
    py, px = np.meshgrid(pix, pix, indexing="ij")
    iy = np.floor(py / cell).astype(np.int64) + 1
    ix = np.floor(px / cell).astype(np.int64) + 1
    offsets = np.array([-1, 0, 1])
    ny = iy[None, None] + offsets[:, None, None, None]
    nx = ix[None, None] + offsets[None, :, None, None]
    flat = (ny * n + nx).reshape(9, size, size)
    for array in (py, px, flat):
        array.flags.writeable = False
    return py, px, flat, n


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], count: int) -> np.ndarray:
    low, high = bounds
    return np.float32(low) + np.float32(high - low) * rng.random(count, dtype=np.float32)


def jittered_points(rng: np.random.Generator, n: int, cell: float, jitter: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One point per cell of the (n, n) grid, displaced by up to ``jitter`` cells (flat)."""
    base = (np.arange(n, dtype=np.float32) - 1 + 0.5) * np.float32(cell)
    offset = (rng.random((2, n, n), dtype=np.float32) - 0.5) * np.float32(jitter * cell)
    return (base[:, None] + offset[0]).ravel(), (base[None, :] + offset[1]).ravel()


@functools.lru_cache(maxsize=32)
def _quadrant_cells(size: int, cell: float) -> np.ndarray:
    """Per pixel row (or column), the two nearest cells' indices in a bordered grid: (2 * size,).

    A pixel in the first half of its cell looks at that cell and the previous one, otherwise at
    that cell and the next; rows and columns are independent, so 2x2 cells per pixel.
    """
    pix = np.arange(size, dtype=np.float64) + 0.5
    first = np.floor(pix / cell - 0.5).astype(np.int64) + 1
    indices = np.stack([first, first + 1]).ravel()
    indices.flags.writeable = False
    return indices


def blob_field(rng: np.random.Generator, size: int, cell: float, *, presence: float,
               radius: tuple[float, float], aspect: tuple[float, float] = (1.0, 1.0),
               angle: float | None = None, strength: tuple[float, float] = (1.0, 1.0),
               jitter: float = 0.8) -> np.ndarray:
    """Elliptical blobs (nuclei), at most one per cell of a jittered grid, max-composited.

    ``radius`` is the long semi-axis in cell units, ``aspect`` long/short, ``angle`` a fixed
    orientation (radians, slightly perturbed per blob) or None for random. Returns per-pixel
    anti-aliased coverage times each blob's strength. Only the 2x2 nearest cells are looked at
    (half the work of 3x3), which is exact while ``radius[1] <= 1 - jitter / 2``.
    """
    if radius[1] > 1.0 - jitter / 2 + 1e-6:
        raise ValueError(f"blob radius {radius[1]} too large for jitter {jitter}")
    n = int(np.ceil(size / cell)) + 2
    count = n * n
    cy, cx = jittered_points(rng, n, cell, jitter)
    a = _uniform(rng, radius, count) * np.float32(cell)
    b = np.maximum(a / _uniform(rng, aspect, count), np.float32(0.6))
    if angle is None:
        theta = _uniform(rng, (0.0, float(np.pi)), count)
    else:
        theta = np.float32(angle) + np.float32(0.2) * rng.standard_normal(count, np.float32)
    amp = (rng.random(count, dtype=np.float32) < presence) * _uniform(rng, strength, count)
    # Per-blob quantities in one (8, n, n) table, gathered once: rows, then columns.
    cos, sin = np.cos(theta), np.sin(theta)
    table = np.stack([cy, cx, cos / a, sin / a, cos / b, sin / b, b, amp]).reshape(8, n, n)
    near = _quadrant_cells(size, cell)
    gathered = np.take(np.take(table, near, axis=1), near, axis=2)
    g_cy, g_cx, ca, sa, cb, sb, g_b, g_amp = gathered.reshape(8, 2, size, 2, size)
    pix = np.arange(size, dtype=np.float32) + np.float32(0.5)
    dy = pix[:, None, None] - g_cy
    dx = pix - g_cx
    u = dx * ca + dy * sa
    v = dy * cb - dx * sb
    coverage = np.clip((1.0 - np.sqrt(u * u + v * v)) * g_b + 0.5, 0.0, 1.0) * g_amp
    return coverage.max(axis=(0, 2))


def voronoi_distances(rng: np.random.Generator, size: int, cell: float, jitter: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distance (pixels) to the nearest and second-nearest site, and the nearest's offset."""
    py, px, flat, n = _cell_neighbours(size, cell)
    cy, cx = jittered_points(rng, n, cell, jitter)
    dy = py - cy[flat]
    dx = px - cx[flat]
    d = np.sqrt(dx * dx + dy * dy)
    nearest = np.argmin(d, axis=0)[None]
    d1 = np.take_along_axis(d, nearest, 0)[0]
    d2 = np.partition(d, 1, axis=0)[1]
    return (d1, d2, np.take_along_axis(dy, nearest, 0)[0],
            np.take_along_axis(dx, nearest, 0)[0])


# --------------------------------------------------------------------------------------------
# Chest X-ray
# --------------------------------------------------------------------------------------------


def sample_cxr_finding(rng: np.random.Generator, class_name: str) -> dict[str, str]:
    """Side (patient's left/right) and size for the findings where they make sense."""
    side = str(rng.choice(["left", "right"]))
    size = str(rng.choice(["small", "large"]))
    if class_name == "no finding":
        return {"class_name": class_name, "side": "", "size": "", "zone": ""}
    if class_name == "cardiomegaly":
        return {"class_name": class_name, "side": "", "size": size, "zone": ""}
    zone = str(rng.choice(["upper", "middle", "lower"])) if class_name == "nodule" else ""
    return {"class_name": class_name, "side": side, "size": size, "zone": zone}


def render_chest_xray(rng: np.random.Generator, size: int, finding: dict[str, str]
                      ) -> np.ndarray:
    """A frontal radiograph (bright = dense) as uint8 (size, size, 3) with equal channels."""
    x, y = _grid(size)
    cx = 0.5 + rng.normal(0, 0.012)
    lung_dx = rng.uniform(0.19, 0.22)
    lung_ax, lung_ay = rng.uniform(0.15, 0.175), rng.uniform(0.29, 0.33)
    lung_cy = rng.uniform(0.47, 0.51)
    # Patient's right lung is on the image's left.
    lungs = {"right": cx - lung_dx, "left": cx + lung_dx}

    body_r = ellipse_radius(x, y, cx, 0.62, rng.uniform(0.43, 0.47), 0.62)
    image = 0.06 + 0.36 * soft_inside(body_r, 0.45, size)
    # Clavicles and ribs: thin curved bright bands over the thorax.
    wall = np.abs(x - cx)
    rib_phase = rng.uniform(6.5, 7.5) * (y + 0.9 * (wall - 0.12) ** 2) + rng.random()
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * rib_phase)) ** 6
    clavicle = np.exp(-((y - 0.17 - 0.25 * (wall - 0.12)) / 0.02) ** 2) * (wall < 0.33)

    lung_mask = np.zeros_like(x)
    tissue_mask = np.zeros_like(x)  # lung parenchyma with vessel markings (not pneumothorax)
    lucent = np.zeros_like(x)
    pleural_line = np.zeros_like(x)
    for side, lcx in lungs.items():
        r = ellipse_radius(x, y, lcx, lung_cy, lung_ax, lung_ay)
        inside = soft_inside(r, lung_ax, size)
        lung_mask = np.maximum(lung_mask, inside)
        if finding["class_name"] == "pneumothorax" and finding["side"] == side:
            lateral = -1.0 if side == "right" else 1.0
            shrink_x, shrink_y = (0.55, 0.72) if finding["size"] == "large" else (0.78, 0.88)
            ccx = lcx - lateral * lung_ax * (1 - shrink_x)
            ccy = lung_cy + lung_ay * (1 - shrink_y)
            rc = ellipse_radius(x, y, ccx, ccy, lung_ax * shrink_x, lung_ay * shrink_y)
            collapsed = soft_inside(rc, lung_ax * shrink_x, size) * inside
            tissue_mask = np.maximum(tissue_mask, collapsed * 1.15)
            lucent = np.maximum(lucent, inside - collapsed)
            px_dist = np.abs(rc - 1.0) * lung_ax * shrink_x * size
            pleural_line = np.maximum(pleural_line, np.clip(1.0 - px_dist, 0, 1) * inside)
        else:
            tissue_mask = np.maximum(tissue_mask, inside)

    # Vessel markings: fine smooth noise, denser towards the hila.
    hilum = np.exp(-((wall - 0.1) / 0.2) ** 2)
    markings = (smooth_noise(rng, size, 9) - 0.5) * 0.09 + 0.05 * hilum
    image = image - 0.27 * lung_mask + tissue_mask * markings - 0.08 * lucent
    image = image + 0.08 * pleural_line
    image = image + (0.07 * ribs + 0.12 * clavicle) * soft_inside(body_r, 0.45, size)

    # Mediastinum / spine and the heart (shifted to the patient's left = image right).
    spine = np.clip(1.0 - (wall / 0.065) ** 4, 0, 1) * (y > 0.05)
    image = np.maximum(image, 0.5 * spine + 0.05)
    heart_ax = rng.uniform(0.145, 0.165)
    heart_ay = rng.uniform(0.12, 0.14)
    if finding["class_name"] == "cardiomegaly":
        heart_ax *= 1.55 if finding["size"] == "large" else 1.4
        heart_ay *= 1.2
    heart_cx, heart_cy = cx + 0.35 * heart_ax, lung_cy + 0.55 * lung_ay
    heart = soft_inside(ellipse_radius(x, y, heart_cx, heart_cy, heart_ax, heart_ay),
                        heart_ay, size)
    image = image * (1 - heart) + 0.6 * heart

    if finding["class_name"] == "nodule":
        image = _add_nodule(rng, image, size, finding, lungs[finding["side"]], lung_cy,
                            lung_ax, lung_ay)
    elif finding["class_name"] == "pleural effusion":
        image = _add_effusion(rng, image, size, finding, lungs[finding["side"]], lung_cy,
                              lung_ax, lung_ay)

    image = image + np.float32(0.018) * rng.standard_normal(image.shape, np.float32)
    gain, offset = rng.uniform(0.88, 1.12), rng.normal(0, 0.025)
    gray = np.clip((image * gain + offset) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _add_nodule(rng: np.random.Generator, image: np.ndarray, size: int,
                finding: dict[str, str], lcx: float, lcy: float, ax: float, ay: float
                ) -> np.ndarray:
    """A bright round blob in the lung zone named by the finding, lateral to the heart."""
    x, y = _grid(size)
    lateral = -1.0 if finding["side"] == "right" else 1.0
    zone_y = {"upper": -0.5, "middle": 0.0, "lower": 0.38}[finding["zone"]]
    ny = lcy + (zone_y + rng.uniform(-0.1, 0.1)) * ay
    nx = lcx + lateral * rng.uniform(0.0, 0.35) * ax
    radius = (0.085 if finding["size"] == "large" else 0.05) * rng.uniform(0.9, 1.1)
    r = ellipse_radius(x, y, nx, ny, radius, radius)
    blob = np.sqrt(np.clip(1.0 - r * r, 0, 1)) * soft_inside(r, radius, size)
    return image + 0.42 * blob


def _add_effusion(rng: np.random.Generator, image: np.ndarray, size: int,
                  finding: dict[str, str], lcx: float, lcy: float, ax: float, ay: float
                  ) -> np.ndarray:
    """Dense fluid filling the lung base, its meniscus rising towards the chest wall."""
    x, y = _grid(size)
    lateral = -1.0 if finding["side"] == "right" else 1.0
    level = lcy + (rng.uniform(-0.15, 0.1) if finding["size"] == "large"
                   else rng.uniform(0.4, 0.55)) * ay
    towards_wall = np.clip(lateral * (x - lcx) / ax + 1.0, 0, 2.2) / 2.0
    top = level - 0.11 * towards_wall ** 2
    below = np.clip((y - top) * size + 0.5, 0, 1)
    region = soft_inside(ellipse_radius(x, y, lcx, lcy + 0.04, ax * 1.12, ay * 1.1), ax, size)
    fluid = below * region
    density = 0.55 + 0.1 * np.clip((y - level) / ay, 0, 1)
    return image * (1 - fluid) + density * fluid


_SIDE_WORDS = {"left": ["left", "left-sided"], "right": ["right", "right-sided"]}


def cxr_finding_phrase(rng: np.random.Generator, finding: dict[str, str]) -> str:
    """A noun phrase (with article) naming the finding, its size and side."""
    name, side, size, zone = (finding["class_name"], finding["side"], finding["size"],
                              finding["zone"])
    if name == "nodule":
        options = [f"a {size} nodule in the {side} {zone} lung",
                   f"a {size} {side} {zone} zone pulmonary nodule",
                   f"a {size} nodule in the {zone} zone of the {side} lung",
                   f"a {side} lung nodule, {size}, in the {zone} zone"]
    elif name == "pleural effusion":
        options = [f"a {size} {side} pleural effusion",
                   f"a {size} {side}-sided pleural effusion",
                   f"a {side} pleural effusion, {size}, blunting the costophrenic angle",
                   f"a {size} pleural effusion on the {side}"]
    elif name == "pneumothorax":
        options = [f"a {size} {side} pneumothorax",
                   f"a {size} {side}-sided pneumothorax with a visible pleural line",
                   f"a {side} pneumothorax, {size}",
                   f"a {size} pneumothorax on the {side}"]
    else:
        degree = "marked" if size == "large" else "mild"
        options = ["cardiomegaly", f"{degree} cardiomegaly",
                   "cardiomegaly with an enlarged cardiac silhouette",
                   f"an enlarged heart ({degree} cardiomegaly)"]
    return str(rng.choice(options))


_CXR_TEMPLATES = [
    "Frontal chest radiograph showing {}.",
    "PA chest X-ray: {}.",
    "Chest radiograph demonstrates {}.",
    "Findings: {}. No other acute process.",
    "AP view of the chest with {}.",
    "There is {} on this chest X-ray.",
    "Chest X-ray with {}.",
    "Impression: {}.",
    "Radiograph of the chest reveals {}.",
    "Posteroanterior chest film: {}.",
]
_CXR_NORMAL_CAPTIONS = [
    "No acute cardiopulmonary abnormality.",
    "Normal frontal chest radiograph.",
    "PA chest X-ray: no finding. The lungs are clear.",
    "Chest radiograph within normal limits; no finding.",
    "Clear lungs and normal heart size. Normal chest X-ray.",
    "Frontal chest radiograph showing no acute abnormality.",
    "Impression: normal chest, no finding.",
    "AP chest X-ray: normal lungs, no acute disease.",
    "There is no finding on this chest X-ray.",
]


def cxr_caption(rng: np.random.Generator, finding: dict[str, str]) -> str:
    if finding["class_name"] == "no finding":
        return str(rng.choice(_CXR_NORMAL_CAPTIONS))
    return _sentence(str(rng.choice(_CXR_TEMPLATES)).format(cxr_finding_phrase(rng, finding)))


def _sentence(text: str) -> str:
    """Capitalise the first letter (templates may start with the finding phrase)."""
    return text[:1].upper() + text[1:]


def _qa(question: str, answer: str, answer_type: str) -> dict[str, str]:
    return {"question": question, "answer": answer.lower(), "answer_type": answer_type}


def cxr_vqa(rng: np.random.Generator, finding: dict[str, str]) -> list[dict[str, str]]:
    """2-4 QA pairs: the abnormality, a yes/no probe, then side/size/normality as available."""
    name = finding["class_name"]
    abnormal = CLASS_NAMES["chest_xray"][1:]
    probe = name if name != "no finding" and rng.random() < 0.5 else str(rng.choice(abnormal))
    pairs = [_qa("What is the abnormality?", name, "open"),
             _qa(f"Is there a {probe}?" if probe != "cardiomegaly" else "Is there cardiomegaly?",
                 "yes" if probe == name else "no", "closed")]
    extra = [_qa("Is this chest X-ray normal?", "yes" if name == "no finding" else "no",
                 "closed")]
    if finding["side"]:
        extra.append(_qa("Which side is affected?", finding["side"], "open"))
    if finding["size"] and name != "cardiomegaly":
        extra.append(_qa(f"What is the size of the {name}?", finding["size"], "open"))
    if finding["zone"]:
        extra.append(_qa("In which zone of the lung is the nodule?", finding["zone"], "open"))
    count = int(rng.integers(0, min(2, len(extra)) + 1))
    chosen = rng.permutation(len(extra))[:count]
    return pairs + [extra[i] for i in sorted(chosen)]


# --------------------------------------------------------------------------------------------
# Histopathology (H&E)
# --------------------------------------------------------------------------------------------

# Optical density per unit stain (Ruifrok & Johnston's H&E vectors, RGB).
_HEMATOXYLIN_OD = np.array([0.65, 0.70, 0.29], np.float32)
_EOSIN_OD = np.array([0.07, 0.99, 0.11], np.float32)


def render_histopathology(rng: np.random.Generator, size: int, class_name: str) -> np.ndarray:
    """An RGB H&E patch as uint8 (size, size, 3): stain concentrations -> Beer-Lambert colour."""
    render = _TISSUE_RENDERERS[class_name]
    hema, eosin = render(rng, size)
    hema = hema + np.float32(0.04) * rng.standard_normal(hema.shape, np.float32)
    eosin = eosin + np.float32(0.04) * rng.standard_normal(eosin.shape, np.float32)
    h_vec = _HEMATOXYLIN_OD * rng.uniform(0.85, 1.15) + rng.normal(0, 0.03, 3)
    e_vec = _EOSIN_OD * rng.uniform(0.85, 1.15) + rng.normal(0, 0.03, 3)
    od = (np.clip(hema, 0, None)[..., None] * h_vec * 1.5
          + np.clip(eosin, 0, None)[..., None] * e_vec * 1.5 + 0.03)
    rgb = np.exp(-od) * rng.uniform(0.95, 1.0)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _scaled(size: int, fraction: float, minimum: float) -> float:
    """A structure size in pixels: a fraction of the patch, but never below ``minimum``."""
    return max(size * fraction, minimum)


def _adipose(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Large empty (white) fat cells outlined by thin pink membranes."""
    d1, d2, _, _ = voronoi_distances(rng, size, _scaled(size, 0.3, 9.0), jitter=0.8)
    membrane = np.clip(1.6 - (d2 - d1), 0, 1)
    nuclei = blob_field(rng, size, _scaled(size, 0.12, 4.0), presence=0.08,
                        radius=(0.3, 0.4), aspect=(1.8, 2.5)) * membrane
    return 0.02 + 1.3 * nuclei, 0.03 + 0.5 * membrane


def _lymphocytes(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sheets of small, round, very dark nuclei on a faint pink background."""
    nuclei = blob_field(rng, size, _scaled(size, 0.05, 2.2), presence=0.9,
                        radius=(0.36, 0.44), strength=(1.6, 2.1), jitter=0.6)
    return 0.12 + nuclei, 0.25 * (1 - 0.5 * nuclei / 2.1) + 0.05


def _mucus(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pale bluish-pink wisps with a few floating cells."""
    wisps = smooth_noise(rng, size, 3, 10) if rng.random() < 0.5 else smooth_noise(rng, size,
                                                                                   10, 3)
    wisps = wisps * smooth_noise(rng, size, 5)
    cells = blob_field(rng, size, _scaled(size, 0.15, 4.0), presence=0.08, radius=(0.15, 0.22),
                       strength=(0.8, 1.2))
    return 0.12 + 0.35 * wisps + cells, 0.06 + 0.2 * wisps


def _normal_mucosa(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Regular round crypts: pale lumen, epithelial ring with basal nuclei, pink lamina."""
    cell = _scaled(size, 0.33, 10.0)
    d1, _, dy, dx = voronoi_distances(rng, size, cell, jitter=0.25)
    radial = d1 / (0.43 * cell)
    angle = np.arctan2(dy, dx)
    lumen = radial < 0.38
    epithelium = (radial >= 0.38) & (radial < 1.0)
    nuclear_band = (radial > 0.72) & (radial < 0.98) & (np.cos(angle * 11) > -0.1)
    lamina = radial >= 1.0
    sparse = blob_field(rng, size, _scaled(size, 0.08, 3.0), presence=0.35, radius=(0.2, 0.3))
    goblet = smooth_noise(rng, size, 8) > 0.6
    hema = (0.03 * lumen + epithelium * np.where(goblet, 0.15, 0.3) + 1.5 * nuclear_band
            + lamina * (0.25 + 1.2 * sparse))
    eosin = 0.05 * lumen + epithelium * np.where(goblet, 0.1, 0.35) + 0.45 * lamina
    return hema.astype(np.float32), eosin.astype(np.float32)


def _stroma(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Wavy parallel pink collagen fibres with sparse elongated (spindle) nuclei."""
    x, y = _grid(size)
    theta = rng.uniform(0, np.pi)
    period = _scaled(size, 0.07, 2.6) / size
    phase = (x * np.cos(theta) + y * np.sin(theta)) / period + 1.5 * smooth_noise(rng, size, 3)
    fibres = (0.5 + 0.5 * np.cos(2 * np.pi * phase)) ** 2
    nuclei = blob_field(rng, size, _scaled(size, 0.14, 5.0), presence=0.3, radius=(0.45, 0.55),
                        aspect=(3.5, 4.5), angle=theta + np.pi / 2, strength=(1.3, 1.7))
    return 0.08 + nuclei, 0.3 + 0.4 * fibres


def _tumour(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crowded, large, pleomorphic hyperchromatic nuclei with irregular lumina."""
    nuclei = blob_field(rng, size, _scaled(size, 0.075, 3.0), presence=0.9, radius=(0.4, 0.58),
                        aspect=(1.0, 1.9), strength=(1.0, 1.9), jitter=0.8)
    lumina = np.clip((smooth_noise(rng, size, 4) - 0.72) * 10, 0, 1)
    hema = (0.35 + nuclei) * (1 - lumina) + 0.05
    eosin = 0.35 * (1 - lumina) + 0.12 * lumina
    return hema.astype(np.float32), eosin.astype(np.float32)


_TISSUE_RENDERERS = {
    "adipose": _adipose,
    "lymphocytes": _lymphocytes,
    "mucus": _mucus,
    "normal colon mucosa": _normal_mucosa,
    "cancer-associated stroma": _stroma,
    "colorectal adenocarcinoma epithelium": _tumour,
}

_TISSUE_PHRASES: dict[str, list[str]] = {
    "adipose": ["adipose tissue", "mature adipose tissue with large empty fat cells",
                "adipose tissue (fat)", "adipose tissue with thin adipocyte membranes"],
    "lymphocytes": ["lymphocytes", "a dense lymphocytic infiltrate",
                    "sheets of small round lymphocytes", "aggregated lymphocytes"],
    "mucus": ["mucus", "pools of extracellular mucus", "pale wispy mucus",
              "mucin (mucus) with few floating cells"],
    "normal colon mucosa": ["normal colon mucosa", "normal colon mucosa with regular crypts",
                            "normal colonic mucosa with evenly spaced glands",
                            "benign normal colon mucosa"],
    "cancer-associated stroma": ["cancer-associated stroma",
                                 "desmoplastic cancer-associated stroma",
                                 "cancer-associated fibrous stroma with spindle cells",
                                 "cancer-associated stroma with collagen fibres"],
    "colorectal adenocarcinoma epithelium": [
        "colorectal adenocarcinoma epithelium", "adenocarcinoma epithelium with crowded nuclei",
        "malignant glands of colorectal adenocarcinoma",
        "colorectal adenocarcinoma epithelium with pleomorphic nuclei"],
}

_HISTO_TEMPLATES = [
    "H&E stained section of colorectal tissue with {}.",
    "Histopathology patch showing {}.",
    "H&E image of {}.",
    "Colorectal tissue, H&E: {}.",
    "Microscopy of {} (H&E stain).",
    "A {power} field of {}.",
    "Haematoxylin and eosin stained slide showing {}.",
    "Pathology patch: {}.",
    "{} in a colorectal specimen, H&E.",
]


def histo_caption(rng: np.random.Generator, class_name: str) -> str:
    phrase = str(rng.choice(_TISSUE_PHRASES[class_name]))
    template = str(rng.choice(_HISTO_TEMPLATES))
    power = str(rng.choice(["high-power", "medium-power", "low-power"]))
    return _sentence(template.replace("{power}", power).format(phrase))


def histo_vqa(rng: np.random.Generator, class_name: str) -> list[dict[str, str]]:
    """2-4 QA pairs: the tissue type, a yes/no tissue probe, then stain/malignancy/modality."""
    classes = CLASS_NAMES["histopathology"]
    probe = class_name if rng.random() < 0.5 else str(rng.choice(classes))
    pairs = [_qa("What tissue type is shown?", class_name, "open"),
             _qa(f"Does this patch show {probe}?", "yes" if probe == class_name else "no",
                 "closed")]
    malignant = class_name == "colorectal adenocarcinoma epithelium"
    extra = [_qa("Is this tissue malignant?", "yes" if malignant else "no", "closed"),
             _qa("What stain is used?", "h&e", "open"),
             _qa("What is the imaging modality?", "histopathology", "open")]
    count = int(rng.integers(0, 3))
    chosen = rng.permutation(len(extra))[:count]
    return pairs + [extra[i] for i in sorted(chosen)]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build the synthetic_medical TFDS dataset.")
    parser.add_argument("--data_dir", required=True, help="TFDS data_dir root.")
    parser.add_argument("--config", default="default", choices=["default", "tiny"],
                        help="Named config; custom sizes below start from it.")
    for name in ("train_size", "validation_size", "test_size", "image_size", "seed"):
        parser.add_argument(f"--{name}", type=int, default=None)
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> str | SyntheticMedicalConfig:
    """The named config, or a custom one when any size/seed is overridden."""
    named = {"default": DEFAULT_CONFIG, "tiny": TINY_CONFIG}[args.config]
    fields = ("train_size", "validation_size", "test_size", "image_size", "seed")
    overrides = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    if not overrides:
        return args.config
    values = {f: overrides.get(f, getattr(named, f)) for f in fields}
    return custom_config(**values)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    dataset_dir = build(args.data_dir, config_from_args(args))
    elapsed = time.perf_counter() - start
    info = tfds.builder_from_directory(dataset_dir).info
    counts = ", ".join(f"{s}={info.splits[s].num_examples}" for s in SPLITS)
    print(dataset_dir)
    print(f"records: {counts}; {elapsed:.1f} s")


if __name__ == "__main__":
    main()
