"""TFRecord datasets without TensorFlow: framing against TensorFlow's own file, the same records
and batches as the ArrayRecord build, split expressions across shards, corruption errors.

``tests/data/golden.tfrecord`` (1194 bytes) was written by TensorFlow 2.21.0 (tensorflow-cpu, in
a throwaway venv outside the repo) with ``tf.io.TFRecordWriter`` from `GOLDEN_RECORDS`, the last
one being ``tf.train.Example(features={"id": bytes_list [b"golden-0"], "label": int64_list [3],
"score": float_list [0.5]}).SerializeToString()``.
"""

import json
import os
import pickle
import re
import shutil
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from helpers import REPO_ROOT, run, subprocess_env
from medclip_jax.data import pipeline, sources, tfrecord
from medclip_jax.errors import BadRecordError, UserError
from test_pipeline import (MAX_LEN, SIZE, TINY, TOKENIZER, assert_batches_equal, data_config,
                           take, train_iter)
from test_zero_shot_multilabel import tiny_checkpoint

GOLDEN = os.path.join(REPO_ROOT, "tests", "data", "golden.tfrecord")
GOLDEN_RECORDS = [b"", b"a", bytes(32), bytes(range(256)) * 4]  # + the tf.train.Example
VERSION = os.path.join("synthetic_medical", "tiny", "1.0.0")
SPLIT_EXPRESSIONS = ("train", "validation", "test", "train[:50%]", "train[10:20]", "test[-5:]",
                     "train+test")


def convert_data_dir(array_record_root: str, target_root: str) -> str:
    """A data_dir holding the tiny synthetic build converted to TFRecord."""
    tfrecord.convert_array_record_build(os.path.join(array_record_root, VERSION),
                                        os.path.join(target_root, VERSION))
    return target_root


@pytest.fixture(scope="module")
def tfrecord_data_dir(tiny_data_dir, tmp_path_factory) -> str:
    return convert_data_dir(tiny_data_dir, str(tmp_path_factory.mktemp("tfds_tfrecord")))


def copy_data_dir(data_dir: str, target: str) -> str:
    shutil.copytree(data_dir, target)
    return target


def shard_file(data_dir: str, split: str) -> str:
    (path,) = tfds.builder_from_directory(os.path.join(data_dir, VERSION)).info.splits[
        split].filepaths
    return os.fspath(path)


