"""Quilt-1M builder on a fixture in the release's layout: quilt_1M_lookup.csv (pandas-written,
with its unnamed index column) and the images in quilt_1m/."""

import csv
import io
import os

import pytest

from data_prep.pmc_oa import UNASSIGNED
from data_prep_helpers import (BAD_KINDS, GOOD_KINDS, assert_disjoint, check_report,
                               check_round_trip, column, reasons_by_id, run_build, write_image)
from medclip_jax.data import sources
from medclip_jax.errors import UserError

HEADER = ["", "caption", "image_path", "subset", "split", "pathology", "roi_text", "noisy_text",
          "corrected_text", "med_umls_ids", "magnification", "height", "width"]
UMLS = "[[{'entity': 'hepatocytes', 'umls_id': 'C0227525'}, {'entity': 'liver', " \
       "'umls_id': 'C0023884'}]]"


def row(image, caption, split="train", subset="quilt", pathology="['Gastrointestinal']",
        magnification="1.0", umls=UMLS, noisy="so here we see the liver"):
    return {"caption": caption, "image_path": image, "subset": subset, "split": split,
            "pathology": pathology, "roi_text": "['hepatocytes']", "noisy_text": noisy,
            "corrected_text": noisy, "med_umls_ids": umls, "magnification": magnification,
            "height": "512", "width": "512"}


def write_lookup(path, rows, raw_lines=()):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for i, r in enumerate(rows):
        writer.writerow([str(i)] + [r[h] for h in HEADER[1:]])
    with open(path, "wb") as f:
        f.write(out.getvalue().encode() + b"".join(raw_lines))


@pytest.fixture(scope="module")
def quilt_raw(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("quilt_raw"))
    images = os.path.join(root, "quilt_1m")
    rows = []
    for i, kind in enumerate(GOOD_KINDS):
        write_image(os.path.join(images, f"img{i:03d}.jpg"), kind, seed=i)
        rows.append(row(f"img{i:03d}.jpg", f"Liver biopsy {i}, with portal tracts."))
    # A second text of image 0 (other pathology and CUI), a repeated one, a huge ASR field.
    rows.append(row("img000.jpg", "Hepatocytes with steatosis.", pathology="['Hepatobiliary']",
                    umls="[[{'entity': 'steatosis', 'umls_id': 'C0015695'}]]",
                    noisy="um " * 70000))
    rows.append(row("img000.jpg", "Liver biopsy 0, with portal tracts."))
    for i, kind in enumerate(BAD_KINDS):
        write_image(os.path.join(images, f"bad{i}.jpg"), kind, seed=i)
        rows.append(row(f"bad{i}.jpg", "A broken image."))
    write_image(os.path.join(images, "twitter.png"), "rgba_png", seed=3)
    rows += [
        row("missing.jpg", "No such file."),
        row("empty.jpg", ""),
        row("holdout.jpg", "An unknown split.", split="holdout"),
        row("badpath.jpg", "Bad pathology.", pathology="['Dermatopathology'"),
        row("badmag.jpg", "Bad magnification.", magnification="high"),
        row("twitter.png", "A tweet: melanoma in situ, see the\nlentiginous spread.",
            subset="openpath", pathology="Dermatopathology", magnification="", umls=""),
    ]
    for i in range(4):
        write_image(os.path.join(images, f"val{i}.jpg"), "rgb_jpeg", seed=30 + i)
        rows.append(row(f"val{i}.jpg", f"Held-out caption {i}.", split="val",
                        magnification="2.0", pathology="[]"))
    rows.append(row("val1.jpg", "A second held-out caption.", split="val"))
    rows.append(row("img001.jpg", "A training image again.", split="val"))
    raw_lines = [b'99,only,three\n',
                 b'100,"Caf\xe9 au lait",latin.jpg,quilt,train,[],[],x,x,[],0.0,512,512\n']
    write_lookup(os.path.join(root, "quilt_1M_lookup.csv"), rows, raw_lines)
    return root


@pytest.fixture(scope="module")
def quilt_built(quilt_raw, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("quilt_tfds"))
    (report,) = run_build("quilt_1m", quilt_raw, data_dir)
    return data_dir, report


def test_counts_and_rejects(quilt_built):
    _, report = quilt_built
    rows = check_report(report)
    assert report.written == {"train": len(GOOD_KINDS) + 1, "test": 4, UNASSIGNED: 0}
    reasons = reasons_by_id(rows)
    for i, kind in enumerate(BAD_KINDS):
        assert reasons[f"bad{i}.jpg"] == BAD_KINDS[kind]
    assert reasons["missing.jpg"] == "missing_file"
    assert reasons["empty.jpg"] == "empty_caption"
    assert reasons["holdout.jpg"] == "unknown_split"
    assert reasons["badpath.jpg"] == "malformed_row"
    assert reasons["badmag.jpg"] == "malformed_row"
    assert reasons["img001.jpg"] == "split_conflict"
    split_of = {r["id"]: r["split"] for r in rows}
    assert split_of["holdout.jpg"] == UNASSIGNED and split_of["img001.jpg"] == "test"
    assert reasons["latin.jpg"] == "not_utf8" and split_of["latin.jpg"] == "train"
    assert rows[[r["id"] for r in rows].index("latin.jpg")]["path"].endswith(
        f":{len(GOOD_KINDS) + 21}")   # header + 25 rows, one of them on two lines, + 1
    short = [r for r in rows if r["id"].startswith(os.sep)]       # 3 fields: no id, no split
    assert [(r["reason"], r["split"]) for r in short] == [("malformed_row", UNASSIGNED)]
    assert all(":" in r["path"] for r in rows if r["reason"] not in BAD_KINDS.values())


