"""HAM10000 and PAD-UFES-20 builders on fixtures in the publishers' layouts (Dataverse / Kaggle
for HAM10000, Mendeley for PAD-UFES-20)."""

import collections
import os

import pytest

from data_prep import core, dermatology
from data_prep_helpers import (assert_disjoint, check_report, check_round_trip, column,
                               reasons_by_id, run_build, write_image)
from medclip_jax.data import sources
from medclip_jax.errors import UserError

HAM_HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization,dataset"


def ham_lesions():
    """(lesion_id, dx, images per lesion): 10 lesions of nv and mel (some with several
    images, so lesion-disjointness is tested), one of each other class."""
    lesions = [(f"HAM_{n:07d}", dx, 1 + n % 3) for n, dx in enumerate(["nv"] * 10 + ["mel"] * 10)]
    lesions += [(f"HAM_{100 + n:07d}", dx, 1) for n, dx in enumerate(
        ["akiec", "bcc", "bkl", "df", "vasc"])]
    return lesions


@pytest.fixture(scope="module")
def ham_raw(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ham_raw"))
    lines, n = [HAM_HEADER], 0
    for lesion, dx, count in ham_lesions():
        for _ in range(count):
            image_id = f"ISIC_{24306 + n:07d}"
            part = "HAM10000_images_part_1" if n % 2 else "HAM10000_images_part_2"
            write_image(os.path.join(root, part, f"{image_id}.jpg"), "rgb_jpeg", seed=n)
            lines.append(f"{lesion},{image_id},{dx},histo,{40 + n}.0,male,back,vidir_modern")
            n += 1
    write_image(os.path.join(root, "HAM10000_images_part_1", "ISIC_0090000.jpg"))
    write_image(os.path.join(root, "HAM10000_images_part_1", "ISIC_0090002.jpg"),
                "truncated_jpeg")
    write_image(os.path.join(root, "__MACOSX", "HAM10000_images_part_1", "ISIC_0090001.jpg"))
    lines += [
        "HAM_0090000,ISIC_0090000,xyz,histo,50.0,female,face,rosendahl",    # unknown dx
        "HAM_0090001,ISIC_0090001,nv,histo,,unknown,face,rosendahl",        # no image file
        "HAM_0090002,ISIC_0090002,nv,follow_up,NA,female,trunk,rosendahl",  # corrupt image
        "HAM_0000000,ISIC_0024306,nv,histo,40.0,male,back,vidir_modern",    # duplicate id
        "HAM_0090003,ISIC_0090003,nv",                                      # 3 fields
    ]
    with open(os.path.join(root, "HAM10000_metadata.csv"), "wb") as f:
        f.write("\n".join(lines).encode() + b"\nHAM_0090004,ISIC_0090004,nv,histo,5.0,male,"
                b"caf\xe9,x\n")
    # The ISIC 2018 Task 3 test set as on Dataverse: tab-separated, quoted, metadata format.
    truth = ["\t".join(f'"{c}"' for c in HAM_HEADER.split(","))]
    for i, dx in enumerate(["mel", "nv", "bcc"]):
        image_id = f"ISIC_{34524 + i:07d}"
        write_image(os.path.join(root, "ISIC2018_Task3_Test_Images", f"{image_id}.jpg"),
                    seed=100 + i)
        truth.append(f'"HAMTEST_{i:07d}"\t"{image_id}"\t"{dx}"\t"histo"\t55\t"male"\t'
                     f'"back"\t"vidir_modern"')
    with open(os.path.join(root, "ISIC2018_Task3_Test_GroundTruth.tab"), "w") as f:
        f.write("\n".join(truth) + "\n")
    return root


@pytest.fixture(scope="module")
def ham_built(ham_raw, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("ham_tfds"))
    (report,) = run_build("ham10000", ham_raw, data_dir)
    return data_dir, report


def test_ham_counts_and_rejects(ham_built):
    _, report = ham_built
    rows = check_report(report)
    images = sum(count for _, _, count in ham_lesions())
    assert sum(report.written.values()) == images
    reasons = reasons_by_id(rows)
    assert reasons["ISIC_0090000"] == "unknown_label"
    assert reasons["ISIC_0090001"] == "missing_file"  # the __MACOSX copy does not count
    assert reasons["ISIC_0090002"] == "corrupt"
    assert [r["reason"] for r in rows if r["id"] == "ISIC_0024306"] == ["duplicate_id"]
    assert sorted(r["reason"] for r in rows if r["split"] == "train" and "csv:" in r["id"]
                  ) == ["malformed_row", "not_utf8"]


def test_ham_lesion_disjoint_split(ham_built):
    data_dir, report = ham_built
    assert all(report.written[s] > 0 for s in core.SPLITS)
    assert_disjoint(data_dir, "ham10000", "lesion_id")
    assert_disjoint(data_dir, "ham10000", "id")
    split_of = collections.defaultdict(set)
    for split in core.SPLITS:
        for lesion in column(data_dir, "ham10000", split, "lesion_id"):
            split_of[lesion].add(split)
    assert all(len(s) == 1 for s in split_of.values())
    assert any(count > 1 for _, _, count in ham_lesions())
    # Deterministic: the same rule gives the same splits.
    rows = [dermatology.Row("", str(i), "", lesion, dx, {}) for i, (lesion, dx, _) in
            enumerate(ham_lesions())]
    assert dermatology.split_rows(rows, dermatology.FRACTIONS) == dermatology.split_rows(
        rows[::-1], dermatology.FRACTIONS)[::-1]


def test_ham_metadata_fields_and_round_trip(ham_built):
    data_dir, _ = ham_built
    meta = sources.dataset_metadata(data_dir, "ham10000")
    task = meta["tasks"]["diagnosis"]
    assert task["class_names"] == list(dermatology.HAM_CLASS_NAMES)
    assert all("{}" in t for t in task["templates"]) and len(task["templates"]) == 5
    assert meta["source_labels"] == {c: i for i, c in enumerate(dermatology.HAM_CODES)}
    assert "lesion_id" in meta["split_rule"] and "seed 0" in meta["split_rule"]
    records = {}
    for split in core.SPLITS:
        check_round_trip(data_dir, "ham10000", split, caption_field="class_name")
        source = sources.open_source(data_dir, "ham10000", split)
        records.update({r["id"]: r for r in (source[i] for i in range(len(source)))})
    first = records["ISIC_0024306"]
    assert first["source_label"] == "nv" and first["class_name"] == "melanocytic nevus"
    assert first["label"] == dermatology.HAM_CODES.index("nv")
    assert first["lesion_id"] == "HAM_0000000" and first["dx_type"] == "histo"
    assert first["age"] == 40.0 and first["sex"] == "male" and first["dataset"] == "vidir_modern"
    assert {r["source_label"] for r in records.values()} == set(dermatology.HAM_CODES)


def test_ham_official_test(ham_raw, tmp_path):
    (report,) = run_build("ham10000@official_test", ham_raw, tmp_path)
    check_report(report)
    assert report.written["test"] == 3
    assert set(column(tmp_path, "ham10000@official_test", "test", "id")) == {
        "ISIC_0034524", "ISIC_0034525", "ISIC_0034526"}
    assert column(tmp_path, "ham10000@official_test", "test", "source_label") == [
        "mel", "nv", "bcc"]
    assert_disjoint(tmp_path, "ham10000@official_test", "lesion_id", ("train", "validation"))
    assert report.written["train"] + report.written["validation"] == sum(
        c for _, _, c in ham_lesions())
    meta = sources.dataset_metadata(tmp_path, "ham10000@official_test")
    assert "ISIC 2018" in meta["split_rule"]


def test_ham_challenge_one_hot_truth_and_tab_metadata(tmp_path):
    path = tmp_path / "ISIC2018_Task3_Test_GroundTruth.csv"
    path.write_text("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n"
                    "ISIC_0034524,0.0,1.0,0.0,0.0,0.0,0.0,0.0\n"
                    "ISIC_0034525,0.0,0.0,0.0,0.0,0.0,0.0,1.0\n"
                    "ISIC_0034526,1.0,1.0,0.0,0.0,0.0,0.0,0.0\n")
    rows = dermatology.read_ham_rows(core.Scan(), str(path))
    assert [(r.item_id, r.label) for r in rows][:2] == [("ISIC_0034524", "nv"),
                                                         ("ISIC_0034525", "vasc")]
    assert rows[2].label not in dermatology.HAM_CODES  # not one-hot: an unknown label
    tab = tmp_path / "HAM10000_metadata"  # Dataverse's .tab download without extension
    tab.write_text('"lesion_id"\t"image_id"\t"dx"\t"dx_type"\t"age"\t"sex"\t"localization"\n'
                   '"HAM_0000118"\t"ISIC_0027419"\t"bkl"\t"histo"\t80\t"male"\t"scalp"\n')
    (row,) = dermatology.read_ham_rows(core.Scan(), str(tab))
    assert (row.item_id, row.group, row.label) == ("ISIC_0027419", "HAM_0000118", "bkl")
    assert row.fields["age"] == 80.0 and row.fields["dataset"] == ""


def test_ham_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="HAM10000_metadata"):
        run_build("ham10000", tmp_path, tmp_path / "out")
    (tmp_path / "HAM10000_metadata.csv").write_text(HAM_HEADER + "\n")
    with pytest.raises(UserError, match="ISIC2018_Task3_Test_GroundTruth"):
        run_build("ham10000@official_test", tmp_path, tmp_path / "out")
    (tmp_path / "HAM10000_images_part_1.zip").write_bytes(b"PK")
    with pytest.raises(UserError, match="unzip"):
        run_build("ham10000", tmp_path, tmp_path / "out")


