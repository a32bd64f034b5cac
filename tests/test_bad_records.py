"""Bad training records: ``config.data.on_bad_record`` fail / skip, deterministic replacement,
the process-count and resume invariants, the bounded retries, and ``bad_records.jsonl``."""

import glob
import json
import os
import shutil
import sys

import numpy as np
import pytest

from medclip_jax import bad_records
from medclip_jax.data import image_ops, pipeline, sources
from medclip_jax.errors import BadRecordError, UserError
from medclip_jax.settings import DataSettings
from test_pipeline import (SIZE, TINY, TINY_TRAIN, assert_batches_equal, data_config, take,
                           train_iter)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "scripts"))
from faults.records import truncate_image  # noqa: E402

BATCH = 16
BAD_POSITION = 2 * BATCH + 5  # row 5 of global batch 2
PLAIN = {"augment.random_crop_scale": (1.0, 1.0), "augment.flip": False}


def copy_with_bad_images(tiny_data_dir: str, target: str, records: list[int]) -> str:
    shutil.copytree(tiny_data_dir, target)
    shard, = glob.glob(os.path.join(target, "synthetic_medical", "tiny", "*",
                                    "synthetic_medical-train.array_record-*"))
    truncate_image(shard, *records)
    return target


def record_at(position: int, seed: int = 0) -> int:
    return int(pipeline.record_stream([TINY_TRAIN], [1.0], seed)[position][1])


@pytest.fixture(scope="module")
def bad_dir(tiny_data_dir, tmp_path_factory) -> str:
    return copy_with_bad_images(tiny_data_dir, str(tmp_path_factory.mktemp("bad") / "tfds"),
                                [record_at(BAD_POSITION)])


def test_the_policy_is_checked():
    assert DataSettings().on_bad_record == "fail"
    with pytest.raises(UserError, match=r"config\.data\.on_bad_record must be one of fail, "
                                        r"skip, got 'drop'"):
        DataSettings.from_config({"on_bad_record": "drop"})


def test_fail_names_the_dataset_split_record_and_the_way_out(bad_dir):
    iterator = train_iter(data_config(bad_dir), batch=BATCH)
    take(iterator, 2)
    record = record_at(BAD_POSITION)
    with pytest.raises(BadRecordError, match=rf"synthetic_medical/tiny/1\.0\.0 split train record "
                                             rf"{record} \(id [\w-]+\): OSError: image file is "
                                             rf"truncated \(config\.data\.on_bad_record='skip'"):
        next(iterator)


def test_skip_replaces_the_record_by_its_position_and_reports_it(bad_dir, tiny_data_dir):
    config = data_config(bad_dir, on_bad_record="skip", **PLAIN)
    batches = take(train_iter(config, batch=BATCH), 4)
    bad = record_at(BAD_POSITION)
    # The documented draw, computed here independently of the loader.
    replacement = int(np.random.default_rng([0, 0xBAD0, BAD_POSITION, 0]).integers(TINY_TRAIN))
    assert replacement != bad
    row = BAD_POSITION % BATCH
    assert batches[2]["index"][row] == replacement
    expected = image_ops.normalize(image_ops.center_crop_resize(image_ops.decode_image(
        sources.open_source(tiny_data_dir, TINY, "train")[replacement]["image"], "x"), SIZE))
    np.testing.assert_allclose(batches[2]["image"][row], expected, atol=1e-6)
    assert [b["bad_records"] for b in batches[:2] + batches[3:]] == [(), (), ()]
    event, = batches[2]["bad_records"]
    assert event["dataset"] == TINY and event["split"] == "train"
    assert (event["record"], event["position"]) == (bad, BAD_POSITION)
    assert event["reason"] == "OSError: image file is truncated"
    assert event["path"].startswith(bad_dir) and event["id"]
    # Every other row is the record the clean dataset has there.
    clean = take(train_iter(data_config(tiny_data_dir, **PLAIN), batch=BATCH), 4)
    for got, want in zip(batches, clean):
        keep = np.arange(BATCH) != row if got is batches[2] else slice(None)
        np.testing.assert_array_equal(got["index"][keep], want["index"][keep])
        np.testing.assert_array_equal(got["image"][keep], want["image"][keep])


@pytest.mark.parametrize("process_count", [2, 4])
def test_skip_processes_concatenate_to_the_global_batch(bad_dir, process_count):
    config = data_config(bad_dir, on_bad_record="skip")
    single = take(train_iter(config, batch=BATCH), 3)
    parts = [take(train_iter(config, batch=BATCH, process_index=p,
                             process_count=process_count), 3) for p in range(process_count)]
    for k, batch in enumerate(single):
        for key, value in batch.items():
            pieces = [part[k][key] for part in parts]
            if key == "bad_records":
                assert tuple(e for piece in pieces for e in piece) == value
            else:
                np.testing.assert_array_equal(np.concatenate(pieces), value, err_msg=key)
    assert len(single[2]["bad_records"]) == 1


def test_skip_resumed_iterator_yields_the_same_batches(bad_dir):
    config = data_config(bad_dir, on_bad_record="skip")
    expected = take(train_iter(config, batch=BATCH), 4)
    iterator = train_iter(config, batch=BATCH)
    take(iterator, 2)
    resumed = train_iter(config, batch=BATCH)
    resumed.set_state(iterator.get_state())
    assert_batches_equal(take(resumed, 2), expected[2:])


