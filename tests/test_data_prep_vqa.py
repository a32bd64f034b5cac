"""VQA-RAD and PathVQA builders on fixtures in the publishers' layouts (the OSF VQA-RAD archive;
PathVQA's pvqa/ folder with pickled annotations)."""

import json
import os
import pickle
from collections import Counter

import pytest

from data_prep import vqa
from data_prep_helpers import (assert_disjoint, check_report, check_round_trip, column,
                               reasons_by_id, run_build, write_image)
from medclip_jax.data import sources
from medclip_jax.errors import UserError

LATIN1 = "@LATIN1@"


def rad_row(qid, image, question, answer, answer_type="CLOSED", phrase_type="freeform",
            **extra):
    row = {"qid": qid, "phrase_type": phrase_type, "qid_linked_id": f"link-{qid}",
           "image_case_url": "https://medpix.nlm.nih.gov/case?id=x", "image_name": image,
           "image_organ": "HEAD", "evaluation": "not evaluated", "question": question,
           "question_rephrase": "NULL", "question_relation": "NULL", "question_frame": "NULL",
           "question_type": "PRES", "answer": answer, "answer_type": answer_type}
    row.update(extra)
    return row


@pytest.fixture(scope="module")
def rad_raw(tmp_path_factory):
    """The OSF archive below an ``osfstorage-archive/`` folder, as OSF's zip unpacks."""
    root = tmp_path_factory.mktemp("vqa_rad_raw") / "osfstorage-archive"
    images = root / "VQA_RAD Image Folder"
    for n, kind in enumerate(("rgb_jpeg", "grey_png", "rgb_jpeg")):
        write_image(str(images / f"synpic{100 + n}.jpg"), kind, seed=n)
    write_image(str(images / "synpic900.jpg"), "truncated_jpeg")
    rows = [
        rad_row(0, "synpic100.jpg", "Are regions of the brain infarcted?", "Yes"),
        rad_row("1", "synpic100.jpg", "Is there   infarction in the brain?", "No.",
                answer_type="CLOSED ", phrase_type="para"),
        rad_row(2, "synpic101.jpg", "How many lesions are seen?", 4, answer_type="OPEN",
                question_type="COUNT", image_organ="CHEST"),
        rad_row(3, "synpic101.jpg", "Where is the mass?", "  Right\tlung ",
                answer_type="OPEN", phrase_type="test_freeform", question_type="POS"),
        rad_row(4, "synpic102.jpg", "Is the mass on the left or right?", "Left",
                answer_type="closed", phrase_type="test_para"),
        rad_row(5, "synpic102.jpg", "What is the size in cm?", 1.5, answer_type="OPEN",
                phrase_type="test_freeform"),
        rad_row(10, "synpic100.jpg", "   ", "Yes"),                    # empty question
        {k: v for k, v in rad_row(11, "", "Q?", "Yes").items() if k != "image_name"},
        rad_row(12, "synpic555.jpg", "Unknown image?", "Yes"),        # not in the folder
        rad_row(13, "synpic900.jpg", "Corrupt image?", "Yes"),
        rad_row(14, "synpic100.jpg", "List answer?", ["yes"]),       # not text, not a number
        rad_row(15, "synpic100.jpg", "Null answer?", None),
        rad_row(16, "synpic100.jpg", "Odd type?", "Yes", answer_type="MAYBE"),
        rad_row(17, "synpic100.jpg", "are regions of the brain infarcted?", "yes"),  # dup QA
        rad_row(0, "synpic101.jpg", "A reused qid?", "Yes"),
        rad_row(18, "synpic100.jpg", LATIN1, "Yes"),
        "not an object",
    ]
    text = json.dumps(rows, indent=1).encode().replace(LATIN1.encode(), b"Caf\xe9?")
    (root / vqa.VQA_RAD_JSON).write_bytes(text)
    return str(root.parent)


@pytest.fixture(scope="module")
def rad_built(rad_raw, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("vqa_rad_tfds"))
    (report,) = run_build("vqa_rad", rad_raw, data_dir)
    return data_dir, report


def test_vqa_rad_counts_and_rejects(rad_built):
    _, report = rad_built
    rows = check_report(report)
    assert report.written == {"train": 3, "test": 3}
    assert report.found == {"train": 3 + 11, "test": 3}
    reasons = reasons_by_id(rows)
    assert reasons == {"10": "empty_question", "11": "missing_image", "12": "missing_file",
                       "13": "corrupt", "14": "bad_value", "15": "empty_answer",
                       "16": "unknown_answer_type", "17": "duplicate_qa", "0": "duplicate_id",
                       "18": "not_utf8", "row16": "malformed_row"}
    assert all("VQA_RAD Dataset Public.json[" in r["path"] for r in rows
               if r["reason"] not in ("missing_file", "corrupt"))