# --------------------------------------------------------------------------------------------
# PAD-UFES-20
# --------------------------------------------------------------------------------------------

PAD_HEADER = ("patient_id,lesion_id,smoke,drink,background_father,background_mother,age,"
              "pesticide,gender,skin_cancer_history,cancer_history,has_piped_water,"
              "has_sewage_system,fitspatrick,region,diameter_1,diameter_2,diagnostic,itch,grew,"
              "hurt,changed,bleed,elevation,img_id,biopsed")


def pad_line(patient, lesion, diagnostic, img_id, age="55", fitz="3.0", biopsed="True"):
    return (f"{patient},{lesion},False,False,POMERANIA,POMERANIA,{age},False,FEMALE,True,True,"
            f"True,True,{fitz},NECK,6.0,5.0,{diagnostic},True,True,False,True,False,True,"
            f"{img_id},{biopsed}")


def pad_patients():
    """(patient_id, diagnostic, images): 10 patients of ACK and BCC, some with 2 lesions."""
    patients = [(f"PAT_{n}", dx, 1 + n % 2) for n, dx in enumerate(["ACK"] * 10 + ["BCC"] * 10)]
    return patients + [(f"PAT_{100 + n}", dx, 1) for n, dx in enumerate(
        ["MEL", "NEV", "SCC", "SEK"])]