def test_skip_with_views_replaces_the_views_too(bad_dir):
    config = data_config(bad_dir, on_bad_record="skip", image_views=1)
    batch = take(train_iter(config, batch=BATCH), 3)[2]
    assert batch["image_views"].shape == (BATCH, 1, SIZE, SIZE, 3)
    assert len(batch["bad_records"]) == 1


def test_a_split_that_is_all_bad_fails_in_one_line(tiny_data_dir, tmp_path):
    data_dir = copy_with_bad_images(tiny_data_dir, str(tmp_path / "tfds"),
                                    list(range(TINY_TRAIN)))
    iterator = train_iter(data_config(data_dir, on_bad_record="skip"), batch=BATCH)
    with pytest.raises(UserError, match=rf"on_bad_record='skip': the record at stream position "
                                        rf"0 and {pipeline.MAX_REPLACEMENT_TRIES} replacements "
                                        rf".* are all bad"):
        next(iterator)


def test_eval_batches_never_skip(bad_dir):
    batches = pipeline.make_eval_iterator(
        bad_dir, TINY, "train", image_size=SIZE, max_len=8, tokenizer=None,
        global_batch_size=BATCH, process_index=0, process_count=1,
        data_config=data_config(bad_dir, on_bad_record="skip"))
    with pytest.raises(BadRecordError, match=rf"split train record {record_at(BAD_POSITION)} ") \
            as caught:
        list(batches)
    assert "on_bad_record" not in str(caught.value)


# --- bad_records.jsonl ----------------------------------------------------------------------

def event(record: int, position: int) -> dict:
    return {"dataset": TINY, "path": "/d", "split": "train", "record": record, "id": None,
            "reason": "OSError: truncated", "position": position}


def log(workdir: str, start_step: int = 0, enabled: bool = True) -> bad_records.BadRecordLog:
    return bad_records.BadRecordLog(workdir, start_step, enabled=enabled, writer=True,
                                    log_every_steps=1, checkpoint_every_steps=2)


def lines(workdir: str) -> list[dict]:
    """The file's complete lines (a cut one is left out)."""
    out = []
    with open(os.path.join(workdir, bad_records.FILENAME), encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                assert line.startswith('{"dataset": "cut sho'), line
    return out


def test_log_writes_each_record_once_with_its_step_and_counts(tmp_path):
    workdir = str(tmp_path)
    first = log(workdir)
    first.record({"bad_records": ()}, 1, False)
    assert first.scalars() == {"bad_records": 0}
    first.record({"bad_records": (event(7, 20), event(9, 21))}, 2, False)
    first.record({"bad_records": (event(7, 120),)}, 8, False)  # the next epoch: again
    assert first.scalars() == {"bad_records": 3}
    assert [(e["record"], e["step"]) for e in lines(workdir)] == [(7, 2), (9, 2), (7, 8)]
    with open(os.path.join(workdir, bad_records.FILENAME), "a", encoding="utf-8") as f:
        f.write('{"dataset": "cut sho')  # a crash mid-line

    # Resumed from a checkpoint at step 4: step 8's record is met again, not written again.
    resumed = log(workdir, start_step=4)
    assert resumed.scalars() == {"bad_records": 2}
    resumed.record({"bad_records": (event(7, 120),)}, 8, False)
    resumed.record({"bad_records": (event(3, 150),)}, 10, True)
    assert resumed.scalars() == {"bad_records": 4}
    assert [(e["record"], e["step"]) for e in lines(workdir)] == [(7, 2), (9, 2), (7, 8),
                                                                   (3, 10)]


def test_log_is_silent_when_not_skipping(tmp_path):
    quiet = log(str(tmp_path), enabled=False)
    quiet.record({}, 1, True)
    assert quiet.scalars() == {} and not os.listdir(tmp_path)
    assert bad_records.note({"train/bad_records": 0.0}) == ""
    assert bad_records.note({"train/bad_records": 2.0}) == " bad_records 2"


def test_skip_replaces_a_tfrecord_record_with_a_bad_crc(tiny_data_dir, tmp_path):
    """A TFRecord build: a record whose data fails its CRC is a bad record too (the shard's
    index is intact), replaced by the same draw as in an ArrayRecord build."""
    from test_tfrecord import convert_data_dir, corrupt
    data_dir = convert_data_dir(tiny_data_dir, str(tmp_path / "tfrecord"))
    bad = record_at(BAD_POSITION)
    corrupt(data_dir, "train", bad, "data")
    with pytest.raises(BadRecordError, match="data CRC mismatch"):
        take(train_iter(data_config(data_dir, **PLAIN), batch=BATCH), 4)
    batches = take(train_iter(data_config(data_dir, on_bad_record="skip", **PLAIN),
                              batch=BATCH), 4)
    replacement = int(np.random.default_rng([0, 0xBAD0, BAD_POSITION, 0]).integers(TINY_TRAIN))
    assert batches[2]["index"][BAD_POSITION % BATCH] == replacement
    event, = batches[2]["bad_records"]
    assert event["record"] == bad and "data CRC mismatch" in event["reason"]
