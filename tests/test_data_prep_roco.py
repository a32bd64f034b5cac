"""ROCO builder on fixtures in the roco-dataset repository's layout after scripts/fetch.py: the
older naming (``images/<PMCID>_<name>``, copies fetched before January 2022) and the current one
(``images/<ROCO id>.jpg``; dlinks.txt still carries the old names)."""

import os

import pytest

from data_prep_helpers import (BAD_KINDS, GOOD_KINDS, assert_disjoint, check_report,
                               check_round_trip, column, reasons_by_id, run_build, write_image)
from medclip_jax.data import sources
from medclip_jax.errors import UserError

PMCID = "PMC3498864"


def write_split(root, split, subset, rows, extra_lines=b"", naming="pmc"):
    """rows: (roco id, caption bytes, image kind or None for a missing file). naming: "pmc"
    (fetch.py before January 2022: <PMCID>_<name>) or "roco_id" (since: <ROCO id>.jpg)."""
    folder = os.path.join(root, "data", split, subset)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    captions, dlinks, semtypes = [], [], []
    for n, (roco_id, caption, kind) in enumerate(rows):
        name = f"fig-{roco_id}-{n}.jpg"
        captions.append(roco_id.encode() + b"\t " + caption)
        dlinks.append(f"{roco_id}\twget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/69/93/"
                      f"{PMCID}.tar.gz -P /path/to/Dir\t{name}".encode())
        semtypes.append(f"{roco_id}\t\tT033\tFinding\tT023\tBody Part".encode())
        file_name = f"{roco_id}.jpg" if naming == "roco_id" else f"{PMCID}_{name}"
        if kind is not None:
            write_image(os.path.join(folder, "images", file_name), kind, seed=n)
    with open(os.path.join(folder, "captions.txt"), "wb") as f:
        f.write(b"\n".join(captions) + b"\n" + extra_lines)
    with open(os.path.join(folder, "dlinks.txt"), "wb") as f:
        f.write(b"\n".join(dlinks) + b"\n")
    with open(os.path.join(folder, "semtypes.txt"), "wb") as f:
        f.write(b"\n".join(semtypes) + b"\n")


@pytest.fixture(scope="module")
def roco_raw(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("roco_raw"))
    train = [(f"ROCO_{i:05d}", f"CT scan {i} showing a lesion.".encode(), kind)
             for i, kind in enumerate(GOOD_KINDS)]
    train += [(f"ROCO_{100 + i:05d}", b"Chest radiograph.", kind)
              for i, kind in enumerate(BAD_KINDS)]
    train += [("ROCO_00200", b"Missing image file.", None),
              ("ROCO_00201", b"   ", "rgb_jpeg"),                     # empty caption
              ("ROCO_00202", b"Caf\xe9 au lait spots.", "rgb_jpeg"),  # latin-1, not UTF-8
              ("ROCO_00000", b"Duplicate id.", "rgb_jpeg")]
    write_split(root, "train", "radiology", train, extra_lines=b"no tab on this line\n")
    write_split(root, "validation", "radiology",
                [(f"ROCO_{300 + i:05d}", b"MRI of the knee.", "rgb_jpeg") for i in range(3)])
    write_split(root, "test", "radiology",
                [(f"ROCO_{400 + i:05d}", f"Ultrasound {i}.".encode(), "grey_png")
                 for i in range(4)])
    write_split(root, "test", "non-radiology",
                [("ROCO_00500", b"A photograph of a skin lesion.", "rgb_jpeg")])
    return root


@pytest.fixture(scope="module")
def roco_built(roco_raw, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("roco_tfds"))
    (report,) = run_build("roco", roco_raw, data_dir)
    return data_dir, report


def test_counts_and_rejects(roco_built):
    data_dir, report = roco_built
    rows = check_report(report)
    assert report.written == {"train": len(GOOD_KINDS), "validation": 3, "test": 4}
    reasons = reasons_by_id(rows)
    for i, kind in enumerate(BAD_KINDS):
        assert reasons[f"ROCO_{100 + i:05d}"] == BAD_KINDS[kind]
    assert reasons["ROCO_00200"] == "missing_file"
    assert reasons["ROCO_00201"] == "empty_caption"
    assert reasons["ROCO_00202"] == "not_utf8"
    assert "duplicate_id" in [r["reason"] for r in rows if r["id"] == "ROCO_00000"]
    assert "malformed_row" in reasons.values()
    assert report.found["train"] == len(GOOD_KINDS) + len(BAD_KINDS) + 5
    assert all(os.path.sep in r["path"] or ":" in r["path"] for r in rows)


