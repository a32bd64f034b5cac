"""Pathology classification builders (BACH, LC25000, NCT-CRC-HE, PatchCamelyon, SICAPv2) on
tiny fixtures in each publisher's layout, with bad files and rows."""

import gzip
import os
import shutil

import numpy as np
import pytest

from data_prep import classification, pathology
from data_prep_helpers import (BAD_KINDS, assert_disjoint, check_report,
                               check_round_trip, column, reasons_by_id, run_build, write_image)
from medclip_jax.data import sources
from medclip_jax.errors import UserError

TEMPLATES = classification.templates("histopathology")


def metadata(data_dir, name):
    return sources.read_builder(sources.dataset_dir(str(data_dir), name)).info.metadata


def split_sizes(report):
    return {s: report.written.get(s, 0) for s in report.found}


def check_all_splits(data_dir, name, report):
    for split, written in report.written.items():
        if written:
            check_round_trip(data_dir, name, split, caption_field="class_name")


# --------------------------------------------------------------------------------------------
# BACH
# --------------------------------------------------------------------------------------------

BACH_PREFIX = {"Benign": "b", "InSitu": "is", "Invasive": "iv", "Normal": "n"}


@pytest.fixture(scope="module")
def bach_built(tmp_path_factory):
    raw = str(tmp_path_factory.mktemp("bach_raw"))
    photos = os.path.join(raw, "ICIAR2018_BACH_Challenge", "Photos")
    truth = []
    for folder, prefix in BACH_PREFIX.items():
        for i in range(1, 11):
            name = f"{prefix}{i:03d}.tif"
            write_image(os.path.join(photos, folder, name), "tiff", seed=i)
            truth.append(f"{name},{folder}")
    for kind, name in zip(BAD_KINDS, ("b101", "b102", "b103")):
        write_image(os.path.join(photos, "Benign", f"{name}.tif"), kind)
    write_image(os.path.join(photos, "Normal", "n101.tif"), "tiff")  # the CSV says Invasive
    write_image(os.path.join(photos, "Unknown", "u001.tif"), "tiff")  # not a BACH class
    write_image(os.path.join(photos, "Benign", "extra1.tif"), "tiff")
    write_image(os.path.join(photos, "Normal", "extra1.tif"), "tiff")  # duplicate id
    truth += ["n101.tif,Invasive", "iv200.tif,Invasive", "a line without a label"]
    with open(os.path.join(photos, "microscopy_ground_truth.csv"), "w") as f:
        f.write("\n".join(truth) + "\n")
    data_dir = str(tmp_path_factory.mktemp("bach_tfds"))
    (report,) = run_build("bach", raw, data_dir)
    return data_dir, report


def test_bach_counts_rejects_and_split(bach_built):
    data_dir, report = bach_built
    reasons = reasons_by_id(check_report(report))
    assert [reasons[n] for n in ("b101", "b102", "b103")] == list(BAD_KINDS.values())
    assert reasons["n101"] == "label_conflict" and reasons["iv200"] == "missing_file"
    assert reasons["u001"] == "unknown_label" and reasons["extra1"] == "duplicate_id"
    # 10 good images per class + Benign/extra1; each class stratum is split 70/10/20.
    assert sum(report.written.values()) == 41
    assert report.found == {"train": 34, "validation": 5, "test": 9}
    labels = {s: column(data_dir, "bach", s, "source_label") for s in report.found}
    assert [list(labels[s]).count("InSitu") for s in labels] == [7, 1, 2]  # the clean class
    assert all(set(v) == set(BACH_PREFIX) for v in labels.values())
    assert_disjoint(data_dir, "bach", "id")


