"""VQA questions of a split, their answer vocabulary and soft targets.

One example per question: the real datasets store one record per question
(`questions_from_records`), the synthetic dataset one record per image with a `vqa` sequence of
question/answer pairs (`expand_image_records`); `load_questions` reads either layout from a
build. Answers are compared in the form `text_ops.normalize_caption` gives (NFKC, lower-cased,
whitespace collapsed, trailing punctuation removed) -- the function the dataset builders use.
Questions of one image share one row of the image feature table (`image_row`), so an image is
embedded once.

* **Answer vocabulary** (`build_vocabulary`): the normalised answers of the train split, most
  frequent first (ties alphabetical), optionally cut to the top `max_answers`. Train
  questions whose answer falls outside it have an all-zero target: they are dropped from
  training and counted (`num_train_dropped`). A test answer outside it can never be predicted:
  it counts as wrong, and their number is reported (`num_unseen_answers`).
* **Soft targets** (`soft_targets`): VQA's min(1, count / 3) over the annotators' answers when a
  question has several, 1.0 on the answer when it has one. VQA-RAD, PathVQA and the synthetic
  dataset have one answer per question, so their targets are one-hot.
"""

import collections
import dataclasses
from typing import Sequence

import numpy as np

from medclip_jax.data import sources
from medclip_jax.data.text_ops import normalize_caption as normalize_answer
from medclip_jax.errors import UserError

CLOSED_TYPES = ("closed", "yes/no", "yes_no", "yesno")
OPEN_TYPES = ("open", "other")
#: The per-question record fields of VQA-RAD / PathVQA builds (plus `answer[_normalized]`).
RECORD_FIELDS = ("question", "answer_type", "image_id")

@dataclasses.dataclass
class Questions:
    """The questions of one split. `image_row[q]` is q's row in the split's image table, whose
    rows are the records `image_records` (sorted record indices) of the split."""

    question: list[str]
    answers: list[tuple[str, ...]]  # normalised; one per annotator (these datasets: one)
    closed: np.ndarray              # [Q] bool
    image_row: np.ndarray           # [Q] int64
    image_records: np.ndarray       # [I] int64, increasing

    def __len__(self) -> int:
        return len(self.question)

    @property
    def answer(self) -> list[str]:
        """The answer accuracy compares with: the most frequent one (ties alphabetical)."""
        return [primary_answer(a) for a in self.answers]


def primary_answer(answers: Sequence[str]) -> str:
    counts = collections.Counter(answers)
    return min(counts, key=lambda a: (-counts[a], a))


def is_closed(answer_type: str, where: str) -> bool:
    """closed (yes/no, limited choice) vs open; anything else is a data error."""
    kind = str(answer_type).strip().lower()
    if kind in CLOSED_TYPES:
        return True
    if kind in OPEN_TYPES:
        return False
    raise UserError(f"{where}: unknown answer_type {answer_type!r}; expected closed or open")


def expand_image_records(vqa: Sequence[dict[str, Sequence[str]]], where: str) -> Questions:
    """Per-image records with a `vqa` sequence {question, answer, answer_type} -> one example
    per question (the synthetic dataset); each image is its own table row."""
    questions, answers, closed, rows = [], [], [], []
    for record, pairs in enumerate(vqa):
        lengths = {len(pairs[k]) for k in ("question", "answer", "answer_type")}
        if len(lengths) != 1:
            raise UserError(f"{where} record {record}: vqa question/answer/answer_type lists "
                            f"differ in length")
        for question, answer, kind in zip(pairs["question"], pairs["answer"],
                                          pairs["answer_type"]):
            questions.append(str(question))
            answers.append((normalize_answer(str(answer)),))
            closed.append(is_closed(kind, f"{where} record {record}"))
            rows.append(record)
    return Questions(questions, answers, np.asarray(closed, bool),
                     np.asarray(rows, np.int64), np.arange(len(vqa), dtype=np.int64))


def questions_from_records(question: Sequence[str], answer: Sequence[str],
                           answer_type: Sequence[str], image_id: Sequence[str],
                           where: str) -> Questions:
    """One record per question (VQA-RAD, PathVQA); records sharing an `image_id` share the
    image row of the first of them."""
    first: dict[str, int] = {}
    image_records: list[int] = []
    rows = np.empty(len(question), np.int64)
    for record, image in enumerate(image_id):
        if str(image) not in first:
            first[str(image)] = len(image_records)
            image_records.append(record)
        rows[record] = first[str(image)]
    closed = np.asarray([is_closed(t, f"{where} record {i}") for i, t in enumerate(answer_type)],
                        bool)
    return Questions([str(q) for q in question], [(normalize_answer(str(a)),) for a in answer],
                     closed, rows, np.asarray(image_records, np.int64))


def load_questions(data_dir: str, name: str, split: str,
                   field: str = "config.vqa.datasets") -> Questions:
    """A split's questions, from per-question records or per-image `vqa` sequences (`field`
    names the config field that chose the dataset, in errors)."""
    features = set(sources.read_builder(sources.dataset_dir(data_dir, name)).info.features)
    where = f"{name}/{split}"
    if "vqa" in features:
        annotations = sources.load_annotations(data_dir, name, split, fields=["vqa"])
        return expand_image_records(annotations["vqa"], where)
    answer = "answer_normalized" if "answer_normalized" in features else "answer"
    if set(RECORD_FIELDS) <= features and answer in features:
        a = sources.load_annotations(data_dir, name, split, fields=[*RECORD_FIELDS, answer])
        return questions_from_records(a["question"].tolist(), a[answer].tolist(),
                                      a["answer_type"].tolist(), a["image_id"].tolist(), where)
    raise UserError(f"{field}: {name} has no VQA fields (a `vqa` sequence, or "
                    f"question / answer / answer_type / image_id per record)")


def build_vocabulary(answers: Sequence[Sequence[str]], max_answers: int = 0) -> list[str]:
    """The train answers, most frequent first (ties alphabetical); the top `max_answers` when
    it is positive."""
    counts = collections.Counter(a for annotator_answers in answers for a in annotator_answers)
    vocab = sorted(counts, key=lambda a: (-counts[a], a))
    return vocab[:max_answers] if max_answers > 0 else vocab


def answer_index(answers: Sequence[str], vocab: Sequence[str]) -> np.ndarray:
    """[Q] index of each answer in the vocabulary, -1 when it is not in it."""
    lookup = {a: i for i, a in enumerate(vocab)}
    return np.asarray([lookup.get(a, -1) for a in answers], np.int64)


def soft_targets(answers: Sequence[Sequence[str]], vocab: Sequence[str]) -> np.ndarray:
    """[Q, A] float32 targets: 1.0 on a single answer; VQA's min(1, count / 3) per answer when
    a question has several annotators' answers. Answers outside the vocabulary get nothing."""
    lookup = {a: i for i, a in enumerate(vocab)}
    targets = np.zeros((len(answers), len(vocab)), np.float32)
    for q, annotator_answers in enumerate(answers):
        counts = collections.Counter(annotator_answers)
        for answer, count in counts.items():
            if answer in lookup:
                score = 1.0 if len(annotator_answers) == 1 else min(1.0, count / 3.0)
                targets[q, lookup[answer]] = score
    return targets
