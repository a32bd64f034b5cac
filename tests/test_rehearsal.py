"""The benchmark's rehearsal (scripts/rehearsal.sh): miniature releases of every dataset family
in their publishers' layouts -> `data_prep.build all` -> two methods trained on the paper's
four-corpus mixture -> all 25 tasks + the multi-label task for both -> a report without a gap.
The path a user takes, start to end, as subprocesses of the real commands."""

import glob
import json
import os
import subprocess

import pytest

from configs import eval as eval_configs
from helpers import REPO_ROOT, subprocess_env

METHODS = ("clip", "siglip")


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> tuple[str, subprocess.CompletedProcess]:
    out = str(tmp_path_factory.mktemp("rehearsal"))
    env = {**subprocess_env(), "OUT": out, "METHODS": " ".join(METHODS)}
    result = subprocess.run(["bash", os.path.join(REPO_ROOT, "scripts", "rehearsal.sh")],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=900)
    return out, result


def suite_of(out: str, method: str) -> dict:
    (path,) = glob.glob(os.path.join(out, method, "eval", "suite_step*.json"))
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.slow
def test_rehearsal_passes(rehearsal):
    _, result = rehearsal
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-4000:])
    assert "[rehearsal] report complete" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_task_has_a_number_for_each_method(rehearsal, method):
    out, _ = rehearsal
    suite = suite_of(out, method)
    assert suite["complete"] and suite["skipped"] == [] and suite["method"] == method
    assert suite["train_config"]["data"]["caption_field"] == "captions"
    paper = eval_configs.get_config("paper")
    results = suite["results"]
    multiclass = {k for k, r in results["zero_shot"].items() if "top1" in r}
    assert len(multiclass) == 19 == len(paper.linear_probe.datasets)
    assert {k.split(":")[0] for k in multiclass} == set(eval_configs.PAPER_CLASSIFICATION)
    (chexpert,) = [r for r in results["zero_shot"].values() if "mean_auroc" in r]
    assert 0.0 <= chexpert["mean_auroc"] <= 1.0
    assert len(results["linear_probe"]) == 19
    assert set(results["retrieval"]) == set(eval_configs.PAPER_RETRIEVAL)
    assert {k.split("/")[0] for k in results["vqa"]} == {"vqa_rad", "path_vqa"}
    for section in results.values():
        for metrics in section.values():
            numbers = [v for v in metrics.values() if isinstance(v, float)]
            assert numbers and all(v == v for v in numbers), metrics   # no NaN headline


@pytest.mark.slow
def test_report_has_every_row_for_both_methods(rehearsal):
    out, result = rehearsal
    with open(os.path.join(out, "report", "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    assert [r["name"] for r in summary["runs"]] == sorted(METHODS)
    counts = {family: len(tasks) for family, tasks in summary["tasks"].items()}
    assert counts == {"zero_shot": 19, "multilabel": 1, "linear_probe": 19,
                      "retrieval": 8, "vqa": 2}
    for method in METHODS:
        for family, tasks in summary["scores"][method].items():
            assert all(v is not None for v in tasks.values()), (method, family)
    report = open(os.path.join(out, "report", "report.md"), encoding="utf-8").read()
    assert "—" not in report.split("## ")[1]   # no gap in the first table
    assert "| lc25000@lung/test:lc25000_lung |" in result.stdout


@pytest.mark.slow
def test_every_build_reported_its_planted_rejects(rehearsal):
    """Each bad item the fixtures planted is a reject with its reason; nothing else is."""
    out, _ = rehearsal
    with open(os.path.join(out, "planted.json"), encoding="utf-8") as f:
        planted = json.load(f)
    reported = {}
    for path in glob.glob(os.path.join(out, "tfds", "**", "build_summary.json"), recursive=True):
        with open(path, encoding="utf-8") as f:
            built = json.load(f)
        reported[built["dataset"]] = built["rejected_by_reason"]
        assert sum(built["written"].values()) + sum(built["rejected"].values()) == sum(
            built["found"].values()), path
    assert set(planted) <= set(reported)
    assert {name: reported[name] for name in planted} == planted
