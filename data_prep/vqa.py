"""Medical visual question answering: VQA-RAD (radiology) and PathVQA (pathology), one record
per question, read from the folders their publishers ship.

VQA-RAD -- Lau, Gayen, Ben Abacha, Demner-Fushman, "A dataset of clinically generated visual
questions and answers about radiology images", Scientific Data 5, 180251 (2018); OSF release
https://osf.io/89kps/. Raw layout (the OSF archive, under manual_dir directly or below one of
``VQA_RAD/``, ``VQA-RAD/``, ``vqa_rad/``, ``osfstorage-archive/``)::

    VQA_RAD Dataset Public.json   list of {"qid", "phrase_type", "qid_linked_id",
                                  "image_case_url", "image_name", "image_organ", "evaluation",
                                  "question", "question_rephrase", "question_relation",
                                  "question_frame", "question_type", "answer", "answer_type"}
    VQA_RAD Dataset Public.xlsx   the same rows (not read)
    VQA_RAD Dataset Public.xml    the same rows (not read)
    VQA_RAD Image Folder/         synpic54610.jpg, ...   (``VQA_RAD_Image_Folder/`` accepted)
    Readme.docx

Only the JSON is read: the .xlsx and .xml hold the same rows, and the JSON is what the
literature's loaders read. Split (the publisher's, Readme section 5.0): ``test`` = rows whose
``phrase_type`` starts with ``test`` (``test_freeform`` and ``test_para``: 300 free-form
questions and their 151 paraphrases, 451 in all); ``train`` = the rest (``freeform``, ``para``;
1,797). VQA-RAD has no validation split. The framed questions (``question_frame`` column) are
not separate rows and are not emitted: the 3,064-question train set of the literature (MEVF's
``data_RAD/trainset.json``) is these 1,797 plus the 1,267 framed questions as rows of their own
(phrase_type ``frame``; a JSON holding such rows puts them in train). Test images also occur
in train (the split is by question, not by image). ``answer_type`` is the publisher's A_TYPE:
``closed`` when it reads ``CLOSED`` (case and surrounding spaces ignored, e.g. ``"CLOSED "``),
``open`` when it reads ``OPEN``, anything else is rejected. VQA-RAD's closed questions include
limited-choice ones ("left or right?"), not only yes/no.

PathVQA -- He, Zhang, Mou, Xing, Xie, "PathVQA: 30000+ Questions for Medical Visual Question
Answering", arXiv:2003.10286 (2020); https://github.com/UCSD-AI4H/PathVQA (Google Drive folder
``pvqa``). Raw layout, under manual_dir directly or below ``pvqa/``::

    pvqa/images/{train,val,test}/train_0422.jpg, ...
    pvqa/qas/{train,val,test}/{split}_qa.pkl   list of {"image": "train_0422",
                                               "question": ..., "answer": ...}
    pvqa/qas/{split}_vqa.pkl                   list of {"img_id", "sent", "label": {answer: 1},
                                               "question_id", "answer_type", "question_type"}
    pvqa/qas/trainval_ans2label.pkl, ... , {split}_img_id2idx.pkl   (not read)

Per split, ``{split}/{split}_qa.pkl`` is read (``qas/{split}_qa.pkl`` accepted), else the
LXMERT-style ``{split}_vqa.pkl``. The annotation files are pickles: they are read with a
restricted unpickler that only builds plain lists, dicts, strings and numbers and refuses every
class or function a pickle names (a pickle can run code when loaded; a refused one is an error
naming the file). Splits: the publisher's train / val / test, val named ``validation``. Question
ids: ``question_id`` where the file has one, else ``<split>_q<index in the file>``.
``answer_type`` is ``closed`` when the normalized answer is ``yes`` or ``no``, else ``open`` (the
paper's yes/no vs open-ended division; the ``answer_type`` of ``_vqa.pkl`` rows, "yes/no" /
"other", is not read). Answers of ``_vqa.pkl`` rows: the best-scored key of ``label``.

Records (both): ``id`` (question id), ``image``, ``image_id`` (the image file's name without
extension: groups the questions of an image), ``question``, ``answer`` (the publisher's text,
whitespace collapsed; numbers written as text: 4 -> "4", 1.5 -> "1.5"), ``answer_normalized``
(`normalize_answer`: lower-cased, whitespace collapsed, trailing ``. , ; : ! ?`` removed;
evaluation compares these), ``answer_type`` (``closed`` / ``open``). VQA-RAD adds
``question_type`` (e.g. PRES, POS, ABN), ``image_organ`` (HEAD, CHEST, ABD), ``phrase_type`` and
``answer_type_source`` (the publisher's A_TYPE exactly as written).

Rejected (listed in rejects.jsonl, never dropped silently): rows that are not objects, empty or
missing questions/answers (``empty_question`` / ``empty_answer``), answers that are neither text
nor a number (``bad_value``), rows naming no image (``missing_image``), images absent from the
folder or unreadable (the image converter's reasons), non-UTF-8 text, unknown VQA-RAD answer
types, VQA-RAD rows without a qid (``missing_id``), duplicate question ids, and an
image-question-answer triplet repeated within a split (``duplicate_qa``: compared on image,
lower-cased question and normalized answer; the first occurrence is kept).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
from typing import Any

import tensorflow_datasets as tfds

from data_prep import core
from medclip_jax.data import text_ops
from medclip_jax.errors import UserError

CLOSED, OPEN = "closed", "open"
NORMALIZATION_RULE = ("Unicode NFKC, lower-cased, whitespace runs collapsed to one space, "
                      "trailing '.', ',', ';', ':', '!', '?' removed")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

VQA_RAD_JSON = "VQA_RAD Dataset Public.json"
VQA_RAD_ROOTS = ("", "VQA_RAD", "VQA-RAD", "vqa_rad", "osfstorage-archive")
VQA_RAD_IMAGE_DIRS = ("VQA_RAD Image Folder", "VQA_RAD_Image_Folder")
VQA_RAD_ANSWER_TYPES = {"CLOSED": CLOSED, "OPEN": OPEN}

PATH_VQA_ROOTS = ("", "pvqa")
PATH_VQA_SPLITS = {"train": "train", "val": "validation", "test": "test"}


# --------------------------------------------------------------------------------------------
# Text and answers
# --------------------------------------------------------------------------------------------


def check_utf8(text: str) -> str:
    """`text`, unless it carries undecodable bytes (surrogate escapes from the reader)."""
    try:
        text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:
        raise core.BadText("not_utf8", "the text is not valid UTF-8") from None
    return text


def as_text(value: Any, empty_reason: str) -> str:
    """A publisher's field as whitespace-cleaned text: str, UTF-8 bytes or a number (VQA-RAD
    writes some answers as JSON numbers); anything else is a `BadText`."""
    if value is None:
        raise core.BadText(empty_reason, "the field is missing or null")
    if isinstance(value, bool):
        raise core.BadText("bad_value", f"{value!r} is a boolean, not text")
    if isinstance(value, bytes):
        value = core.decode_utf8(value)
    elif isinstance(value, int):
        value = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise core.BadText("bad_value", f"{value!r} is not a finite number")
        value = str(int(value)) if value.is_integer() else repr(value)
    elif isinstance(value, str):
        value = check_utf8(value)
    else:
        raise core.BadText("bad_value", f"a {type(value).__name__}, not text: {value!r:.60}")
    text = core.clean_text(value)
    if not text:
        raise core.BadText(empty_reason, "the text is empty")
    return text


def optional_text(value: Any) -> str:
    """A descriptive field (organ, question type): its text, or "" when absent or unusable."""
    try:
        return as_text(value, "empty")
    except core.BadText:
        return ""


def normalize_answer(answer: str) -> str:
    """The form evaluation compares, the same rule as for captions
    (`text_ops.normalize_caption`: NFKC, lower-cased, whitespace collapsed, trailing
    punctuation removed; "Yes." == "yes"; "Right  Lung" == "right lung")."""
    return text_ops.normalize_caption(answer)


def yes_no_answer_type(answer_normalized: str) -> str:
    return CLOSED if answer_normalized in ("yes", "no") else OPEN


def image_stem(name: str) -> str:
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in IMAGE_EXTENSIONS else name


def image_path(folder: str, names: frozenset[str], name: str) -> str:
    """The file of image `name` (with or without its extension) in `folder`; a name not found
    gives the path it would have, which the image converter rejects as missing."""
    if name in names:
        return os.path.join(folder, name)
    stem = image_stem(name)
    for ext in IMAGE_EXTENSIONS:
        if stem + ext in names:
            return os.path.join(folder, stem + ext)
    return os.path.join(folder, name if stem != name else name + IMAGE_EXTENSIONS[0])


def list_images(folder: str) -> frozenset[str]:
    return frozenset(os.listdir(folder))


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def vqa_features(extra: tuple[str, ...] = ()) -> dict[str, tfds.features.FeatureConnector]:
    names = ("image_id", "question", "answer", "answer_normalized", "answer_type") + extra
    return {name: tfds.features.Text() for name in names}


def vqa_metadata(source: str, split_rule: str, answer_type_rule: str) -> dict[str, Any]:
    return {"task": "vqa", "source": source, "split_rule": split_rule,
            "answer_type_rule": answer_type_rule, "answer_normalization": NORMALIZATION_RULE,
            "question_field": "question", "answer_field": "answer_normalized"}


class Questions:
    """Adds questions to a `Scan`. A repeated question id (``duplicate_id``) or an
    image-question-answer triplet repeated within a split (``duplicate_qa``) is rejected
    pointing at both annotation rows; the first occurrence is kept."""

    def __init__(self, scan: core.Scan):
        self.scan = scan
        self._ids: dict[str, str] = {}
        self._triplets: dict[tuple[str, str, str, str], str] = {}

    def add(self, split: str, qid: str, image: str, fields: dict[str, Any], where: str) -> None:
        key = (split, fields["image_id"], fields["question"].lower(),
               fields["answer_normalized"])
        if qid in self._ids:
            self.scan.reject(split, qid, where, "duplicate_id",
                             f"id already used by {self._ids[qid]}")
        elif key in self._triplets:
            self.scan.reject(split, qid, where, "duplicate_qa",
                             f"same image, question and answer as {self._triplets[key]}")
        else:
            self._ids[qid] = self._triplets[key] = where
            self.scan.add(core.Item(split, qid, image, fields))


def question_fields(image_name: Any, question: Any, answer: Any) -> tuple[str, dict[str, str]]:
    """(image name, the shared record fields but answer_type) of a question; `BadText` when
    it cannot be a record."""
    name = as_text(image_name, "missing_image")
    question_text = as_text(question, "empty_question")
    answer_text = as_text(answer, "empty_answer")
    normalized = normalize_answer(answer_text)
    if not normalized:
        raise core.BadText("empty_answer", f"answer {answer_text!r} is only punctuation")
    return name, {"image_id": image_stem(name), "question": question_text,
                  "answer": answer_text, "answer_normalized": normalized}


# --------------------------------------------------------------------------------------------
# Reading annotation files
# --------------------------------------------------------------------------------------------


def read_json_list(path: str) -> list[Any]:
    """A JSON file holding a list; bytes that are not UTF-8 survive to the per-field checks."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", "surrogateescape").lstrip("\ufeff")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of question objects, got a "
                        f"{type(data).__name__}")
    return data


