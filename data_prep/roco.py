"""ROCO (Radiology Objects in COntext; Pelka et al., LABELS @ MICCAI 2018): figures from PubMed
Central Open Access papers with their captions, split by the publisher into train / validation
/ test and into the subsets ``radiology`` and ``non-radiology``.

Raw layout (github.com/razorx89/roco-dataset after its ``scripts/fetch.py``), under manual_dir
either directly or below a ``data/`` folder::

    {train,validation,test}/{radiology,non-radiology}/
        captions.txt    ROCO_00020<TAB> caption text
        dlinks.txt      ROCO_00020<TAB>wget -r ftp://.../PMC3498864.tar.gz -P ...<TAB>name.jpg
        images/         ROCO_00020.jpg              fetch.py since January 2022
                        PMC3498864_name.jpg         fetch.py before (older copies on disk)
        keywords.txt, semtypes.txt, cuis.txt   optional: ROCO_id<TAB><TAB>value<TAB>value...

Both image namings are accepted, tried in this order: ``images/<ROCO id>.jpg`` (what fetch.py
writes since its January 2022 change, always ``.jpg`` whatever the archive's file type), then
``images/<PMCID>_<name>`` built from the dlinks.txt entry (the name fetch.py gave files before;
dlinks.txt still carries these names), then ``images/<ROCO id>.jpeg|.png`` (re-packaged
copies). An image under none of them is a ``missing_file`` reject listing the paths tried; the
metadata's ``image_files`` counts the images found per naming. Releases that ship
``captions_*_revised.txt`` / ``dlinks_*_revised.txt`` instead of the plain names are read the
same way (the plain name wins when both exist).

Records: ``id`` (the ROCO id), ``image``, ``caption``, ``captions`` (all captions of the image:
ROCO has one), ``subset``, ``pmcid``, ``image_name``, ``keywords``, ``semtypes`` (UMLS semantic
type codes, e.g. T033) and ``cuis`` (UMLS concept ids, e.g. C0040405), empty lists when the
optional files are absent. Config ``radiology`` (default; what the benchmark trains on) keeps the
radiology subset; ``all`` keeps both subsets.
"""

from __future__ import annotations

import collections
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
CURRENT_NAMING = "<ROCO id>.jpg"  # scripts/fetch.py since January 2022
DLINKS_NAMING = "<PMCID>_<name>"  # scripts/fetch.py before; the names dlinks.txt carries
REPACKAGED_EXTENSIONS = (".jpeg", ".png")


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
        "images/ (<ROCO id>.jpg, or <PMCID>_<name> in copies fetched before 2022) "
        "(github.com/razorx89/roco-dataset)")

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
        namings: collections.Counter[str] = collections.Counter()
        for split in core.SPLITS:
            for subset in self.builder_config.subsets:
                folder = os.path.join(root, split, subset)
                if os.path.isdir(folder):
                    namings += scan_folder(scan, folder, split, subset)
        if not scan.splits():
            raise UserError(f"{manual_dir}: no ROCO folder {{train,validation,test}}/"
                            f"{{{','.join(self.builder_config.subsets)}}}/ with captions.txt "
                            f"found: expected {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        # Which fetch.py made the copy (a folder fetched before and after 2022 has both).
        self.info.metadata.update({"image_files": dict(namings.most_common())})
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


def image_candidates(images_dir: str, roco_id: str, dlink: tuple[str, str] | None
                     ) -> list[tuple[str, str]]:
    """(naming, path) of every place the image of `roco_id` may be, in the order tried:
    fetch.py's current name first, then the dlinks.txt name that copies fetched before 2022
    use, then re-packaged copies' other extensions."""
    candidates = [(CURRENT_NAMING, os.path.join(images_dir, roco_id + ".jpg"))]
    if dlink is not None:
        candidates.append((DLINKS_NAMING, os.path.join(images_dir, f"{dlink[0]}_{dlink[1]}")))
    candidates += [(f"<ROCO id>{ext}", os.path.join(images_dir, roco_id + ext))
                   for ext in REPACKAGED_EXTENSIONS]
    return candidates


def find_image(candidates: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The first (naming, path) of `candidates` that exists."""
    return next(((naming, path) for naming, path in candidates if os.path.exists(path)), None)


def scan_folder(scan: core.Scan, folder: str, split: str, subset: str
                ) -> collections.Counter[str]:
    """Adds the folder's items to `scan`; returns how many images each naming found."""
    captions_path = annotation_file(folder, "captions")
    if captions_path is None:
        raise UserError(f"{folder}: no captions.txt: expected 'ROCO_id<TAB>caption' lines")
    dlinks = {k: parse_dlink(v) for k, v in
              read_id_table(annotation_file(folder, "dlinks")).items()}
    keywords = read_id_table(annotation_file(folder, "keywords"))
    semtypes = read_id_table(annotation_file(folder, "semtypes"))
    cuis = read_id_table(annotation_file(folder, "cuis"))
    images_dir = os.path.join(folder, "images")
    namings: collections.Counter[str] = collections.Counter()
    for roco_id, fields, where in read_id_lines(captions_path, scan, split):
        try:
            caption = core.clean_caption(" ".join(fields))
        except core.BadText as e:
            scan.reject(split, roco_id, where, e.reason, str(e))
            continue
        dlink = dlinks.get(roco_id)
        candidates = image_candidates(images_dir, roco_id, dlink)
        found = find_image(candidates)
        if found is None:
            scan.reject(split, roco_id, candidates[0][1], "missing_file",
                        f"none of {', '.join(path for _, path in candidates)} exists")
            continue
        naming, image = found
        fields = {
            "caption": caption,
            "captions": [caption],
            "subset": subset,
            "pmcid": dlink[0] if dlink else "",
            "image_name": dlink[1] if dlink else os.path.basename(image),  # name in the archive
            "keywords": keywords.get(roco_id, []),
            "semtypes": [v for v in semtypes.get(roco_id, []) if _SEMTYPE.match(v)],
            "cuis": [v for v in cuis.get(roco_id, []) if _CUI.match(v)],
        }
        if scan.add(core.Item(split, roco_id, image, fields)):
            namings[naming] += 1
    return namings