def test_vqa_rad_fields_split_and_answer_types(rad_built):
    data_dir, _ = rad_built
    train = sources.open_source(data_dir, "vqa_rad", "train")
    first = train[0]
    assert first["id"] == "0" and first["image_id"] == "synpic100"
    assert first["question"] == "Are regions of the brain infarcted?"
    assert (first["answer"], first["answer_normalized"], first["answer_type"]) == (
        "Yes", "yes", "closed")
    assert (first["question_type"], first["image_organ"], first["phrase_type"],
            first["answer_type_source"]) == ("PRES", "HEAD", "freeform", "CLOSED")
    assert column(data_dir, "vqa_rad", "train", "answer_type_source") == [
        "CLOSED", "CLOSED ", "OPEN"]
    assert column(data_dir, "vqa_rad", "train", "answer") == ["Yes", "No.", "4"]
    assert column(data_dir, "vqa_rad", "train", "question")[1] == (
        "Is there infarction in the brain?")
    assert column(data_dir, "vqa_rad", "test", "phrase_type") == [
        "test_freeform", "test_para", "test_freeform"]
    assert column(data_dir, "vqa_rad", "test", "answer") == ["Right lung", "Left", "1.5"]
    assert column(data_dir, "vqa_rad", "test", "answer_normalized") == [
        "right lung", "left", "1.5"]
    # The publisher's answer type, not yes/no: "left or right?" is closed.
    assert column(data_dir, "vqa_rad", "test", "answer_type") == ["open", "closed", "open"]
    assert_disjoint(data_dir, "vqa_rad", "id", splits=("train", "test"))
    info = sources.read_builder(sources.dataset_dir(data_dir, "vqa_rad")).info
    assert set(info.splits) == {"train", "test"}
    meta = info.metadata
    assert meta["task"] == "vqa" and "test_freeform" in meta["split_rule"]
    assert "CLOSED" in meta["answer_type_rule"] and meta["answer_field"] == "answer_normalized"
    for split in ("train", "test"):
        check_round_trip(data_dir, "vqa_rad", split, caption_field="question")


def write_pickle(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)


@pytest.fixture(scope="module")
def pvqa_raw(tmp_path_factory):
    """pvqa/ with train and val as qas/<split>/<split>_qa.pkl and test only as the LXMERT-style
    qas/test_vqa.pkl."""
    manual = tmp_path_factory.mktemp("path_vqa_raw")
    root = manual / "pvqa"
    for split, kinds in (("train", ("rgb_jpeg", "tiff", "truncated_jpeg")),
                         ("val", ("rgb_jpeg",)), ("test", ("rgb_jpeg", "rgb_jpeg"))):
        for n, kind in enumerate(kinds):
            write_image(str(root / "images" / split / f"{split}_{n:04d}.jpg"), kind, seed=n)
    write_pickle(str(root / "qas" / "train" / "train_qa.pkl"), [
        {"image": "train_0000", "question": "Is this tissue malignant?", "answer": "yes"},
        {"image": "train_0000", "question": "What is present?", "answer": "Necrosis."},
        {"image": "train_0001", "question": "How many nuclei are there?", "answer": 3},
        {"image": "train_0001", "question": "", "answer": "no"},
        {"image": "train_9999", "question": "Unknown image?", "answer": "yes"},
        {"question": "No image?", "answer": "yes"},
        {"image": "train_0002", "question": "Corrupt image?", "answer": "no"},
        {"image": "train_0000", "question": "Is this tissue malignant?", "answer": "yes"},
        {"image": "train_0001", "question": "Which answer?", "answer": {"a": 1}},
        ["not", "a", "dict"],
    ])
    write_pickle(str(root / "qas" / "val" / "val_qa.pkl"), [
        {"image": "val_0000", "question": "Is fibrosis seen?", "answer": "No"},
        {"image": "val_0000", "question": "Are there giant cells?", "answer": "YES!"},
    ])
    write_pickle(str(root / "qas" / "test_vqa.pkl"), [
        {"answer_type": "yes/no", "img_id": "test_0000", "label": {"yes": 1},
         "question_id": 300000000, "question_type": "yes/no", "sent": "Is there edema?"},
        {"answer_type": "other", "img_id": "test_0001", "label": {"in the liver": 1},
         "question_id": 300001000, "question_type": "where", "sent": "Where are these?"},
    ])
    write_pickle(str(root / "qas" / "trainval_ans2label.pkl"), {"yes": 0, "no": 1})
    return str(manual)


@pytest.fixture(scope="module")
def pvqa_built(pvqa_raw, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("path_vqa_tfds"))
    (report,) = run_build("path_vqa", pvqa_raw, data_dir)
    return data_dir, report


def test_path_vqa_counts_and_rejects(pvqa_built):
    _, report = pvqa_built
    rows = check_report(report)
    assert report.written == {"train": 3, "validation": 2, "test": 2}
    assert report.found["train"] == 10
    assert reasons_by_id(rows) == {
        "train_q00003": "empty_question", "train_q00004": "missing_file",
        "train_q00005": "missing_image", "train_q00006": "corrupt",
        "train_q00007": "duplicate_qa", "train_q00008": "bad_value",
        "train_q00009": "malformed_row"}