class RefusedPickle(pickle.UnpicklingError):
    pass


class PlainUnpickler(pickle.Unpickler):
    """Builds only what pickle opcodes make by themselves (lists, dicts, tuples, str, bytes,
    numbers, booleans, None): every class or function a pickle names is refused, so loading
    can neither import modules nor run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise RefusedPickle(f"{module}.{name}")


def read_plain_pickle(path: str) -> Any:
    """The data of a pickle made only of plain containers, strings and numbers; anything else
    is a one-line `UserError` naming the file. Python 2 byte strings decode as UTF-8, bad
    bytes kept as surrogate escapes for the per-field UTF-8 check."""
    try:
        with open(path, "rb") as f:
            return PlainUnpickler(io.BytesIO(f.read()), encoding="utf-8",
                                  errors="surrogateescape").load()
    except RefusedPickle as e:
        raise UserError(f"{path}: refusing to unpickle {e} (only plain lists, dicts, strings "
                        f"and numbers are read from annotation pickles; objects could run "
                        f"code)") from None
    except Exception as e:  # noqa: BLE001 -- truncated or garbled pickles raise anything
        raise UserError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------------------------
# VQA-RAD
# --------------------------------------------------------------------------------------------


def vqa_rad_root(manual_dir: str) -> str:
    """The folder holding ``VQA_RAD Dataset Public.json`` (manual_dir or one level below)."""
    candidates = [os.path.join(c, VQA_RAD_JSON) for c in VQA_RAD_ROOTS]
    return os.path.dirname(core.find_first(
        manual_dir, candidates, "the VQA-RAD OSF release (its JSON file and "
        "'VQA_RAD Image Folder/')"))


def vqa_rad_split(phrase_type: str) -> str:
    """The publisher's split: test_freeform / test_para are the test set, the rest train."""
    return "test" if phrase_type.lower().startswith("test") else "train"