def test_bach_metadata_and_records(bach_built):
    data_dir, report = bach_built
    meta = metadata(data_dir, "bach")
    names = ["normal breast", "benign breast lesion", "breast carcinoma in situ",
             "invasive breast carcinoma"]
    assert meta["tasks"] == {"bach": {"class_names": names, "templates": TEMPLATES}}
    assert meta["source_labels"] == {"Normal": 0, "Benign": 1, "InSitu": 2, "Invasive": 3}
    assert "not patient-disjoint" in meta["split_rule"]
    record = sources.open_source(data_dir, "bach", "test")[0]
    assert record["class_name"] == names[record["label"]]
    assert meta["source_labels"][record["source_label"]] == record["label"]
    check_all_splits(data_dir, "bach", report)


def test_random_split_ignores_order_and_bach_needs_photos(tmp_path):
    ids = [f"x{i}" for i in range(40)]
    labels = ["a", "b"] * 20
    assert pathology.random_splits(ids, labels) == pathology.random_splits(ids[::-1],
                                                                           labels[::-1])
    os.makedirs(tmp_path / "raw" / "WSI")
    with pytest.raises(UserError, match="Photos"):
        run_build("bach", tmp_path / "raw", tmp_path / "out")


# --------------------------------------------------------------------------------------------
# LC25000
# --------------------------------------------------------------------------------------------

LC_FOLDERS = {"lung": ("lung_aca", "lung_n", "lung_scc"), "colon": ("colon_aca", "colon_n")}


def write_lc25000(root, organs):
    for organ in organs:
        for folder in LC_FOLDERS[organ]:
            for i in range(1, 11):
                write_image(os.path.join(root, "lung_colon_image_set", f"{organ}_image_sets",
                                         folder, f"{folder.replace('_', '')}{i}.jpeg"),
                            "rgb_jpeg", seed=i)


@pytest.fixture(scope="module")
def lc_built(tmp_path_factory):
    raw = str(tmp_path_factory.mktemp("lc_raw"))
    write_lc25000(raw, ("lung", "colon"))
    write_image(os.path.join(raw, "lung_colon_image_set", "lung_image_sets", "lung_n",
                             "lungn99.jpeg"), "truncated_jpeg")
    data_dir = str(tmp_path_factory.mktemp("lc_tfds"))
    reports = run_build("lc25000", raw, data_dir)
    return raw, data_dir, {r.dataset.split("@")[1]: r for r in reports}


def test_lc25000_builds_both_configs(lc_built):
    _, data_dir, reports = lc_built
    assert set(reports) == {"lung", "colon"}
    assert reports["lung"].found == {"train": 22, "validation": 3, "test": 6}
    assert split_sizes(reports["colon"]) == {"train": 14, "validation": 2, "test": 4}
    assert reasons_by_id(check_report(reports["lung"])) == {"lungn99": "corrupt"}
    check_report(reports["colon"])
    for organ, folders in LC_FOLDERS.items():
        name = f"lc25000@{organ}"
        meta = metadata(data_dir, name)
        assert list(meta["tasks"]) == [f"lc25000_{organ}"]
        assert meta["source_labels"] == {f: i for i, f in enumerate(folders)}
        assert "near-duplicates" in meta["split_rule"]
        assert_disjoint(data_dir, name, "id")
    assert metadata(data_dir, "lc25000@lung")["tasks"]["lc25000_lung"]["class_names"] == [
        "lung adenocarcinoma", "benign lung parenchyma", "lung squamous cell carcinoma"]
    first = sources.open_source(data_dir, "lc25000@colon", "train")[0]
    assert first["source_label"] in LC_FOLDERS["colon"] and first["id"].startswith("colon")
    check_all_splits(data_dir, "lc25000@lung", reports["lung"])


def test_lc25000_missing_config_folder(tmp_path):
    write_lc25000(str(tmp_path / "raw"), ("lung",))
    (report,) = run_build("lc25000", tmp_path / "raw", tmp_path / "out")  # colon skipped
    assert report.dataset == "lc25000@lung"
    with pytest.raises(UserError, match="colon_image_sets"):
        run_build("lc25000@colon", tmp_path / "raw", tmp_path / "out")
    shutil.rmtree(tmp_path / "raw" / "lung_colon_image_set" / "lung_image_sets" / "lung_scc")
    with pytest.raises(UserError, match="missing class folder.*lung_scc"):
        run_build("lc25000@lung", tmp_path / "raw", tmp_path / "out2")