def record_offsets(path: str, expected: int) -> tuple[np.ndarray, np.ndarray]:
    """(data offsets, data lengths) of a shard's records, as the reader indexes them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return tfrecord.index_shard(fd, tfrecord.Shard(path, 0, expected, expected, 0), "x")
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, crc", [
    (bytes(32), 0x8A9136AA),                      # RFC 3720 B.4: 32 bytes of zeros
    (b"\xff" * 32, 0x62A8AB43),                   # 32 bytes of ones
    (bytes(range(32)), 0x46DD794E),               # incrementing
    (bytes(range(31, -1, -1)), 0x113FDB5C),       # decrementing
    (b"123456789", 0xE3069283),                   # the CRC-32C check value
])
def test_crc32c_published_vectors(data, crc):
    assert tfrecord.crc32c(data) == crc


def test_reads_and_rewrites_tensorflows_file_byte_for_byte(tmp_path):
    size = os.path.getsize(GOLDEN)
    source = tfrecord.TFRecordSource([tfrecord.Shard(GOLDEN, 0, 5, 5, 0)], "golden")
    records = source.__getitems__(range(5))
    assert records[:4] == GOLDEN_RECORDS
    feature = tf_example_pb2.Example.FromString(records[4]).features.feature
    assert feature["id"].bytes_list.value == [b"golden-0"]
    assert feature["label"].int64_list.value == [3]
    assert feature["score"].float_list.value == [0.5]
    assert size == sum(len(r) + 16 for r in records)
    assert tfrecord.write_records(str(tmp_path / "again"), records) == 5
    with open(GOLDEN, "rb") as f, open(tmp_path / "again", "rb") as g:
        assert g.read() == f.read()


def test_shards_skip_and_take_in_order(tmp_path):
    """Records of shards [skip, skip + take) concatenated; negative and batched indices."""
    shards, first = [], 0
    for k, (count, skip, kept) in enumerate([(3, 1, 2), (4, 0, 4), (5, 2, 1)]):
        path = str(tmp_path / f"s{k}")
        tfrecord.write_records(path, [f"{k}-{j}".encode() for j in range(count)])
        shards.append(tfrecord.Shard(path, skip, kept, count, first))
        first += kept
    source = tfrecord.TFRecordSource(shards, "s")
    expected = [b"0-1", b"0-2", b"1-0", b"1-1", b"1-2", b"1-3", b"2-2"]
    assert len(source) == 7 and [source[i] for i in range(7)] == expected
    assert source[-1] == b"2-2" and source.__getitems__([6, 0, 3]) == [b"2-2", b"0-1", b"1-1"]
    with pytest.raises(IndexError):
        source[7]
    again = pickle.loads(pickle.dumps(source))
    assert [again[i] for i in range(7)] == expected


# --------------------------------------------------------------------------------------------
# The same dataset in both formats
# --------------------------------------------------------------------------------------------


def test_converted_build_differs_only_in_format(tiny_data_dir, tfrecord_data_dir):
    def info(root):
        with open(os.path.join(root, VERSION, "dataset_info.json")) as f:
            return json.load(f)
    theirs, ours = info(tiny_data_dir), info(tfrecord_data_dir)
    assert ours.pop("fileFormat") == "tfrecord" and theirs.pop("fileFormat") == "array_record"
    assert ours == theirs
    assert sorted(os.listdir(os.path.join(tfrecord_data_dir, VERSION))) == sorted(
        f.replace(".array_record-", ".tfrecord-")
        for f in os.listdir(os.path.join(tiny_data_dir, VERSION)))


@pytest.mark.parametrize("split", SPLIT_EXPRESSIONS)
def test_record_source_gives_identical_records(tiny_data_dir, tfrecord_data_dir, split):
    array_record = sources.open_source(tiny_data_dir, TINY, split)
    ours = sources.open_source(tfrecord_data_dir, TINY, split)
    assert isinstance(ours.records, tfrecord.TFRecordSource)
    assert not isinstance(array_record.records, tfrecord.TFRecordSource)
    assert len(ours) == len(array_record)
    everything = range(len(ours))
    assert ours.records.__getitems__(everything) == array_record.records.__getitems__(everything)
    assert ours.get_many(everything) == array_record.get_many(everything)
    if len(ours):
        assert ours[len(ours) - 1] == array_record[len(ours) - 1]


def reshard(data_dir: str, split: str, lengths: list[int]) -> None:
    """Rewrites a split of a TFRecord build as len(lengths) shards, names as TFDS derives them."""
    version_dir = os.path.join(data_dir, VERSION)
    old = shard_file(data_dir, split)
    records = tfrecord.TFRecordSource.for_split(
        tfds.builder_from_directory(version_dir).info, split).__getitems__(range(sum(lengths)))
    info_file = os.path.join(version_dir, "dataset_info.json")
    with open(info_file) as f:
        info = json.load(f)
    (entry,) = [s for s in info["splits"] if s["name"] == split]
    entry["shardLengths"] = [str(n) for n in lengths]
    with open(info_file, "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    os.remove(old)
    paths = tfds.builder_from_directory(version_dir).info.splits[split].filepaths
    starts = np.cumsum([0] + lengths)
    for path, start, end in zip(paths, starts[:-1], starts[1:], strict=True):
        tfrecord.write_records(os.fspath(path), records[start:end])


@pytest.mark.parametrize("split", ["test", "test[10:40]", "test[-20:]", "test[:25%]+train[:3]"])
def test_split_expressions_across_shards(tiny_data_dir, tfrecord_data_dir, tmp_path, split):
    data_dir = copy_data_dir(tfrecord_data_dir, str(tmp_path / "sharded"))
    reshard(data_dir, "test", [16, 5, 27])
    ours = sources.open_source(data_dir, TINY, split, fields=("id", "caption"))
    assert len({s.path for s in ours.records.shards}) >= (2 if split != "test[-20:]" else 1)
    array_record = sources.open_source(tiny_data_dir, TINY, split, fields=("id", "caption"))
    everything = range(len(array_record))
    assert ours.get_many(everything) == array_record.get_many(everything)


def test_unknown_split_is_a_user_error(tfrecord_data_dir):
    with pytest.raises(UserError, match="bad split 'nope'"):
        sources.open_source(tfrecord_data_dir, TINY, "nope")


def test_eval_and_train_batches_are_identical(tiny_data_dir, tfrecord_data_dir):
    def eval_batches(data_dir):
        return list(pipeline.make_eval_iterator(
            data_dir, TINY, "validation", image_size=SIZE, max_len=MAX_LEN, tokenizer=TOKENIZER,
            global_batch_size=8, process_index=0, process_count=1, text_field="caption"))
    assert_batches_equal(eval_batches(tfrecord_data_dir), eval_batches(tiny_data_dir))
    assert_batches_equal(take(train_iter(data_config(tfrecord_data_dir)), 8),
                         take(train_iter(data_config(tiny_data_dir)), 8))


def test_annotations_are_identical(tiny_data_dir, tfrecord_data_dir):
    for split in ("train", "test[:50%]"):
        ours = sources.load_annotations(tfrecord_data_dir, TINY, split)
        theirs = sources.load_annotations(tiny_data_dir, TINY, split)
        assert ours.keys() == theirs.keys() and len(ours["id"]) == len(theirs["id"])
        for key in theirs:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_record_source_pickles_and_reopens(tfrecord_data_dir):
    source = sources.open_source(tfrecord_data_dir, TINY, "train[5:9]", fields=("id",))
    again = pickle.loads(pickle.dumps(source))
    assert isinstance(again.records, tfrecord.TFRecordSource)
    assert again.get_many(range(4)) == source.get_many(range(4))


@pytest.mark.slow
def test_worker_processes_give_identical_batches(tiny_data_dir, tfrecord_data_dir):
    from absl import flags
    marked = not flags.FLAGS.is_parsed()
    if marked:
        flags.FLAGS.mark_as_parsed()  # grain's mp_prefetch reads absl flags
    try:
        expected = take(train_iter(data_config(tiny_data_dir)), 3)
        iterator = train_iter(data_config(tfrecord_data_dir, worker_processes=2))
        assert_batches_equal(take(iterator, 3), expected)
        iterator.close()
    finally:
        if marked:
            flags.FLAGS.unparse_flags()


# --------------------------------------------------------------------------------------------
# Corruption: one line naming the shard, the record in the shard and in the split
# --------------------------------------------------------------------------------------------


def corrupt(data_dir: str, split: str, record: int, where: str) -> str:
    """Damages record `record` of the split's only shard; returns the shard's path.

    `where`: "data" flips a payload byte, "length" a length byte, "cut" truncates the file
    inside the record, "boundary" truncates it just before the record."""
    path = shard_file(data_dir, split)
    offsets, lengths = record_offsets(path, len(sources.open_source(data_dir, TINY, split, ())))
    start = int(offsets[record])
    with open(path, "r+b") as f:
        if where in ("data", "length"):
            position = start + int(lengths[record]) // 2 if where == "data" else start - 12
            f.seek(position)
            byte = f.read(1)
            f.seek(position)
            f.write(bytes([byte[0] ^ 0x01]))
        else:
            f.truncate(start + 10 if where == "cut" else start - 12)
    return path


@pytest.mark.parametrize("where, problem", [
    ("data", "corrupt data \\(data CRC mismatch\\)"),
    ("length", "corrupt length at byte \\d+ \\(length CRC mismatch\\)"),
    ("cut", "truncated: its \\d+ bytes end at byte \\d+, the file has \\d+"),
    ("boundary", r"missing: the file holds 7 records, dataset_info.json says 32 \(truncated\?\)"),
])
def test_corruption_names_shard_and_record(tfrecord_data_dir, tmp_path, where, problem):
    data_dir = copy_data_dir(tfrecord_data_dir, str(tmp_path / "bad"))
    path = corrupt(data_dir, "validation", 7, where)
    source = sources.open_source(data_dir, TINY, "validation[2:]")
    with pytest.raises(UserError) as error:
        source[5]
    message = str(error.value)
    assert len(message.splitlines()) == 1
    prefix = (f"TFRecord shard {path}: record 7 of the shard = record 5 of split "
              f"'validation[2:]': ")
    assert message.startswith(prefix) and re.fullmatch(problem, message[len(prefix):]), message
    # A record whose data is corrupt is a bad record (training may skip it); a damaged shard
    # structure is not.
    assert isinstance(error.value, BadRecordError) == (where == "data")
    if where == "data":  # the index is intact: only that record fails
        assert source[4]["id"] and source[6]["id"]


def test_damage_outside_the_selected_records_still_fails_the_scan(tfrecord_data_dir, tmp_path):
    data_dir = copy_data_dir(tfrecord_data_dir, str(tmp_path / "bad"))
    path = corrupt(data_dir, "validation", 30, "cut")
    with pytest.raises(UserError, match=f"^TFRecord shard {path}: record 30 of the shard "
                                        f"\\(not read by split 'validation\\[:4\\]'\\): truncated"):
        sources.open_source(data_dir, TINY, "validation[:4]")[0]


def test_missing_shard_is_a_user_error(tfrecord_data_dir, tmp_path):
    data_dir = copy_data_dir(tfrecord_data_dir, str(tmp_path / "bad"))
    path = shard_file(data_dir, "test")
    os.remove(path)
    with pytest.raises(UserError, match=f"^TFRecord shard {path} of split 'test' cannot be "
                                        f"opened: No such file"):
        sources.open_source(data_dir, TINY, "test")[0]


@pytest.mark.slow
def test_eval_binary_exits_2_with_one_line(tfrecord_data_dir, tiny_data_dir, tmp_path,
                                           tmp_path_factory):
    workdir = tiny_checkpoint(tmp_path_factory, tiny_data_dir)
    data_dir = copy_data_dir(tfrecord_data_dir, str(tmp_path / "bad"))
    path = corrupt(data_dir, "test", 3, "data")
    result = run([sys.executable, "-m", "evals.retrieval", "--workdir", workdir,
                  "--config", "configs/eval.py:tiny", f"--config.data_dir={data_dir}",
                  f"--config.output_dir={tmp_path / 'eval'}"], subprocess_env())
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: TFRecord shard {path}: record 3 of the shard = record 3 of split 'test': "
        f"corrupt data (data CRC mismatch)")
    assert "Traceback" not in result.stderr