def vqa_rad_answer_type(value: Any) -> str:
    label = optional_text(value).upper()
    if label not in VQA_RAD_ANSWER_TYPES:
        raise core.BadText("unknown_answer_type",
                           f"answer_type {value!r} is neither CLOSED nor OPEN")
    return VQA_RAD_ANSWER_TYPES[label]


def scan_vqa_rad_row(questions: Questions, row: Any, index: int, images: str,
                     names: frozenset[str], where: str) -> None:
    if not isinstance(row, dict):
        questions.scan.reject("train", f"row{index}", where, "malformed_row",
                              f"expected a JSON object, got {type(row).__name__}")
        return
    phrase_type = optional_text(row.get("phrase_type"))
    split = vqa_rad_split(phrase_type)
    qid = optional_text(row.get("qid"))
    if not qid:
        questions.scan.reject(split, f"row{index}", where, "missing_id", "the row has no qid")
        return
    try:
        name, fields = question_fields(row.get("image_name"), row.get("question"),
                                       row.get("answer"))
        fields["answer_type"] = vqa_rad_answer_type(row.get("answer_type"))
    except core.BadText as e:
        questions.scan.reject(split, qid, where, e.reason, str(e))
        return
    fields.update(question_type=optional_text(row.get("question_type")),
                  image_organ=optional_text(row.get("image_organ")),
                  phrase_type=phrase_type,
                  answer_type_source=str(row.get("answer_type")))
    questions.add(split, qid, image_path(images, names, name), fields, where)


