"""ROCO (Radiology Objects in COntext; Pelka et al., LABELS @ MICCAI 2018): figures from PubMed
Central Open Access papers with their captions, split by the publisher into train / validation
/ test and into the subsets ``radiology`` and ``non-radiology``.

Raw layout (github.com/razorx89/roco-dataset after its ``scripts/fetch.py``), under manual_dir
either directly or below a ``data/`` folder::

    {train,validation,test}/{radiology,non-radiology}/
        captions.txt    ROCO_00020<TAB> caption text
        dlinks.txt      ROCO_00020<TAB>wget -r ftp://.../PMC3498864.tar.gz -P ...<TAB>name.jpg
        images/         PMC3498864_name.jpg   (fetch.py names files <PMCID>_<name>)
        keywords.txt, semtypes.txt, cuis.txt   optional: ROCO_id<TAB><TAB>value<TAB>value...

The image of a caption is found through dlinks.txt (``<PMCID>_<name>``); without a dlinks entry,
``images/<ROCO id>.<jpg|png|jpeg>`` is tried (re-packaged copies name files by id). Releases
that ship ``captions_*_revised.txt`` / ``dlinks_*_revised.txt`` instead of the plain names are
read the same way (the plain name wins when both exist).

Records: ``id`` (the ROCO id), ``image``, ``caption``, ``captions`` (all captions of the image:
ROCO has one), ``subset``, ``pmcid``, ``image_name``, ``keywords``, ``semtypes`` (UMLS semantic
type codes, e.g. T033) and ``cuis`` (UMLS concept ids, e.g. C0040405), empty lists when the
optional files are absent. Config ``radiology`` (default; what the benchmark trains on) keeps the
radiology subset; ``all`` keeps both subsets.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Any

import tensorflow_datasets as tfds

from data_prep import core
from medclip_jax.errors import UserError

SUBSETS = ("radiology", "non-radiology")
_PMCID = re.compile(r"(PMC\d+)\.tar\.gz")
_SEMTYPE = re.compile(r"^T\d{3}$")
_CUI = re.compile(r"^C\d{7}$")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass(eq=False)
class RocoConfig(tfds.core.BuilderConfig):
    subsets: tuple[str, ...] = ("radiology",)


class Roco(core.ManualImageBuilder):
    """ROCO: radiology (and non-radiology) figures from PMC-OA papers with their captions."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        RocoConfig(name="radiology", description="The radiology subset.",
                   subsets=("radiology",)),
        RocoConfig(name="all", description="Radiology and non-radiology subsets.",
                   subsets=SUBSETS),
    ]
    DEFAULT_CONFIG_NAME = "radiology"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "the roco-dataset repository's data/ folder after scripts/fetch.py: "
        "{train,validation,test}/{radiology,non-radiology}/ with captions.txt, dlinks.txt and "
        "images/ (github.com/razorx89/roco-dataset)")

    def record_features(self) -> dict[str, Any]:
        return {
            "caption": tfds.features.Text(),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "subset": tfds.features.Text(),
            "pmcid": tfds.features.Text(),
            "image_name": tfds.features.Text(),
            "keywords": tfds.features.Sequence(tfds.features.Text()),
            "semtypes": tfds.features.Sequence(tfds.features.Text()),
            "cuis": tfds.features.Sequence(tfds.features.Text()),
        }

    def metadata(self) -> dict[str, Any]:
        return {"source": "ROCO (github.com/razorx89/roco-dataset)",
                "subsets": list(self.builder_config.subsets),
                "retrieval": "test split; one caption per image"}

    def scan(self, manual_dir: str) -> core.Scan:
        root = data_root(manual_dir)
        scan = core.Scan()
        for split in core.SPLITS:
            for subset in self.builder_config.subsets:
                folder = os.path.join(root, split, subset)
                if os.path.isdir(folder):
                    scan_folder(scan, folder, split, subset)
        if not scan.splits():
            raise UserError(f"{manual_dir}: no ROCO folder {{train,validation,test}}/"
                            f"{{{','.join(self.builder_config.subsets)}}}/ with captions.txt "
                            f"found: expected {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        return scan


def data_root(manual_dir: str) -> str:
    """manual_dir itself, or its ``data/`` (the repository checkout)."""
    for candidate in (manual_dir, os.path.join(manual_dir, "data")):
        if any(os.path.isdir(os.path.join(candidate, s)) for s in core.SPLITS):
            return candidate
    return manual_dir


def annotation_file(folder: str, stem: str) -> str | None:
    """``<stem>.txt``, else the single ``<stem>_*.txt`` (the revised releases)."""
    plain = os.path.join(folder, f"{stem}.txt")
    if os.path.exists(plain):
        return plain
    matches = sorted(glob.glob(os.path.join(folder, f"{stem}_*.txt")))
    return matches[0] if matches else None


def read_id_lines(path: str, scan: core.Scan | None, split: str
                  ) -> list[tuple[str, list[str], str]]:
    """``id<TAB>field<TAB>field...`` lines -> (id, non-empty fields, file:line).

    With a `scan` (the captions file: each line is an item), a line that is not UTF-8 or has
    no id is a reject; without one (optional metadata files) bad bytes are replaced."""
    rows = []
    for number, raw in core.read_lines(path):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        raw_id, sep, raw_rest = raw.partition(b"\t")
        roco_id = raw_id.decode("utf-8", "replace").strip()
        try:
            rest = (core.decode_utf8(raw_rest) if scan is not None
                    else raw_rest.decode("utf-8", "replace"))
        except core.BadText as e:
            scan.reject(split, roco_id, where, e.reason, str(e))
            continue
        if not sep or not roco_id:
            if scan is not None:
                scan.reject(split, roco_id, where, "malformed_row",
                            "expected 'ROCO_id<TAB>caption'")
            continue
        rows.append((roco_id, [f.strip() for f in rest.split("\t") if f.strip()], where))
    return rows


def read_id_table(path: str | None) -> dict[str, list[str]]:
    """An optional ``id<TAB>fields`` file as {id: fields} ({} when absent)."""
    return {} if path is None else {k: v for k, v, _ in read_id_lines(path, None, "")}


def parse_dlink(fields: list[str]) -> tuple[str, str] | None:
    """(PMCID, image name) of a dlinks.txt entry: ``wget ... PMC123.tar.gz ...`` and the name."""
    if len(fields) < 2:
        return None
    match = _PMCID.search(fields[0])
    return (match.group(1), fields[-1]) if match else None


def find_image(images_dir: str, roco_id: str, dlink: tuple[str, str] | None) -> str:
    if dlink is not None:
        return os.path.join(images_dir, f"{dlink[0]}_{dlink[1]}")
    for ext in _IMAGE_EXTENSIONS:
        path = os.path.join(images_dir, roco_id + ext)
        if os.path.exists(path):
            return path
    return os.path.join(images_dir, roco_id + ".jpg")


def scan_folder(scan: core.Scan, folder: str, split: str, subset: str) -> None:
    captions_path = annotation_file(folder, "captions")
    if captions_path is None:
        raise UserError(f"{folder}: no captions.txt: expected 'ROCO_id<TAB>caption' lines")
    dlinks = {k: parse_dlink(v) for k, v in
              read_id_table(annotation_file(folder, "dlinks")).items()}
    keywords = read_id_table(annotation_file(folder, "keywords"))
    semtypes = read_id_table(annotation_file(folder, "semtypes"))
    cuis = read_id_table(annotation_file(folder, "cuis"))
    images_dir = os.path.join(folder, "images")
    for roco_id, fields, where in read_id_lines(captions_path, scan, split):
        try:
            caption = core.clean_caption(" ".join(fields))
        except core.BadText as e:
            scan.reject(split, roco_id, where, e.reason, str(e))
            continue
        dlink = dlinks.get(roco_id)
        image = find_image(images_dir, roco_id, dlink)
        scan.add(core.Item(split, roco_id, image, {
            "caption": caption,
            "captions": [caption],
            "subset": subset,
            "pmcid": dlink[0] if dlink else "",
            "image_name": dlink[1] if dlink else os.path.basename(image),
            "keywords": keywords.get(roco_id, []),
            "semtypes": [v for v in semtypes.get(roco_id, []) if _SEMTYPE.match(v)],
            "cuis": [v for v in cuis.get(roco_id, []) if _CUI.match(v)],
        }))