@pytest.fixture(scope="module")
def pad_built(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pad_raw"))
    lines, n = [PAD_HEADER], 0
    for patient, dx, count in pad_patients():
        for k in range(count):
            img_id = f"{patient}_{1000 + n}_{n}.png"
            write_image(os.path.join(root, "images", f"imgs_part_{1 + n % 3}", img_id),
                        "rgba_png" if n == 1 else "rgb_jpeg", seed=n)
            lines.append(pad_line(patient, 1000 + n, dx, img_id,
                                  fitz="" if n == 0 else "3.0", biopsed="False" if k else "True"))
            n += 1
    write_image(os.path.join(root, "images", "imgs_part_1", "PAT_900_1_1.png"), "garbage")
    write_image(os.path.join(root, "images", "imgs_part_1", "PAT_901_2_2.png"))
    lines += [pad_line("PAT_900", 1, "BCC", "PAT_900_1_1.png"),     # unreadable image
              pad_line("PAT_901", 2, "BOD", "PAT_901_2_2.png"),     # unknown diagnostic
              pad_line("PAT_902", 3, "MEL", "PAT_902_3_3.png"),     # no image file
              pad_line("PAT_0", 1000, "ACK", "PAT_0_1000_0.png"),   # duplicate img_id
              "PAT_903,4,False"]                                     # malformed row
    with open(os.path.join(root, "metadata.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    data_dir = str(tmp_path_factory.mktemp("pad_tfds"))
    (report,) = run_build("pad_ufes_20", root, data_dir)
    return data_dir, report


def test_pad_counts_rejects_and_patient_split(pad_built):
    data_dir, report = pad_built
    rows = check_report(report)
    assert sum(report.written.values()) == sum(c for _, _, c in pad_patients())
    reasons = reasons_by_id(rows)
    assert reasons["PAT_900_1_1"] == "unreadable"
    assert reasons["PAT_901_2_2"] == "unknown_label"
    assert reasons["PAT_902_3_3"] == "missing_file"
    assert [r["reason"] for r in rows if r["id"] == "PAT_0_1000_0"] == ["duplicate_id"]
    assert "malformed_row" in reasons.values()
    assert all(report.written[s] > 0 for s in core.SPLITS)
    assert_disjoint(data_dir, "pad_ufes_20", "patient_id")
    assert_disjoint(data_dir, "pad_ufes_20", "lesion_id")


def test_pad_metadata_fields_and_round_trip(pad_built):
    data_dir, _ = pad_built
    meta = sources.dataset_metadata(data_dir, "pad_ufes_20")
    task = meta["tasks"]["diagnosis"]
    assert task["class_names"] == list(dermatology.PAD_CLASS_NAMES)
    assert task["templates"] and not any("dermoscop" in t for t in task["templates"])
    assert meta["source_labels"] == {c: i for i, c in enumerate(dermatology.PAD_CODES)}
    assert "patient_id" in meta["split_rule"]
    records = {}
    for split in core.SPLITS:
        check_round_trip(data_dir, "pad_ufes_20", split, caption_field="class_name")
        source = sources.open_source(data_dir, "pad_ufes_20", split)
        records.update({r["id"]: r for r in (source[i] for i in range(len(source)))})
    first, second = records["PAT_0_1000_0"], records["PAT_1_1001_1"]
    assert first["source_label"] == "ACK" and first["class_name"] == "actinic keratosis"
    assert first["patient_id"] == "PAT_0" and first["lesion_id"] == "1000"
    assert first["fitzpatrick"] == -1 and second["fitzpatrick"] == 3
    assert first["age"] == 55 and first["gender"] == "FEMALE" and first["region"] == "NECK"
    assert bool(first["biopsed"]) is True