class VqaRad(core.ManualImageBuilder):
    """VQA-RAD: clinicians' questions and answers about MedPix radiology images."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "the VQA-RAD OSF archive (https://osf.io/89kps/) unpacked: 'VQA_RAD Dataset "
        "Public.json' and 'VQA_RAD Image Folder/' with synpicNNNN.jpg")

    def record_features(self) -> dict[str, Any]:
        return vqa_features(("question_type", "image_organ", "phrase_type",
                             "answer_type_source"))

    def metadata(self) -> dict[str, Any]:
        return vqa_metadata(
            source="VQA-RAD, Lau et al. 2018, OSF release https://osf.io/89kps/",
            split_rule="publisher's: test = phrase_type test_freeform / test_para (451 "
                       "questions); train = the rest (freeform, para); no validation split",
            answer_type_rule="the publisher's answer_type: CLOSED -> closed, OPEN -> open "
                             "(case and surrounding spaces ignored; other values rejected); "
                             "closed includes limited-choice questions, not only yes/no")

    def scan(self, manual_dir: str) -> core.Scan:
        root = vqa_rad_root(manual_dir)
        json_path = os.path.join(root, VQA_RAD_JSON)
        images = core.find_first(root, VQA_RAD_IMAGE_DIRS,
                                 "the VQA-RAD image folder with synpicNNNN.jpg")
        names = list_images(images)
        scan = core.Scan()
        questions = Questions(scan)
        for index, row in enumerate(read_json_list(json_path)):
            scan_vqa_rad_row(questions, row, index, images, names, f"{json_path}[{index}]")
        return scan


# --------------------------------------------------------------------------------------------
# PathVQA
# --------------------------------------------------------------------------------------------


def path_vqa_root(manual_dir: str) -> str:
    """The ``pvqa`` folder (holding ``images/`` and ``qas/``): manual_dir or its ``pvqa/``."""
    candidates = [os.path.join(c, "qas") for c in PATH_VQA_ROOTS]
    return os.path.dirname(core.find_first(
        manual_dir, candidates, "the PathVQA release folder pvqa/ with images/ and qas/"))


def path_vqa_annotations(root: str, split: str) -> str:
    qas = os.path.join(root, "qas")
    return core.find_first(qas, (f"{split}/{split}_qa.pkl", f"{split}_qa.pkl",
                                 f"{split}_vqa.pkl", f"{split}/{split}_vqa.pkl"),
                           f"the PathVQA {split} annotations ({split}/{split}_qa.pkl)")


def label_answer(label: Any) -> Any:
    """The answer of an LXMERT-style ``label`` ({answer: score}): the best-scored one."""
    if not isinstance(label, dict) or not label:
        return None
    return max(label, key=lambda answer: label[answer] if isinstance(
        label[answer], (int, float)) else 0)


def path_vqa_row(row: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(question id or None, image, question, answer) of a ``_qa.pkl`` or ``_vqa.pkl`` row."""
    answer = row["answer"] if "answer" in row else label_answer(row.get("label"))
    return (row.get("question_id", row.get("qid")), row.get("image", row.get("img_id")),
            row.get("question", row.get("sent")), answer)


