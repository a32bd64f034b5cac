"""PMC-OA builder on fixtures in the Hugging Face release's layouts (axiong/pmc_oa): the first
release's split files train/valid/test.jsonl (config pmc_oa_beta), and the current unsplit
pmc_oa.jsonl (config pmc_oa) / pmc_oa_beta.jsonl."""

import json
import math
import os

import pytest

from data_prep import pmc_oa
from data_prep_helpers import (BAD_KINDS, GOOD_KINDS, assert_disjoint, check_report,
                               check_round_trip, column, reasons_by_id, run_build, write_image)
from medclip_jax.data import sources
from medclip_jax.errors import UserError

IMAGES = pmc_oa.IMAGE_FOLDER
BETA = "pmc_oa@pmc_oa_beta"


def line(image, caption, **extra) -> bytes:
    return json.dumps({"image": image, "caption": caption, **extra}).encode()


def write_jsonl(path, lines) -> None:
    with open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")


@pytest.fixture(scope="module")
def split_raw(tmp_path_factory):
    """train/valid/test.jsonl below a pmc_oa/ folder, images in the folder images.zip makes."""
    root = str(tmp_path_factory.mktemp("pmc_split"))
    base = os.path.join(root, "pmc_oa")
    images = os.path.join(base, IMAGES)
    train = []
    for i, kind in enumerate(GOOD_KINDS):
        name = f"PMC100{i}_Fig1_{i}.jpg"
        write_image(os.path.join(images, name), kind, seed=i)
        train.append(line(name, f"Subfigure {i}: CT of the chest.", pmcid=f"PMC100{i}",
                          url_name=f"fig{i}.jpg"))
    # A second and a repeated caption of the first image: one record with two captions.
    train.append(line("PMC1000_Fig1_0.jpg", "Second subcaption of image 0.", pmcid="PMC1000"))
    train.append(line("PMC1000_Fig1_0.jpg", "Subfigure 0: CT of the chest.", pmcid="PMC1000"))
    for i, kind in enumerate(BAD_KINDS):
        name = f"PMC200{i}_Fig2_1.jpg"
        write_image(os.path.join(images, name), kind, seed=i)
        train.append(line(name, "A broken image.", pmcid=f"PMC200{i}"))
    train += [
        line("PMC3000_missing.jpg", "No such file."),
        b'{"image": "PMC3001_a.jpg", "caption": "unterminated',
        json.dumps({"image": "PMC3002_a.jpg", "pmcid": "PMC3002"}).encode(),
        json.dumps({"image": "PMC3003_a.jpg", "caption": 123}).encode(),
        line("PMC3004_a.jpg", "   "),
        b'{"image": "PMC3005_a.jpg", "caption": "Caf\xe9 au lait."}',
        line("../PMC3006_escape.jpg", "Outside the image folder."),
        b"[1, 2, 3]",
    ]
    write_jsonl(os.path.join(base, "train.jsonl"), train)
    valid = []
    for i in range(3):
        name = f"PMC400{i}_Fig1_1.jpg"
        write_image(os.path.join(images, name), "grey_png", seed=10 + i)
        valid.append(line(name, f"MRI {i} of the knee."))
    valid.append(line("PMC1001_Fig1_1.jpg", "Already a training image."))
    write_jsonl(os.path.join(base, "valid.jsonl"), valid)
    test = []
    for i in range(4):
        name = f"PMC500{i}_Fig1_1.jpg"
        write_image(os.path.join(images, name), "rgb_jpeg", seed=20 + i)
        test.append(line(name, f"Ultrasound {i}."))
    test.append(line("PMC5000_Fig1_1.jpg", "Another caption of test image 0."))
    write_jsonl(os.path.join(base, "test.jsonl"), test)
    return root


@pytest.fixture(scope="module")
def split_built(split_raw, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("pmc_split_tfds"))
    (report,) = run_build("pmc_oa@pmc_oa_beta", split_raw, data_dir)
    return data_dir, report