def test_records_fields_and_round_trip(roco_built):
    data_dir, _ = roco_built
    for split in ("train", "validation", "test"):
        check_round_trip(data_dir, "roco", split)
    source = sources.open_source(data_dir, "roco", "train")
    first = source[0]
    assert first["id"] == "ROCO_00000" and first["caption"] == "CT scan 0 showing a lesion."
    assert first["captions"] == ["CT scan 0 showing a lesion."]
    assert first["pmcid"] == PMCID and first["subset"] == "radiology"
    assert first["semtypes"] == ["T033", "T023"] and first["keywords"] == []
    # Scan order is kept; the large image was downscaled to --max_image_side.
    assert column(data_dir, "roco", "train", "id") == [f"ROCO_{i:05d}"
                                                      for i in range(len(GOOD_KINDS))]
    from PIL import Image
    import io
    sizes = [Image.open(io.BytesIO(source[i]["image"])).size for i in range(len(source))]
    assert max(max(s) for s in sizes) == 64
    assert_disjoint(data_dir, "roco", "id")


def test_all_config_adds_non_radiology(roco_raw, tmp_path):
    (report,) = run_build("roco@all", roco_raw, tmp_path)
    assert report.written["test"] == 5
    assert "non-radiology" in column(tmp_path, "roco@all", "test", "subset")


def test_missing_folder_is_one_line_error(tmp_path):
    with pytest.raises(UserError, match="captions.txt"):
        run_build("roco", tmp_path, tmp_path / "out")


@pytest.fixture(scope="module")
def roco_current_raw(tmp_path_factory):
    """fetch.py since January 2022: images/<ROCO id>.jpg whatever the archive's file type (the
    grey PNGs keep their bytes), dlinks.txt unchanged."""
    root = str(tmp_path_factory.mktemp("roco_current_raw"))
    train = [(f"ROCO_{i:05d}", f"CT scan {i}.".encode(), kind) for i, kind in
             enumerate(GOOD_KINDS)]
    train += [("ROCO_00200", b"Not downloaded under either name.", None)]
    write_split(root, "train", "radiology", train, naming="roco_id")
    # A folder fetched before and after 2022 holds both names: the current one is read.
    images = os.path.join(root, "data", "train", "radiology", "images")
    write_image(os.path.join(images, f"{PMCID}_fig-ROCO_00000-0.jpg"), "rgb_jpeg", seed=9,
                size=(10, 6))
    write_split(root, "test", "radiology",
                [(f"ROCO_{400 + i:05d}", f"Ultrasound {i}.".encode(), "grey_png")
                 for i in range(4)], naming="roco_id")
    return root


def test_current_image_names_build(roco_current_raw, tmp_path):
    (report,) = run_build("roco", roco_current_raw, tmp_path)
    rows = check_report(report)
    assert report.written == {"train": len(GOOD_KINDS), "test": 4}
    assert reasons_by_id(rows) == {"ROCO_00200": "missing_file"}
    (missing,) = rows
    images = os.path.join(roco_current_raw, "data", "train", "radiology", "images")
    assert missing["path"] == os.path.join(images, "ROCO_00200.jpg")
    assert os.path.join(images, "ROCO_00200.jpg") in missing["detail"]
    assert os.path.join(images, f"{PMCID}_fig-ROCO_00200-{len(GOOD_KINDS)}.jpg") in \
        missing["detail"]
    first = sources.open_source(str(tmp_path), "roco", "train")[0]
    assert first["id"] == "ROCO_00000" and first["pmcid"] == PMCID
    assert first["image_name"] == "fig-ROCO_00000-0.jpg"  # the figure's name in the PMC archive
    from PIL import Image
    import io
    assert Image.open(io.BytesIO(first["image"])).size == (24, 20)  # not the old copy's 10x6
    check_round_trip(tmp_path, "roco", "test")
    naming = sources.dataset_metadata(str(tmp_path), "roco")["image_files"]
    assert naming == {"<ROCO id>.jpg": len(GOOD_KINDS) + 4}


def test_old_image_names_are_recorded_in_metadata(roco_built):
    data_dir, report = roco_built
    naming = sources.dataset_metadata(data_dir, "roco")["image_files"]
    assert naming == {"<PMCID>_<name>": sum(report.written.values()) + len(BAD_KINDS)}