def test_records_fields_and_round_trip(quilt_built):
    data_dir, _ = quilt_built
    for split in ("train", "test"):
        check_round_trip(data_dir, "quilt_1m", split)
    source = sources.open_source(data_dir, "quilt_1m", "train")
    first = source[0]
    assert first["id"] == "img000.jpg"
    assert first["caption"] == "Liver biopsy 0, with portal tracts."
    assert first["captions"] == ["Liver biopsy 0, with portal tracts.",
                                 "Hepatocytes with steatosis."]
    assert first["subset"] == "quilt" and first["magnification"] == 1
    assert first["pathology"] == ["Gastrointestinal", "Hepatobiliary"]
    assert first["umls_ids"] == ["C0227525", "C0023884", "C0015695"]
    tweet = source[len(GOOD_KINDS)]
    assert tweet["id"] == "twitter.png" and tweet["subset"] == "openpath"
    assert tweet["caption"] == "A tweet: melanoma in situ, see the lentiginous spread."
    assert tweet["magnification"] == -1 and tweet["umls_ids"] == []
    assert tweet["pathology"] == ["Dermatopathology"]
    assert column(data_dir, "quilt_1m", "test", "id") == [f"val{i}.jpg" for i in range(4)]
    assert [len(c) for c in column(data_dir, "quilt_1m", "test", "captions")] == [1, 2, 1, 1]
    # The retrieval evaluation scores both captions of the second image as its positives.
    from medclip_jax.evaluation.retrieval import captions_per_image
    from medclip_jax.evaluation import retrieval
    annotations = sources.load_annotations(data_dir, "quilt_1m", "test")
    texts, image_positives, _ = retrieval.build_positives(captions_per_image(annotations))
    assert len(texts) == 5 and (image_positives[1] >= 0).sum() == 2
    assert_disjoint(data_dir, "quilt_1m", "id", splits=("train", "test"))
    metadata = sources.dataset_metadata(data_dir, "quilt_1m")
    assert "val" in metadata["split_rule"] and "test" in metadata["split_rule"]
    assert metadata["magnification"]["2"] == "high"


def test_images_in_several_unpacked_parts(tmp_path):
    write_image(str(tmp_path / "images_part_1" / "quilt_1m" / "a.jpg"), "rgb_jpeg", seed=1)
    write_image(str(tmp_path / "images_part_2" / "b.jpg"), "grey_png", seed=2)
    write_image(str(tmp_path / "images_part_2" / "d.jpg"), "rgb_jpeg", seed=3)
    write_lookup(str(tmp_path / "quilt_1M_lookup.csv"),
                 [row("a.jpg", "Part one."), row("b.jpg", "Part two."),
                  row("c.jpg", "In no part.", split="val"), row("b.jpg", "Held out.", split="val"),
                  row("d.jpg", "Held out too.", split="val")])
    (report,) = run_build("quilt_1m", tmp_path, tmp_path / "out")
    assert report.written == {"train": 2, "test": 1}
    assert reasons_by_id(check_report(report)) == {"c.jpg": "missing_file",
                                                   "b.jpg": "split_conflict"}


def test_missing_files_are_one_line_errors(tmp_path):
    (tmp_path / "README.md").write_text("not the release")
    with pytest.raises(UserError, match="quilt_1M_lookup.csv"):
        run_build("quilt_1m", tmp_path, tmp_path / "out")
    write_lookup(str(tmp_path / "quilt_1M_lookup.csv"), [row("a.jpg", "x")])
    with pytest.raises(UserError, match="quilt_1m/"):
        run_build("quilt_1m", tmp_path, tmp_path / "out")
    os.makedirs(tmp_path / "quilt_1m")
    with open(tmp_path / "quilt_1M_lookup.csv", "w") as f:
        f.write(",caption,image_path,subset\n0,x,a.jpg,quilt\n")
    with pytest.raises(UserError, match="split"):
        run_build("quilt_1m", tmp_path, tmp_path / "out")


def test_exact_duplicate_row_is_a_reject(tmp_path):
    """A repeated lookup line is listed and counted: written + rejected + rows kept as another
    caption of a record = rows read."""
    for i, name in enumerate(("a.jpg", "b.jpg")):
        write_image(str(tmp_path / "quilt_1m" / name), "rgb_jpeg", seed=i)
    lookup = str(tmp_path / "quilt_1M_lookup.csv")
    rows = [row("a.jpg", "Liver biopsy."), row("a.jpg", "Portal tract."),
            row("b.jpg", "Held out.", split="val")]
    write_lookup(lookup, rows)
    with open(lookup, "rb") as f:
        first_row = f.read().split(b"\n")[1]
    with open(lookup, "ab") as f:
        f.write(first_row + b"\n")  # line 5 repeats line 2, index column included
    (report,) = run_build("quilt_1m", tmp_path, tmp_path / "out")
    rejects = check_report(report)
    assert rejects == [{"split": "train", "id": "a.jpg", "path": f"{lookup}:5",
                        "reason": "duplicate_row",
                        "detail": f"same image and caption as {lookup}:2"}]
    assert report.written == {"train": 1, "test": 1} and report.found == {"train": 2, "test": 1}
    assert report.rows_read == {"train": 3, "test": 1}
    assert report.rows_merged == {"train": 1, "test": 0}
