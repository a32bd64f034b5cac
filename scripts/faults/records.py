"""Bad records at training time: a truncated PNG inside a training shard, under
``config.data.on_bad_record`` = ``fail`` (one line, exit 2) and ``skip`` (replaced, counted,
reported; the same batches after a resume)."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from faults import Case
from faults.common import (REPO_ROOT, NotHeld, Scratch, checkpoint_steps, env,
                           expect_one_line_error, expect_success, run, send, wait_for_line)

TINY_TRAIN = 96           # records of the tiny train split
BATCH = 16                # the tiny preset's global batch
BAD_STEP = 5              # the bad record is in this step's batch (after the save at step 4)
BAD_POSITION = (BAD_STEP - 1) * BATCH + 3
QUICK = ("--config.eval.every_steps=0",)


def import_repo() -> None:
    """The runner puts only scripts/ on the path; the shard helpers read the library."""
    for path in (REPO_ROOT, os.path.join(REPO_ROOT, "tests")):
        if path not in sys.path:
            sys.path.insert(0, path)


def record_at(position: int, seed: int = 0) -> int:
    """The tiny train split's record at a stream position (the pipeline's own stream)."""
    import_repo()
    from medclip_jax.data import pipeline
    return int(pipeline.record_stream([TINY_TRAIN], [1.0], seed)[position][1])


def truncate_image(shard: str, *indices: int) -> None:
    """Rewrites records of an ArrayRecord shard with their image bytes cut in half (a PNG
    truncated in transfer), keeping the shard's writer options and every other record."""
    import_repo()
    from array_record.python import array_record_module
    from tensorflow_datasets.proto import tf_example_pb2
    reader = array_record_module.ArrayRecordReader(shard)
    options, records = reader.writer_options_string(), reader.read_all()
    reader.close()
    for index in indices:
        example = tf_example_pb2.Example.FromString(records[index])
        image = example.features.feature["image"].bytes_list.value
        image[0] = image[0][:len(image[0]) // 2]
        records[index] = example.SerializeToString()
    writer = array_record_module.ArrayRecordWriter(shard, options)
    for record in records:
        writer.write(record)
    writer.close()


def bad_data_dir(scratch: Scratch, position: int = BAD_POSITION, split: str = "train"
                 ) -> tuple[str, int]:
    """A copy of the tiny dataset whose train record at `position` (seed 0) is truncated, or
    record `position` of another split; (data_dir, record index)."""
    data_dir = scratch.path("tfds")
    if not os.path.isdir(data_dir):
        shutil.copytree(scratch.data_dir, data_dir)
    record = record_at(position) if split == "train" else position
    shard, = glob.glob(os.path.join(data_dir, "synthetic_medical", "tiny", "*",
                                    f"synthetic_medical-{split}.array_record-*"))
    truncate_image(shard, record)
    return data_dir, record


def train_args(scratch: Scratch, data_dir: str, workdir: str, *overrides: str) -> list[str]:
    return scratch.train_args(workdir, *overrides, data_dir=data_dir)


def read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def bad_record_fails_in_one_line(scratch: Scratch) -> None:
    data_dir, record = bad_data_dir(scratch)
    result = run(train_args(scratch, data_dir, scratch.path("run"), "--config.max_steps=6",
                            *QUICK))
    expect_one_line_error(result, "synthetic_medical/tiny/1.0.0 split train",
                          f"record {record} ", "image file is truncated",
                          "config.data.on_bad_record='skip'")


def bad_eval_record_fails_in_one_line(scratch: Scratch) -> None:
    """In-training validation never skips: one line, even with on_bad_record=skip."""
    data_dir, record = bad_data_dir(scratch, 3, split="validation")
    result = run(train_args(scratch, data_dir, scratch.path("run"), "--config.max_steps=6",
                            "--config.eval.every_steps=4", "--config.data.on_bad_record=skip"))
    line = expect_one_line_error(result, "synthetic_medical/tiny/1.0.0 split validation",
                                 f"record {record} ", "image file is truncated")
    if "on_bad_record" in line:
        raise NotHeld(f"an eval record is never skipped, yet the line suggests it: {line!r}")


def expect_reported(workdir: str, record: int, visits: list[tuple[int, int]],
                    total_steps: int) -> None:
    """bad_records.jsonl holds the record once per (position, step) visit; the metric counts
    the visits up to each step."""
    lines = read_jsonl(os.path.join(workdir, "bad_records.jsonl"))
    got = [(e.get("dataset"), e.get("split"), e.get("record"), e.get("position"), e.get("step"))
           for e in lines]
    wanted = [("synthetic_medical@tiny", "train", record, p, s) for p, s in visits]
    if got != wanted or not all("truncated" in e.get("reason", "") for e in lines):
        raise NotHeld(f"bad_records.jsonl should hold {wanted}, holds {lines}")
    counts = {m["step"]: m["train/bad_records"]
              for m in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
              if "train/bad_records" in m}
    expected = {step: sum(s <= step for _, s in visits) for step in range(1, total_steps + 1)}
    if counts != expected:
        raise NotHeld(f"train/bad_records by step should be {expected}, is {counts}")


def bad_record_skipped_and_reported(scratch: Scratch) -> None:
    data_dir, record = bad_data_dir(scratch)
    workdir = scratch.path("run")
    result = run(train_args(scratch, data_dir, workdir, "--config.max_steps=6",
                            "--config.data.on_bad_record=skip", *QUICK))
    expect_success(result, "step 6/6", f"step {BAD_STEP}/6 ", "bad_records 1")
    expect_reported(workdir, record, [(BAD_POSITION, BAD_STEP)], 6)


def bad_record_skipped_on_two_processes(scratch: Scratch) -> None:
    """The same skip in a 2-process job (each process reads half of every batch): both
    finish, and process 0's bad_records.jsonl and metric hold the one visit, as on one."""
    from faults.processes import run_pair
    data_dir, record = bad_data_dir(scratch)
    workdir = scratch.path("run")
    for result in run_pair(scratch, workdir, "--config.max_steps=6",
                           "--config.data.on_bad_record=skip", *QUICK, data_dir=data_dir):
        expect_success(result)
    expect_reported(workdir, record, [(BAD_POSITION, BAD_STEP)], 6)


def visits(record: int, steps: int) -> list[tuple[int, int]]:
    """(position, step) of every visit of a record in the first `steps` steps (seed 0)."""
    import_repo()
    from medclip_jax.data import pipeline
    stream = pipeline.record_stream([TINY_TRAIN], [1.0], 0)
    return [(p, p // BATCH + 1) for p in range(steps * BATCH) if stream[p][1] == record]


def kill_between_saves(process: subprocess.Popen, workdir: str, after_step: int,
                       saved: int, timeout: float = 60) -> None:
    """SIGKILL once step `after_step` has run and checkpoint `saved` is on disk."""
    wait_for_line(process, f"step {after_step}/")
    deadline = time.monotonic() + timeout
    while saved not in checkpoint_steps(workdir) and time.monotonic() < deadline:
        time.sleep(0.02)
    send(process, signal.SIGKILL)


def resume_after_skip_is_exact(scratch: Scratch) -> None:
    """SIGKILL after a bad record's step was logged but before the next checkpoint: the
    resumed run meets the record again, replaces it the same way (params bit-identical to an
    uninterrupted run), and neither writes its line twice nor counts it twice."""
    import_repo()
    import numpy as np
    from helpers import final_params
    bad_step, total, every = 8, 18, 6    # saves at 6, 12, 18; the second epoch's visit at 8
    data_dir, record = bad_data_dir(scratch, (bad_step - 1) * BATCH + 3)
    args = (f"--config.max_steps={total}", f"--config.num_epochs={total * BATCH / TINY_TRAIN}",
            "--config.data.on_bad_record=skip", f"--config.checkpoint.every_steps={every}",
            *QUICK)
    reference = scratch.path("reference")
    expect_success(run(train_args(scratch, data_dir, reference, *args)), f"step {total}/")
    expected = visits(record, total)

    workdir = scratch.path("killed")
    process = subprocess.Popen(train_args(scratch, data_dir, workdir, *args), cwd=REPO_ROOT,
                               env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        kill_between_saves(process, workdir, bad_step, every)
    finally:
        process.wait(timeout=60)
    logged = [e["step"] for e in read_jsonl(os.path.join(workdir, "bad_records.jsonl"))]
    if checkpoint_steps(workdir) != [every] or bad_step not in logged:
        raise NotHeld(f"the kill did not land between the bad step and the next save "
                      f"(checkpoints {checkpoint_steps(workdir)}, logged steps {logged}); "
                      f"rerun the case")
    expect_success(run(train_args(scratch, data_dir, workdir, *args)),
                   f"Resumed from checkpoint at step {every}", f"step {total}/{total} ")
    expect_reported(workdir, record, expected, total)
    got, want = final_params(workdir), final_params(reference)
    different = [k for k in want if not np.array_equal(got[k], want[k])]
    if different:
        raise NotHeld(f"after the resume, params differ from the uninterrupted run: "
                      f"{different[:3]}")


CASES = [
    Case("bad_record_fails_in_one_line", False, bad_record_fails_in_one_line,
         "a training record whose image cannot be decoded stops the run with one line naming "
         "the dataset, split and record (exit 2), by default (config.data.on_bad_record=fail)"),
    Case("bad_record_skipped_and_reported", False, bad_record_skipped_and_reported,
         "with config.data.on_bad_record=skip the record is replaced, training completes, and "
         "bad_records.jsonl and the train/bad_records metric report it"),
    Case("bad_record_skipped_on_two_processes", False, bad_record_skipped_on_two_processes,
         "a 2-process job skips the record the same way and reports it once, from process 0"),
    Case("bad_eval_record_fails_in_one_line", False, bad_eval_record_fails_in_one_line,
         "a bad record in the validation split stops training with one line naming it (exit "
         "2), whatever config.data.on_bad_record says: eval sets are never skipped"),
    Case("resume_after_skip_is_exact", False, resume_after_skip_is_exact,
         "a run that skipped bad records resumes to bit-identical params, without duplicate "
         "lines in bad_records.jsonl"),
]
