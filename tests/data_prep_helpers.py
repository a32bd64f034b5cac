"""Shared by the data_prep builder tests: images of every awkward kind written into fixtures in
the publishers' layouts, one call to build, and the checks every builder must pass (counts add
up, rejects are listed with path and reason, records round-trip through the grain eval
pipeline, splits are disjoint)."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from data_prep import build as build_lib
from data_prep import core
# The fixture images live with the miniature releases (data_prep.fixtures); re-exported here
# for the builder tests.
from data_prep.fixtures import (BAD_KINDS, GOOD_KINDS, image_bytes, pixels,  # noqa: F401
                                write_image)
from medclip_jax.data import pipeline, sources, tokenizers


def run_build(spec: str, manual_dir: str, data_dir: str, max_image_side: int = 64,
              workers: int = 1) -> list[core.BuildReport]:
    return build_lib.build(spec, str(manual_dir), str(data_dir), max_image_side=max_image_side,
                           workers=workers)


def check_report(report: core.BuildReport) -> list[dict[str, str]]:
    """written + rejected = found per split, and the rejects file lists every reject with a
    path and a reason; returns the rejects file's rows."""
    report.check()
    rows = core.read_rejects(report.data_dir)
    assert len(rows) == len(report.rejects) == sum(report.found.values()) - sum(
        report.written.values())
    assert all(r["path"] and r["reason"] and r["split"] for r in rows), rows
    info = sources.read_builder(report.data_dir).info
    for split, written in report.written.items():
        if written:
            assert info.splits[split].num_examples == written
    return rows


def reasons_by_id(rows: Iterable[dict[str, str]]) -> dict[str, str]:
    return {r["id"]: r["reason"] for r in rows}


def eval_records(data_dir: str, name: str, split: str, caption_field: str = "caption",
                 image_size: int = 16, batch: int = 4) -> dict[str, Any]:
    """Every record of a split through the grain eval pipeline: the record indices seen (each
    once) and the decoded images' shape."""
    import ml_collections
    config = ml_collections.ConfigDict({"read_threads": 0})
    iterator = pipeline.make_eval_iterator(
        str(data_dir), name, split, image_size=image_size, max_len=16,
        tokenizer=tokenizers.ByteTokenizer(), global_batch_size=batch, process_index=0,
        process_count=1, data_config=config, text_field=caption_field)
    indices, shapes = [], set()
    for b in iterator:
        indices.extend(b["index"][b["valid"]].tolist())
        shapes.add(b["image"].shape[1:])
        assert np.isfinite(b["image"]).all()
    return {"indices": indices, "shapes": shapes}


def check_round_trip(data_dir: str, name: str, split: str, caption_field: str = "caption"
                     ) -> None:
    n = sources.num_records(str(data_dir), name, split)
    seen = eval_records(data_dir, name, split, caption_field)
    assert sorted(seen["indices"]) == list(range(n))
    assert seen["shapes"] == {(16, 16, 3)}


def column(data_dir: str, name: str, split: str, field: str) -> list[Any]:
    return list(sources.load_annotations(str(data_dir), name, split, [field])[field])


def assert_disjoint(data_dir: str, name: str, field: str,
                    splits: Iterable[str] = ("train", "validation", "test")) -> None:
    """No value of `field` (id, patient, lesion, slide) occurs in two splits."""
    info = sources.read_builder(sources.dataset_dir(str(data_dir), name)).info
    values = {s: set(map(str, column(data_dir, name, s, field)))
              for s in splits if s in info.splits}
    names = list(values)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not values[a] & values[b], (field, a, b, sorted(values[a] & values[b])[:5])