def scan_path_vqa_split(questions: Questions, path: str, images: str, source_split: str
                        ) -> None:
    data = read_plain_pickle(path)
    if not isinstance(data, (list, tuple)):
        raise UserError(f"{path}: expected a pickled list of question dicts, got a "
                        f"{type(data).__name__}")
    split = PATH_VQA_SPLITS[source_split]
    names = list_images(images)
    for index, row in enumerate(data):
        where = f"{path}[{index}]"
        fallback_id = f"{source_split}_q{index:05d}"
        if not isinstance(row, dict):
            questions.scan.reject(split, fallback_id, where, "malformed_row",
                                  f"expected a dict, got {type(row).__name__}")
            continue
        raw_id, image_name, question, answer = path_vqa_row(row)
        qid = optional_text(raw_id) or fallback_id
        try:
            name, fields = question_fields(image_name, question, answer)
        except core.BadText as e:
            questions.scan.reject(split, qid, where, e.reason, str(e))
            continue
        fields["answer_type"] = yes_no_answer_type(fields["answer_normalized"])
        questions.add(split, qid, image_path(images, names, name), fields, where)


class PathVqa(core.ManualImageBuilder):
    """PathVQA: questions and answers generated from pathology textbook and PEIR captions."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "the PathVQA release folder pvqa/ (Google Drive link in "
        "https://github.com/UCSD-AI4H/PathVQA): images/{train,val,test}/*.jpg and "
        "qas/{train,val,test}/{split}_qa.pkl")

    def record_features(self) -> dict[str, Any]:
        return vqa_features()

    def metadata(self) -> dict[str, Any]:
        return vqa_metadata(
            source="PathVQA, He et al. 2020, https://github.com/UCSD-AI4H/PathVQA",
            split_rule="publisher's: images/ and qas/ train / val / test (val -> validation)",
            answer_type_rule="closed when the normalized answer is 'yes' or 'no', else open")

    def scan(self, manual_dir: str) -> core.Scan:
        root = path_vqa_root(manual_dir)
        scan = core.Scan()
        questions = Questions(scan)
        for source_split in PATH_VQA_SPLITS:
            path = path_vqa_annotations(root, source_split)
            images = core.require_path(os.path.join(root, "images", source_split),
                                       f"the PathVQA {source_split} images folder")
            scan_path_vqa_split(questions, path, images, source_split)
        return scan
