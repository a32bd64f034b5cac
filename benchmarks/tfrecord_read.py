"""Read throughput (MB/s) of a TFRecord build vs the ArrayRecord build of the same records.

    taskset -c 1 .venv/bin/python benchmarks/tfrecord_read.py [--records 1000]
        [--image_size 192] [--repeats 3] [--work_dir DIR]

Builds a synthetic_medical config of `--records` train records (PNG images of `--image_size`),
converts it to TFRecord (`tfrecord.convert_array_record_build`), then times reading every
train record's serialized bytes through each format's random-access source, as
`sources.RecordSource` does: sequential batches of 64 (`__getitems__`) and one record at a time
in a shuffled order (what the train pipeline does). The files are in the page cache after the
first pass, so this measures the readers (TFRecord: pread + CRC32C check), not the disk. Also
times the TFRecord offset index (one header scan per shard, on a source's first read) and
CRC32C alone. Formats alternate and the best of `--repeats` counts, against noise from other
processes; pin to one core on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep import synthetic_medical  # noqa: E402
from medclip_jax.data import sources, tfrecord  # noqa: E402

BATCH = 64


def best_seconds(run: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def sequential(records: Any) -> None:
    for start in range(0, len(records), BATCH):
        records.__getitems__(range(start, min(start + BATCH, len(records))))


def shuffled(records: Any, order: np.ndarray) -> None:
    for i in order:
        records[int(i)]


def prepare(work_dir: str, records: int, image_size: int) -> tuple[str, str, str]:
    """(ArrayRecord data_dir, TFRecord data_dir, dataset name), built once per work_dir."""
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
    config = synthetic_medical.custom_config(records, 1, 1, image_size, 0)
    array_record_dir = os.path.join(work_dir, "array_record")
    version_dir = synthetic_medical.build(array_record_dir, config)
    tfrecord_dir = os.path.join(work_dir, "tfrecord")
    target = os.path.join(tfrecord_dir, os.path.relpath(version_dir, array_record_dir))
    if not os.path.exists(os.path.join(target, "dataset_info.json")):
        tfrecord.convert_array_record_build(version_dir, target)
    return array_record_dir, tfrecord_dir, f"synthetic_medical@{config.name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--image_size", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work_dir", help="keep the builds here (default: a temporary folder)")
    args = parser.parse_args(argv)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="tfrecord_read_")
    try:
        array_record_dir, tfrecord_dir, name = prepare(work_dir, args.records, args.image_size)
        dirs = {"array_record": array_record_dir, "tfrecord": tfrecord_dir}
        opened = {fmt: sources.open_source(d, name, "train", ()).records for fmt, d in dirs.items()}
        total = sum(len(r) for r in opened["array_record"].__getitems__(range(args.records)))
        index_seconds = best_seconds(
            lambda: sources.open_source(tfrecord_dir, name, "train", ()).records[0], args.repeats)
        order = np.random.default_rng(0).permutation(args.records)
        results: dict[tuple[str, str], float] = {}
        for _ in range(args.repeats):  # alternate the formats
            for fmt, records in opened.items():
                for mode, run in (("sequential", lambda: sequential(records)),
                                  ("shuffled", lambda: shuffled(records, order))):
                    seconds = best_seconds(run, 1)
                    results[fmt, mode] = min(results.get((fmt, mode), seconds), seconds)
        payload = np.random.default_rng(0).bytes(64 << 20)
        crc_seconds = best_seconds(lambda: tfrecord.crc32c(payload), args.repeats)
        mb = total / 1e6
        print(f"{args.records} records, {mb:.1f} MB ({total / args.records / 1e3:.1f} KB each, "
              f"PNG {args.image_size}x{args.image_size}); google-crc32c implementation: "
              f"{tfrecord.google_crc32c.implementation}")
        print(f"{'format':<14}{'sequential MB/s':>17}{'shuffled MB/s':>15}{'records/s':>12}")
        for fmt in opened:
            seq, shuf = results[fmt, "sequential"], results[fmt, "shuffled"]
            print(f"{fmt:<14}{mb / seq:>17.0f}{mb / shuf:>15.0f}{args.records / shuf:>12.0f}")
        print(f"TFRecord offset index (open + header scan + first read): "
              f"{index_seconds * 1e3:.1f} ms for {args.records} records")
        print(f"CRC32C alone: {len(payload) / 1e6 / crc_seconds:.0f} MB/s")
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