def test_split_files_counts_and_rejects(split_built, split_raw):
    _, report = split_built
    rows = check_report(report)
    assert report.written == {"train": len(GOOD_KINDS), "validation": 3, "test": 4}
    reasons = reasons_by_id(rows)
    for i, kind in enumerate(BAD_KINDS):
        assert reasons[f"PMC200{i}_Fig2_1.jpg"] == BAD_KINDS[kind]
    assert reasons["PMC3000_missing.jpg"] == "missing_file"
    assert reasons["PMC3002_a.jpg"] == "malformed_row"   # no caption key
    assert reasons["PMC3003_a.jpg"] == "malformed_row"   # caption is a number
    assert reasons["PMC3004_a.jpg"] == "empty_caption"
    assert reasons["PMC3005_a.jpg"] == "not_utf8"
    assert reasons["../PMC3006_escape.jpg"] == "malformed_row"
    assert reasons["PMC1001_Fig1_1.jpg"] == "split_conflict"
    by_where = {r["path"]: r for r in rows}
    train_file = os.path.join(split_raw, "pmc_oa", "train.jsonl")
    broken = by_where[f"{train_file}:{len(GOOD_KINDS) + 2 + len(BAD_KINDS) + 2}"]
    assert broken["reason"] == "malformed_row" and "JSON" in broken["detail"]
    assert by_where[f"{train_file}:{len(GOOD_KINDS) + 2 + len(BAD_KINDS) + 8}"]["detail"] \
        .startswith("a JSON list")
    conflict = [r for r in rows if r["reason"] == "split_conflict"][0]
    assert conflict["split"] == "validation" and "train" in conflict["detail"]
    assert all(":" in r["path"] or os.sep in r["path"] for r in rows)


def test_split_files_records_and_round_trip(split_built):
    data_dir, _ = split_built
    for split in ("train", "validation", "test"):
        check_round_trip(data_dir, BETA, split)
    first = sources.open_source(data_dir, BETA, "train")[0]
    assert first["id"] == "PMC1000_Fig1_0.jpg"
    assert first["caption"] == "Subfigure 0: CT of the chest."
    assert first["captions"] == ["Subfigure 0: CT of the chest.", "Second subcaption of image 0."]
    assert first["pmcid"] == "PMC1000" and first["url_name"] == "fig0.jpg"
    assert first["alignment_types"] == ["", ""]
    assert all(math.isnan(s) for s in first["alignment_scores"])
    assert column(data_dir, BETA, "train", "id") == [f"PMC100{i}_Fig1_{i}.jpg"
                                                    for i in range(len(GOOD_KINDS))]
    test_captions = column(data_dir, BETA, "test", "captions")
    assert [len(c) for c in test_captions] == [2, 1, 1, 1]
    assert_disjoint(data_dir, BETA, "id")
    metadata = sources.dataset_metadata(data_dir, BETA)
    assert metadata["config"] == "pmc_oa_beta" and "valid.jsonl" in metadata["split_rule"]


@pytest.fixture(scope="module")
def unsplit_raw(tmp_path_factory):
    """The current release: pmc_oa.jsonl and pmc_oa_beta.jsonl, images/<subfigures folder>/."""
    root = str(tmp_path_factory.mktemp("pmc_unsplit"))
    images = os.path.join(root, "images", IMAGES)
    lines, beta = [], []
    for article in range(12):
        for fig in range(3):
            name = f"PMC{7000 + article}_Fig{fig}_1.jpg"
            write_image(os.path.join(images, name), "rgb_jpeg", seed=article * 3 + fig)
            lines.append(line(name, f"Panel {fig} of article {article}.",
                              alignment_type="subcaption", alignment_score=0.5 + fig / 10))
            beta.append(line(name, f"Compound caption of article {article}."))
    lines.append(b'{"image": "PMC7003_Fig9_1.jpg", "caption": ')  # malformed, known article
    lines.append(b"not json at all")                               # malformed, no article
    lines.append(line("PMC7004_Fig0_1.jpg", "Panel 0 of article 4.", alignment_score="high"))
    write_jsonl(os.path.join(root, "pmc_oa.jsonl"), lines)
    write_jsonl(os.path.join(root, "pmc_oa_beta.jsonl"), beta)
    return root


@pytest.fixture(scope="module")
def unsplit_built(unsplit_raw, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("pmc_unsplit_tfds"))
    (report,) = run_build("pmc_oa", unsplit_raw, data_dir)
    return data_dir, report


def test_unsplit_article_disjoint_split(unsplit_built, unsplit_raw):
    data_dir, report = unsplit_built
    rows = check_report(report)
    assert sum(report.written.values()) == 36
    assert set(report.written) >= {"train", "validation", "test"}
    assert all(report.written[s] % 3 == 0 and report.written[s] > 0
               for s in ("train", "validation", "test"))   # whole articles only
    assert report.written["train"] > report.written["test"] > 0
    assert_disjoint(data_dir, "pmc_oa", "pmcid")
    assert_disjoint(data_dir, "pmc_oa", "id")
    where = {r["path"].rsplit(":", 1)[1]: r for r in rows}
    known = where["37"]
    assert known["reason"] == "malformed_row"
    assert known["split"] in ("train", "validation", "test")
    assert known["split"] == [s for s in ("train", "validation", "test")
                              if "PMC7003" in column(data_dir, "pmc_oa", s, "pmcid")][0]
    assert where["38"]["split"] == pmc_oa.UNASSIGNED
    assert where["39"]["reason"] == "malformed_row" and "alignment_score" in where["39"]["detail"]
    record = sources.open_source(data_dir, "pmc_oa", "train")[0]
    assert record["alignment_types"] == ["subcaption"]
    assert record["alignment_scores"][0] == pytest.approx(
        0.5 + int(record["id"].split("_")[1][3:]) / 10)
    check_round_trip(data_dir, "pmc_oa", "test")