# --------------------------------------------------------------------------------------------
# NCT-CRC-HE-100K
# --------------------------------------------------------------------------------------------

NCT_CODES = [code for code, _ in pathology.NCT_CLASSES]


@pytest.fixture(scope="module")
def nct_raw(tmp_path_factory):
    raw = str(tmp_path_factory.mktemp("nct_raw"))
    for folder, per_class in (("NCT-CRC-HE-100K", 2), ("NCT-CRC-HE-100K-NONORM", 1),
                              ("CRC-VAL-HE-7K", 1)):
        for code in NCT_CODES:
            for i in range(per_class):
                tag = "TCGA-" if folder == "CRC-VAL-HE-7K" else ("NN" if "NONORM" in folder
                                                                  else "")
                write_image(os.path.join(raw, folder, code, f"{code}-{tag}A{i}.tif"), "tiff",
                            seed=i)
    write_image(os.path.join(raw, "NCT-CRC-HE-100K", "TUM", "TUM-BAD.tif"), "empty")
    write_image(os.path.join(raw, "NCT-CRC-HE-100K", "TUM", "notes.txt"), "garbage")  # ignored
    return raw


@pytest.fixture(scope="module")
def nct_built(nct_raw, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("nct_tfds"))
    (report,) = run_build("nct_crc_he", nct_raw, data_dir)
    return data_dir, report


def test_nct_official_split(nct_built):
    data_dir, report = nct_built
    assert split_sizes(report) == {"train": 18, "test": 9}
    assert reasons_by_id(check_report(report)) == {"TUM-BAD": "empty_file"}
    meta = metadata(data_dir, "nct_crc_he")
    assert meta["source_labels"] == {c: i for i, c in enumerate(NCT_CODES)}
    assert meta["tasks"]["nct_crc_he"]["class_names"][-1] == (
        "colorectal adenocarcinoma epithelium")
    assert sorted(column(data_dir, "nct_crc_he", "test", "source_label")) == sorted(NCT_CODES)
    assert all("TCGA" in i for i in column(data_dir, "nct_crc_he", "test", "id"))
    assert_disjoint(data_dir, "nct_crc_he", "id", ("train", "test"))
    check_all_splits(data_dir, "nct_crc_he", report)


def test_nct_nonorm_config_and_errors(nct_raw, tmp_path):
    scan = pathology.NctCrcHe(data_dir=str(tmp_path), config="nonorm").scan(nct_raw)
    assert len(scan.items["train"]) == 9 and len(scan.items["test"]) == 9
    assert all("NONORM" in item.image for item in scan.items["train"])
    only_nonorm = tmp_path / "raw"
    shutil.copytree(os.path.join(nct_raw, "NCT-CRC-HE-100K-NONORM"),
                    only_nonorm / "NCT-CRC-HE-100K-NONORM")
    with pytest.raises(UserError, match="HE-100K-NONORM/ is there: build nct_crc_he@nonorm"):
        pathology.NctCrcHe(data_dir=str(tmp_path)).scan(str(only_nonorm))
    shutil.rmtree(only_nonorm / "NCT-CRC-HE-100K-NONORM" / "MUC")
    with pytest.raises(UserError, match="missing class folder.*MUC"):
        pathology.NctCrcHe(data_dir=str(tmp_path), config="nonorm").scan(str(only_nonorm))


# --------------------------------------------------------------------------------------------
# PatchCamelyon
# --------------------------------------------------------------------------------------------

PCAM = "camelyonpatch_level_2_split_"


