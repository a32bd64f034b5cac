"""MIMIC-CXR builder on a fixture in the MIMIC-CXR-JPG + MIMIC-CXR reports layout."""

import csv
import gzip
import io
import math
import os
import zipfile

import numpy as np
import pytest

from data_prep import mimic_cxr
from data_prep_helpers import (assert_disjoint, check_report, check_round_trip, column,
                               reasons_by_id, run_build, write_image)
from medclip_jax.data import sources
from medclip_jax.errors import UserError

LABELS = mimic_cxr.CHEXPERT_LABELS

REPORTS = {
    # FINDINGS and IMPRESSION (the publisher's example layout).
    "50000001": (" " * 33 + "FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  "
                 "___ year old woman with ?pleural effusion\n \n TECHNIQUE:  Chest PA and "
                 "lateral\n \n COMPARISON:  ___\n \n FINDINGS: \n \n Large left pleural effusion "
                 "is new.  Small\n right effusion is new.\n \n IMPRESSION: \n \n Large left "
                 "pleural effusion\n"),
    # IMPRESSION only.
    "50000002": " FINAL REPORT\n INDICATION:  Fever.\n \n IMPRESSION:  No acute process.\n",
    # Neither section: the reading follows the HISTORY paragraph.
    "50000003": (" FINAL REPORT\n HISTORY:  Cough.\n \n PA and lateral chest compared to ___:\n"
                 " \n Lungs are clear.  No effusion.\n"),
    "50000004": " FINAL REPORT\n FINDINGS:  Normal heart size.\n",
    # FINDINGS only (an empty IMPRESSION heading does not count).
    "50000005": " FINAL REPORT\n FINDINGS:  Mild edema.\n \n IMPRESSION:\n",
    # A view heading is the findings; FINDINGS AND IMPRESSION is the impression.
    "50000010": (" FINAL REPORT\n PA AND LATERAL VIEWS OF THE CHEST:\n \n Heart normal.\n \n"
                 " FINDINGS AND IMPRESSION:  Nothing acute.\n"),
    "50000011": " FINAL REPORT\n IMPRESSION:  Clear.\n",
    # No heading at all, with an addendum rule.
    "50000006": (" ADDENDUM  Correction made.\n " + "_" * 78 + "\n" + " " * 33 + "FINAL REPORT"
                 "\n Portable chest.  Tube in good position.\n"),
    # 50000007 has no report.
    # Boilerplate only: the caption is empty.
    "50000008": " FINAL REPORT\n EXAMINATION:  CHEST\n \n INDICATION:  cough\n",
    "50000012": (" FINAL REPORT\n COMPARISON:  ___\n \n FINDINGS:  Small effusion.\n \n"
                 " IMPRESSON:  Effusion.\n"),
}
BAD_UTF8 = {"50000009": b" FINAL REPORT\n IMPRESSION:  Caf\xe9 lungs.\n"}

# (dicom, subject, study, split, ViewPosition or None for no metadata row, image kind or None)
IMAGES = [
    ("d01", "10000001", "50000001", "train", "PA", "rgb_jpeg"),
    ("d02", "10000001", "50000001", "train", "LATERAL", "grey_png"),
    ("d03", "10000001", "50000002", "train", "AP", "grey_png"),
    ("d04", "10000002", "50000003", "train", "PA", "rgb_jpeg"),
    ("d05", "10000002", "50000003", "train", "LL", "rgb_jpeg"),
    ("d06", "10000002", "50000004", "train", "PA", "truncated_jpeg"),
    ("d01", "10000001", "50000001", "train", "PA", "rgb_jpeg"),          # duplicate row
    ("d07", "10000002", "50000004", "holdout", "PA", "rgb_jpeg"),        # unknown split
    ("d08", "10000002", "50000004", "train", None, "rgb_jpeg"),          # no metadata row
    ("d09", "10000003", "50000005", "validate", "AP", None),             # missing jpg
    ("d10", "10000003", "50000005", "validate", "PA", "rgb_jpeg"),
    ("d11", "10000006", "50000010", "validate", "PA", "rgb_jpeg"),
    ("d12", "10000006", "50000011", "validate", "PA", "rgb_jpeg"),       # bad CheXpert value
    ("d13", "10000004", "50000006", "test", "PA", "rgb_jpeg"),
    ("d14", "10000004", "50000007", "test", "PA", "rgb_jpeg"),           # no report
    ("d15", "10000005", "50000008", "test", "AP", "rgb_jpeg"),           # empty caption
    ("d16", "10000005", "50000009", "test", "PA", "rgb_jpeg"),           # report not UTF-8
    ("d17", "10000004", "50000006", "test", "", "rgb_jpeg"),             # blank ViewPosition
    ("d18", "10000007", "50000012", "test", "PA", "rgb_jpeg"),           # no CheXpert row
]
CHEXPERT = {  # study -> {label: raw value}; unlisted labels blank
    "50000001": {"Cardiomegaly": "1.0", "Edema": "-1.0", "Pleural Effusion": "1.0",
                 "Pneumothorax": "0.0"},
    "50000002": {"No Finding": "1.0"},
    "50000011": {"Edema": "maybe"},
}
CHEXPERT.update({s: {} for s in ("50000003", "50000004", "50000005", "50000006", "50000007",
                                 "50000008", "50000009", "50000010")})


