"""The metric writer: JSONL and TensorBoard scalars, without importing PyTorch."""

import json
import os
import struct
import subprocess
import sys

from helpers import REPO_ROOT, subprocess_env


def test_scalars_reach_jsonl_and_tensorboard_without_importing_torch(tmp_path):
    code = ("import sys\n"
            "from medclip_jax.metric_logging import MetricWriter\n"
            "writer = MetricWriter(sys.argv[1], enabled=True)\n"
            "writer.write(3, {'loss': 0.5, 'lr': 0.25}, prefix='train/')\n"
            "writer.close()\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO_ROOT,
                         env=subprocess_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "tensorboardX pulled in PyTorch"
    (line,) = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert line["step"] == 3 and line["train/loss"] == 0.5 and line["train/lr"] == 0.25
    (events,) = os.listdir(tmp_path / "tensorboard")
    records = read_tfrecords((tmp_path / "tensorboard" / events).read_bytes())
    assert b"brain.Event:2" in records[0]  # the file-version event comes first
    scalars = [r for r in records if b"train/loss" in r or b"train/lr" in r]
    assert len(scalars) == 2
    # Event.step = 3 (field 2, varint) and Summary.Value.simple_value (field 2, fixed32).
    assert all(b"\x10\x03" in r for r in scalars)
    assert struct.pack("<f", 0.5) in scalars[0] + scalars[1]
    assert struct.pack("<f", 0.25) in scalars[0] + scalars[1]


def read_tfrecords(data: bytes) -> list[bytes]:
    """Every record of a TFRecord file, each length and data CRC checked."""
    from medclip_jax.data.tfrecord import masked_crc
    records, position = [], 0
    while position < len(data):
        length, length_crc = struct.unpack_from("<QI", data, position)
        assert masked_crc(data[position:position + 8]) == length_crc
        record = data[position + 12:position + 12 + length]
        (data_crc,) = struct.unpack_from("<I", data, position + 12 + length)
        assert masked_crc(record) == data_crc
        records.append(record)
        position += 12 + length + 4
    return records