def write_h5(path, name, array, gz=False, chunks=None):
    import h5py
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=array, chunks=chunks)
    if gz:
        with open(path, "rb") as src, gzip.open(path + ".gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.remove(path)


def write_pcam_split(root, split, labels, n_x=None, wsis=None, gz=False, chunks=None):
    n_x = len(labels) if n_x is None else n_x
    x = np.random.default_rng(len(labels)).integers(0, 256, (n_x, 96, 96, 3), dtype=np.uint8)
    write_h5(os.path.join(root, f"{PCAM}{split}_x.h5"), "x", x, gz, chunks)
    y = np.asarray(labels, dtype=np.uint8).reshape(-1, 1, 1, 1)
    write_h5(os.path.join(root, f"{PCAM}{split}_y.h5"), "y", y, gz)
    if wsis is not None:
        lines = [",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi"]
        lines += [f"{i},{100 * i},{200 * i},{bool(v)},{bool(v)},{wsis[i % len(wsis)]}"
                  for i, v in enumerate(labels)]
        with open(os.path.join(root, f"{PCAM}{split}_meta.csv"), "w") as f:
            f.write("\n".join(lines) + "\n")


def decoded(image_bytes):
    from PIL import Image
    import io
    return np.asarray(Image.open(io.BytesIO(image_bytes)))


@pytest.fixture(scope="module")
def pcam_built(tmp_path_factory):
    raw = str(tmp_path_factory.mktemp("pcam_raw"))
    # train: 8 images, 9 labels (the last has no image), label 2 at row 5.
    write_pcam_split(raw, "train", [0, 1, 0, 1, 0, 2, 1, 0, 1], n_x=8,
                     wsis=["camelyon16_train_normal_001", "camelyon16_train_tumor_002"])
    # valid: gzipped, meta row 2 malformed (replaced by a bad coordinate).
    write_pcam_split(raw, "valid", [1, 0, 1, 0], wsis=["camelyon16_train_tumor_009"], gz=True)
    meta = os.path.join(raw, f"{PCAM}valid_meta.csv")
    lines = open(meta).read().splitlines()
    lines[3] = "2,not_a_number,5,True,True,camelyon16_train_tumor_009"
    open(meta, "w").write("\n".join(lines) + "\n")
    write_pcam_split(raw, "test", [0, 1, 1], chunks=(2, 96, 96, 3))  # chunked, no meta file
    data_dir = str(tmp_path_factory.mktemp("pcam_tfds"))
    (report,) = run_build("patch_camelyon", raw, data_dir, max_image_side=96)  # lossless PNG
    return raw, data_dir, report


def test_pcam_counts_rejects_and_fields(pcam_built):
    raw, data_dir, report = pcam_built
    assert split_sizes(report) == {"train": 7, "validation": 3, "test": 3}
    reasons = reasons_by_id(check_report(report))
    assert reasons == {"train_000005": "unknown_label", "train_000008": "length_mismatch",
                       "valid_000002": "malformed_row"}
    train = sources.open_source(data_dir, "patch_camelyon", "train")
    first = train[1]
    assert first["id"] == "train_000001" and first["label"] == 1
    assert first["class_name"] == "lymph node metastasis"
    assert (first["wsi"], first["coord_y"], first["coord_x"], first["tumor_patch"],
            first["h5_index"]) == ("camelyon16_train_tumor_002", 100, 200, 1, 1)
    test = sources.open_source(data_dir, "patch_camelyon", "test")[0]
    assert (test["wsi"], test["coord_x"], test["tumor_patch"]) == ("", -1, -1)
    import h5py
    with h5py.File(os.path.join(raw, f"{PCAM}test_x.h5")) as f:  # chunked: copied, mapped
        np.testing.assert_array_equal(decoded(test["image"]), f["x"][0])
    with h5py.File(os.path.join(raw, f"{PCAM}train_x.h5")) as f:  # contiguous: mapped
        np.testing.assert_array_equal(decoded(first["image"]), f["x"][1])
    assert not [d for d in os.listdir(data_dir) if d.startswith("patch_camelyon_tmp_")]
    assert_disjoint(data_dir, "patch_camelyon", "wsi", ("train", "validation"))
    meta = metadata(data_dir, "patch_camelyon")
    assert meta["source_labels"] == {"0": 0, "1": 1}
    assert meta["tasks"]["patch_camelyon"]["class_names"] == ["normal lymph node",
                                                             "lymph node metastasis"]
    check_all_splits(data_dir, "patch_camelyon", report)


def test_pcam_pixels_are_memory_mapped(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    write_h5(str(tmp_path / "flat.h5"), "x", x)
    write_h5(str(tmp_path / "chunked.h5"), "x", x, chunks=(2, 96, 96, 3))
    builder = pathology.PatchCamelyon(data_dir=str(tmp_path / "tfds"))
    for name in ("flat.h5", "chunked.h5"):
        pixels = builder.pixels(str(tmp_path / name), name)
        assert isinstance(pixels.base, np.memmap)
        np.testing.assert_array_equal(pixels, x)
    assert os.listdir(builder.temp_dir()) == ["chunked.h5.npy"]  # only the chunked is copied
    shutil.rmtree(builder.temp_dir())


def test_pcam_missing_files(tmp_path):
    write_h5(str(tmp_path / f"{PCAM}test_x.h5"), "x", np.zeros((2, 96, 96, 3), np.uint8))
    with pytest.raises(UserError, match="test_y"):
        run_build("patch_camelyon", tmp_path, tmp_path / "out")
    with pytest.raises(UserError, match="camelyonpatch_level_2_split_"):
        run_build("patch_camelyon", tmp_path / "out", tmp_path / "out2")


# --------------------------------------------------------------------------------------------
# SICAPv2
# --------------------------------------------------------------------------------------------

SICAP_HEADER = [None, "image_name", "NC", "G3", "G4", "G5", "G4C"]  # pandas' index column


def write_xlsx(path, header, rows):
    import openpyxl
    os.makedirs(os.path.dirname(path), exist_ok=True)
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(header)
    for i, row in enumerate(rows):
        sheet.append([i, *row] if header[0] is None else list(row))
    workbook.save(path)


def patch(slide, i):
    return f"{slide}_Block_Region_{i}_0_0_xini_{100 * i}_yini_{200 * i}.jpg"


def patch_id(slide, i):
    return patch(slide, i)[:-len(".jpg")]


ONE_HOT = {"NC": [1, 0, 0, 0, 0], "G3": [0, 1, 0, 0, 0], "G4": [0, 0, 1, 0, 0],
           "G4C": [0, 0, 1, 0, 1], "G5": [0, 0, 0, 1, 0]}


@pytest.fixture(scope="module")
def sicap_built(tmp_path_factory):
    raw = str(tmp_path_factory.mktemp("sicap_raw"))
    root = os.path.join(raw, "SICAPv2")
    slides = {"16B0001851": 1, "16B0003388": 2, "17B0002215": 3, "18B0006169": 4}
    train = [(patch("16B0001851", i), *ONE_HOT[g]) for i, g in enumerate(["NC", "G3", "G4C"])]
    train += [(patch("16B0003388", i), *ONE_HOT[g]) for i, g in enumerate(["G5", "NC"])]
    test = [(patch("17B0002215", i), *ONE_HOT[g]) for i, g in enumerate(["G4", "NC"])]
    val = [(patch("18B0006169", i), *ONE_HOT[g]) for i, g in enumerate(["G3", "G5"])]
    for name, *_ in train + test + val:
        write_image(os.path.join(root, "images", name), "rgb_jpeg")
    bad_train = [(patch("16B0001851", 10), 0, 0, 0, 0, 0),      # no label
                 (patch("16B0001851", 11), 1, 1, 0, 0, 0),      # two labels
                 (patch("16B0001851", 12), 0, 2, 0, 0, 0),      # not one-hot
                 (patch("16B0001851", 13), *ONE_HOT["NC"]),     # image file missing
                 (None, *ONE_HOT["NC"])]                        # no image name
    write_xlsx(os.path.join(root, "partition", "Test", "Train.xlsx"), SICAP_HEADER,
               train + val + bad_train)
    write_xlsx(os.path.join(root, "partition", "Test", "Test.xlsx"), SICAP_HEADER,
               test + [train[0]])                               # duplicate of a train image
    write_xlsx(os.path.join(root, "partition", "Validation", "Val1", "Test.xlsx"),
               SICAP_HEADER, val)
    write_xlsx(os.path.join(root, "partition", "Validation", "Val1", "Train.xlsx"),
               SICAP_HEADER, train)
    write_xlsx(os.path.join(root, "wsi_labels.xlsx"),
               ["slide_id", "patient_id", "Gleason_primary", "Gleason_secondary"],
               [(s, p, 3, 4) for s, p in slides.items()])
    data_dir = str(tmp_path_factory.mktemp("sicap_tfds"))
    (report,) = run_build("sicapv2", raw, data_dir)
    return raw, data_dir, report


def test_sicap_partition_and_rejects(sicap_built):
    raw, data_dir, report = sicap_built
    assert split_sizes(report) == {"train": 5, "validation": 2, "test": 2}
    rows = check_report(report)
    reasons = {r["id"]: r["reason"] for r in rows}
    assert reasons[patch_id("16B0001851", 10)] == "no_label"
    assert reasons[patch_id("16B0001851", 11)] == "multiple_labels"
    assert reasons[patch_id("16B0001851", 12)] == "malformed_row"
    assert reasons[patch_id("16B0001851", 13)] == "missing_file"
    assert reasons[""] == "malformed_row"
    assert reasons[patch_id("16B0001851", 0)] == "duplicate_id"
    assert all(".xlsx:" in r["path"] or r["path"].endswith(".jpg") for r in rows)
    assert column(data_dir, "sicapv2", "validation", "slide_id") == ["18B0006169"] * 2
    for field in ("slide_id", "patient_id"):
        assert_disjoint(data_dir, "sicapv2", field)


def test_sicap_records_and_metadata(sicap_built):
    _, data_dir, report = sicap_built
    train = sources.open_source(data_dir, "sicapv2", "train")
    records = [train[i] for i in range(len(train))]
    assert [r["source_label"] for r in records] == ["NC", "G3", "G4", "G5", "NC"]
    assert [r["cribriform"] for r in records] == [0, 0, 1, 0, 0]
    assert records[0]["patient_id"] == "1" and records[3]["patient_id"] == "2"
    assert records[2]["class_name"] == "Gleason pattern 4"
    meta = metadata(data_dir, "sicapv2")
    assert meta["source_labels"] == {"NC": 0, "G3": 1, "G4": 2, "G5": 3}
    assert meta["tasks"]["sicapv2"]["templates"] == TEMPLATES
    assert "Val1" in meta["split_rule"]
    check_all_splits(data_dir, "sicapv2", report)


def test_sicap_missing_partition(tmp_path):
    os.makedirs(tmp_path / "SICAPv2" / "images")
    with pytest.raises(UserError, match="Train.xlsx"):
        run_build("sicapv2", tmp_path, tmp_path / "out")
    write_xlsx(str(tmp_path / "SICAPv2" / "partition" / "Test" / "Train.xlsx"),
               ["image_name", "NC", "G3"], [("a.jpg", 1, 0)])
    write_xlsx(str(tmp_path / "SICAPv2" / "partition" / "Test" / "Test.xlsx"),
               ["image_name", "NC", "G3"], [("b.jpg", 1, 0)])
    with pytest.raises(UserError, match="missing column.*G4"):
        run_build("sicapv2", tmp_path, tmp_path / "out")