def dicom_id(short: str) -> str:
    return f"{short}aaaaa-bde0afdd-112c0b34-7bc16630-4e384014"


def csv_bytes(header, rows, extra=b""):
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode() + extra


def write_table(root, name, data, gz):
    path = os.path.join(root, name + (".gz" if gz else ""))
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)


def write_fixture(base, gz=True, reports_in_tree=False):
    """The wget layout: physionet.org/files/mimic-cxr-jpg/2.0.0 and, for the reports zip,
    physionet.org/files/mimic-cxr/2.0.0; or (reports_in_tree) the zip unpacked into files/."""
    root = os.path.join(base, "physionet.org", "files", "mimic-cxr-jpg", "2.0.0")
    os.makedirs(root)
    split_rows, meta_rows = [], []
    for n, (short, subject, study, split, view, kind) in enumerate(IMAGES):
        split_rows.append([dicom_id(short), study, subject, split])
        if view is not None and [dicom_id(short), subject, study] not in [r[:3] for r in meta_rows]:
            meta_rows.append([dicom_id(short), subject, study, "CHEST (PA AND LAT)", view,
                              "20", "24"])
        if kind is not None:
            write_image(mimic_cxr.image_path(root, subject, study, dicom_id(short)), kind, seed=n)
    write_table(root, "mimic-cxr-2.0.0-split.csv",
                csv_bytes(["dicom_id", "study_id", "subject_id", "split"], split_rows,
                          extra=b"x,y,z,train,extra\n"), gz)
    write_table(root, "mimic-cxr-2.0.0-metadata.csv",
                csv_bytes(["dicom_id", "subject_id", "study_id",
                           "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                           "Columns"], meta_rows), gz)
    subjects = {study: subject for _, subject, study, *_ in IMAGES}
    write_table(root, "mimic-cxr-2.0.0-chexpert.csv", csv_bytes(
        ["subject_id", "study_id", *LABELS],
        [[subjects[s], s, *(values.get(label, "") for label in LABELS)]
         for s, values in CHEXPERT.items()], extra=b"10000001,50000099\n"), gz)
    texts = {**{s: t.encode() for s, t in REPORTS.items()}, **BAD_UTF8}
    members = {os.path.join("files", mimic_cxr.report_path(subjects[s], s)): t
               for s, t in texts.items()}
    if reports_in_tree:
        for member, text in members.items():
            os.makedirs(os.path.dirname(os.path.join(root, member)), exist_ok=True)
            with open(os.path.join(root, member), "wb") as f:
                f.write(text)
    else:
        reports_dir = os.path.join(base, "physionet.org", "files", "mimic-cxr", "2.0.0")
        os.makedirs(reports_dir)
        with zipfile.ZipFile(os.path.join(reports_dir, "mimic-cxr-reports.zip"), "w") as z:
            for member, text in members.items():
                z.writestr(member, text)
    return base


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    raw = write_fixture(str(tmp_path_factory.mktemp("mimic_raw")))
    data_dir = str(tmp_path_factory.mktemp("mimic_tfds"))
    (report,) = run_build("mimic_cxr", raw, data_dir)
    return data_dir, report


def test_counts_and_rejects(built):
    _, report = built
    rows = check_report(report)
    assert report.written == {"train": 3, "validation": 2, "test": 2}
    assert report.found == {"train": 8, "validation": 4, "test": 5}
    reasons = reasons_by_id(rows)
    assert reasons[dicom_id("d06")] == "corrupt"
    assert reasons[dicom_id("d07")] == "unknown_split"
    assert reasons[dicom_id("d08")] == "missing_metadata"
    assert reasons[dicom_id("d09")] == "missing_file"
    assert reasons[dicom_id("d12")] == "bad_label"
    assert reasons[dicom_id("d14")] == "missing_report"
    assert reasons[dicom_id("d15")] == "empty_caption"
    assert reasons[dicom_id("d16")] == "not_utf8"
    assert [r["reason"] for r in rows if r["id"] == dicom_id("d01")] == ["duplicate_id"]
    assert [r for r in rows if r["reason"] == "malformed_row"][0]["split"] == "train"
    assert len(rows) == 10


def test_extraction_and_fields(built):
    data_dir, _ = built
    train = sources.open_source(data_dir, "mimic_cxr", "train")
    first = train[0]
    assert first["id"] == dicom_id("d01") and first["view_position"] == "PA"
    assert first["subject_id"] == "10000001" and first["study_id"] == "50000001"
    assert first["findings"] == "Large left pleural effusion is new. Small right effusion is new."
    assert first["impression"] == "Large left pleural effusion"
    assert first["caption"] == ("Large left pleural effusion is new. Small right effusion is "
                                "new. Large left pleural effusion")
    assert first["captions"] == [first["caption"]]
    assert first["caption_source"] == "findings_impression"
    chexpert = np.asarray(first["chexpert"])
    assert chexpert.dtype == np.float32 and chexpert.shape == (14,)
    expected = [CHEXPERT["50000001"].get(label) for label in LABELS]
    for value, raw in zip(chexpert, expected):
        assert (math.isnan(value) if raw is None else value == float(raw))
    assert chexpert[LABELS.index("Edema")] == -1.0
    records = {r["id"][:3]: r for r in (train[i] for i in range(len(train)))}
    assert (records["d03"]["caption"], records["d03"]["caption_source"],
            records["d03"]["findings"]) == ("No acute process.", "impression", "")
    assert (records["d04"]["caption"], records["d04"]["caption_source"]) == (
        "PA and lateral chest compared to ___: Lungs are clear. No effusion.", "last_paragraphs")
    validation = sources.open_source(data_dir, "mimic_cxr", "validation")
    d10, d11 = validation[0], validation[1]
    assert (d10["caption"], d10["caption_source"], d10["impression"]) == (
        "Mild edema.", "findings", "")
    assert (d11["findings"], d11["impression"]) == ("Heart normal.", "Nothing acute.")
    test = sources.open_source(data_dir, "mimic_cxr", "test")
    d13, d18 = test[0], test[1]
    assert (d13["caption"], d13["caption_source"]) == (
        "ADDENDUM Correction made. Portable chest. Tube in good position.", "full_text")
    assert (d18["caption"], d18["caption_source"]) == ("Small effusion. Effusion.",
                                                       "findings_impression")
    assert np.isnan(np.asarray(d18["chexpert"])).all()


def test_splits_views_metadata_and_round_trip(built):
    data_dir, _ = built
    for split in ("train", "validation", "test"):
        check_round_trip(data_dir, "mimic_cxr", split)
        assert set(column(data_dir, "mimic_cxr", split, "view_position")) <= {"PA", "AP"}
    assert_disjoint(data_dir, "mimic_cxr", "subject_id")
    assert_disjoint(data_dir, "mimic_cxr", "id")
    metadata = sources.read_builder(sources.dataset_dir(data_dir, "mimic_cxr")).info.metadata
    assert metadata["chexpert_labels"] == list(LABELS)
    assert metadata["non_frontal_skipped"] == {"train": 2, "validation": 0, "test": 1}
    assert metadata["split_rule"].startswith("official")
    assert metadata["chexpert_unreadable_lines"] == [len(CHEXPERT) + 2]


@pytest.mark.parametrize("heading,kind", [
    ("IMPRESSION", "impression"), ("CONCLUSION", "impression"), ("IMPRESSON", "impression"),
    ("FINDINGS/IMPRESSION", "impression"), ("FINDINGS AND IMPRESSION", "impression"),
    ("FINDINGS", "findings"), ("FINDNGS", "findings"), ("CHEST, TWO VIEWS", "findings"),
    ("PORTABLE AP", "findings"), ("REASON FOR EXAM", "indication"),
    ("CLINICAL HISTORY", "history"), ("COMPARISONS", "comparison"), ("WET READ", "wet read")])
def test_section_kind(heading, kind):
    assert mimic_cxr.section_kind(heading) == kind


def test_all_views_with_plain_csv_and_unpacked_reports(tmp_path):
    raw = write_fixture(str(tmp_path / "raw"), gz=False, reports_in_tree=True)
    (report,) = run_build("mimic_cxr@all_views", raw, tmp_path / "out")
    check_report(report)
    assert report.written == {"train": 5, "validation": 2, "test": 3}
    views = column(tmp_path / "out", "mimic_cxr@all_views", "test", "view_position")
    assert sorted(views) == ["", "PA", "PA"]
    assert "LL" in column(tmp_path / "out", "mimic_cxr@all_views", "train", "view_position")


def test_missing_tables_and_reports_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="mimic-cxr-2.0.0-split.csv"):
        run_build("mimic_cxr", tmp_path, tmp_path / "out")
    raw = write_fixture(str(tmp_path / "raw"))
    os.remove(os.path.join(raw, "physionet.org", "files", "mimic-cxr", "2.0.0",
                           "mimic-cxr-reports.zip"))
    with pytest.raises(UserError, match="no MIMIC-CXR report found"):
        run_build("mimic_cxr", raw, tmp_path / "out2")


def test_de_identified_placeholders_are_not_captions():
    """"___" (MIMIC's de-identification mark) and punctuation are no caption: a report left
    with only those is an empty caption (a reject), and a placeholder-only section is skipped."""
    boilerplate = mimic_cxr.report_fields(
        "FINAL REPORT\nEXAMINATION: CHEST (PA AND LAT)\n\nINDICATION: ___ with cough\n\n"
        "COMPARISON: ___.\n")
    assert boilerplate["caption"] == ""
    fields = mimic_cxr.report_fields("FINDINGS: ___\n\nIMPRESSION: No acute process.\n")
    assert fields["findings"] == "" and fields["caption"] == "No acute process."
    assert fields["caption_source"] == "impression"