def test_path_vqa_fields_answer_types_and_splits(pvqa_built):
    data_dir, _ = pvqa_built
    assert column(data_dir, "path_vqa", "train", "id") == [
        "train_q00000", "train_q00001", "train_q00002"]
    assert column(data_dir, "path_vqa", "train", "answer") == ["yes", "Necrosis.", "3"]
    assert column(data_dir, "path_vqa", "train", "answer_normalized") == [
        "yes", "necrosis", "3"]
    assert column(data_dir, "path_vqa", "train", "answer_type") == ["closed", "open", "open"]
    assert column(data_dir, "path_vqa", "validation", "answer_normalized") == ["no", "yes"]
    assert column(data_dir, "path_vqa", "validation", "answer_type") == ["closed", "closed"]
    test = sources.open_source(data_dir, "path_vqa", "test")
    assert [test[i]["id"] for i in range(2)] == ["300000000", "300001000"]
    assert test[1]["question"] == "Where are these?" and test[1]["answer"] == "in the liver"
    assert test[1]["image_id"] == "test_0001" and test[1]["answer_type"] == "open"
    assert_disjoint(data_dir, "path_vqa", "image_id")
    assert_disjoint(data_dir, "path_vqa", "id")
    meta = sources.read_builder(sources.dataset_dir(data_dir, "path_vqa")).info.metadata
    assert "yes" in meta["answer_type_rule"] and "val -> validation" in meta["split_rule"]
    for split in ("train", "validation", "test"):
        check_round_trip(data_dir, "path_vqa", split, caption_field="question")


class Payload:
    """Unpickling this would call print: a restricted unpickler must refuse it."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("obj", [Payload(), Counter(a=1), [{"image": "x", "answer": {1, 2}}]])
def test_non_plain_pickles_are_refused(tmp_path, capsys, obj):
    path = tmp_path / "train_qa.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(UserError, match=r"train_qa\.pkl: refusing to unpickle") as e:
        vqa.read_plain_pickle(str(path))
    assert "\n" not in str(e.value)
    assert "never run" not in capsys.readouterr().out


def test_plain_pickles_load_including_python2_strings(tmp_path):
    data = [{"image": "train_0000", "question": "Is it?", "answer": "yes", "n": 1.5}]
    path = tmp_path / "a.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    assert vqa.read_plain_pickle(str(path)) == data
    # Python 2's pickle writes byte strings (SHORT_BINSTRING, protocol 2): "caf\xc3\xa9".
    py2 = b"\x80\x02]q\x00U\x05caf\xc3\xa9q\x01a."
    path.write_bytes(py2)
    assert vqa.read_plain_pickle(str(path)) == ["café"]
    path.write_bytes(b"\x80\x02]q\x00U\x04caf\xe9q\x01a.")
    (text,) = vqa.read_plain_pickle(str(path))
    with pytest.raises(vqa.core.BadText, match="UTF-8"):
        vqa.as_text(text, "empty_question")
    path.write_bytes(pickle.dumps(data)[:-5])
    with pytest.raises(UserError, match="not a readable pickle"):
        vqa.read_plain_pickle(str(path))


def test_normalization_and_answer_type_rules():
    assert vqa.normalize_answer("Yes.") == "yes"
    assert vqa.normalize_answer("  Right \t Lung !? ") == "right lung"
    assert vqa.normalize_answer("1.5") == "1.5"
    assert vqa.normalize_answer("e.g. cyst, mass") == "e.g. cyst, mass"
    assert vqa.as_text(4, "empty_answer") == "4" and vqa.as_text(2.0, "empty_answer") == "2"
    with pytest.raises(vqa.core.BadText, match="boolean"):
        vqa.as_text(True, "empty_answer")
    assert vqa.yes_no_answer_type("yes") == "closed"
    assert vqa.yes_no_answer_type("left") == "open"
    assert vqa.vqa_rad_answer_type(" closed ") == "closed"
    assert vqa.vqa_rad_split("test_para") == "test" and vqa.vqa_rad_split("para") == "train"


def test_missing_or_broken_annotations_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="VQA_RAD Dataset Public.json"):
        run_build("vqa_rad", tmp_path, tmp_path / "out")
    with pytest.raises(UserError, match="qas"):
        run_build("path_vqa", tmp_path, tmp_path / "out")
    (tmp_path / vqa.VQA_RAD_JSON).write_text('[{"qid": 1,')
    (tmp_path / "VQA_RAD Image Folder").mkdir()
    with pytest.raises(UserError, match="not valid JSON"):
        vqa.VqaRad(data_dir=str(tmp_path / "out")).scan(str(tmp_path))
    pvqa = tmp_path / "pvqa"
    for split in ("train", "val", "test"):
        (pvqa / "images" / split).mkdir(parents=True)
    write_pickle(str(pvqa / "qas" / "train" / "train_qa.pkl"), [])
    with pytest.raises(UserError, match=r"val/val_qa\.pkl"):
        vqa.PathVqa(data_dir=str(tmp_path / "out")).scan(str(tmp_path))
    write_pickle(str(pvqa / "qas" / "val" / "val_qa.pkl"), [Counter(a=1)])
    with pytest.raises(UserError, match=r"val_qa\.pkl: refusing to unpickle collections"):
        vqa.PathVqa(data_dir=str(tmp_path / "out")).scan(str(tmp_path))