def test_unsplit_split_is_deterministic(unsplit_built, unsplit_raw, tmp_path):
    data_dir, _ = unsplit_built
    run_build("pmc_oa", unsplit_raw, tmp_path)
    for split in ("train", "validation", "test"):
        assert column(tmp_path, "pmc_oa", split, "id") == column(data_dir, "pmc_oa", split, "id")


def test_beta_config_reads_compound_captions(unsplit_raw, tmp_path):
    (report,) = run_build(BETA, unsplit_raw, tmp_path)
    assert sum(report.written.values()) == 36 and not report.rejects
    captions = column(tmp_path, BETA, "train", "caption")
    assert all(c.startswith("Compound caption of article") for c in captions)
    assert_disjoint(tmp_path, BETA, "pmcid")
    assert "pmc_oa_beta.jsonl" in sources.dataset_metadata(tmp_path, BETA)["split_rule"]


def test_missing_files_are_one_line_errors(tmp_path):
    (tmp_path / "README.md").write_text("not the release")
    with pytest.raises(UserError, match="subfigures"):
        run_build("pmc_oa", tmp_path, tmp_path / "out")
    os.makedirs(tmp_path / IMAGES)
    with pytest.raises(UserError, match="pmc_oa.jsonl"):
        run_build("pmc_oa", tmp_path, tmp_path / "out")
    with pytest.raises(UserError, match="pmc_oa_beta.jsonl"):
        run_build(BETA, tmp_path, tmp_path / "out")


def test_default_config_uses_the_publishers_split_files(split_raw, split_built, tmp_path):
    (report,) = run_build("pmc_oa", split_raw, tmp_path)
    data_dir, beta_report = split_built
    assert report.written == beta_report.written
    for split in ("train", "validation", "test"):
        assert column(tmp_path, "pmc_oa", split, "id") == column(data_dir, BETA, split, "id")


def duplicate_rows(rows):
    return [r for r in rows if r["reason"] == "duplicate_row"]


def test_exact_duplicate_row_is_a_reject_in_a_split_file(tmp_path):
    """A repeated line (same image, same caption) is listed and counted, so the rows read add
    up: written + rejected + rows kept as another caption of a record = rows read."""
    for i, name in enumerate(("PMC1_Fig1_0.jpg", "PMC2_Fig1_0.jpg")):
        write_image(str(tmp_path / IMAGES / name), "rgb_jpeg", seed=i)
    first = line("PMC1_Fig1_0.jpg", "CT of the chest.", pmcid="PMC1")
    train = str(tmp_path / "train.jsonl")
    write_jsonl(train, [first, line("PMC1_Fig1_0.jpg", "A second caption."),
                        line("PMC2_Fig1_0.jpg", "MRI of the knee."), first])
    (report,) = run_build(BETA, tmp_path, tmp_path / "out")
    rows = check_report(report)
    assert duplicate_rows(rows) == [{
        "split": "train", "id": "PMC1_Fig1_0.jpg", "path": f"{train}:4",
        "reason": "duplicate_row", "detail": f"same image and caption as {train}:1"}]
    assert report.written == {"train": 2} and report.found == {"train": 3}
    assert report.rows_read == {"train": 4} and report.rows_merged == {"train": 1}
    assert column(tmp_path / "out", BETA, "train", "captions")[0] == [
        "CT of the chest.", "A second caption."]


def test_exact_duplicate_row_of_an_unsplit_file_goes_to_its_images_split(tmp_path):
    lines = []
    for article in range(6):
        name = f"PMC{article}_Fig1_0.jpg"
        write_image(str(tmp_path / IMAGES / name), "rgb_jpeg", seed=article)
        lines.append(line(name, f"Panel of article {article}.", alignment_score=0.5))
    lines.append(lines[2])
    path = str(tmp_path / "pmc_oa.jsonl")
    write_jsonl(path, lines)
    (report,) = run_build("pmc_oa", tmp_path, tmp_path / "out")
    (dup,) = duplicate_rows(check_report(report))
    assert dup["id"] == "PMC2_Fig1_0.jpg" and dup["path"] == f"{path}:7"
    assert dup["detail"] == f"same image and caption as {path}:3"
    assert "PMC2_Fig1_0.jpg" in column(tmp_path / "out", "pmc_oa", dup["split"], "id")
    assert sum(report.rows_read.values()) == 7 and sum(report.written.values()) == 6
