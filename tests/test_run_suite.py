"""evals/run_suite.py: one loaded checkpoint, every configured evaluation, one results file;
missing datasets, splits and evaluation modules are skipped and listed, never fatal."""

import json
import os
import sys
import types

import ml_collections
import pytest

from evals import run_suite
from helpers import REPO_ROOT, run_in_process
from medclip_jax.errors import UserError
from medclip_jax.evaluation import model_view, retrieval, zero_shot
from test_zero_shot_multilabel import mimic_data_dir, tiny_checkpoint

FAKE_MODULE = "tests_fake_vqa_evaluation"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_data_dir) -> str:
    return tiny_checkpoint(tmp_path_factory, tiny_data_dir)


@pytest.fixture(scope="module")
def loaded(workdir) -> model_view.ModelView:
    return model_view.from_checkpoint(workdir)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_data_dir) -> str:
    """The tiny synthetic dataset and the tiny MIMIC-CXR build side by side."""
    data_dir = str(tmp_path_factory.mktemp("suite_tfds"))
    os.symlink(os.path.join(tiny_data_dir, "synthetic_medical"),
               os.path.join(data_dir, "synthetic_medical"))
    os.symlink(os.path.join(mimic_data_dir(tmp_path_factory), "mimic_cxr"),
               os.path.join(data_dir, "mimic_cxr"))
    return data_dir


def suite_config(data_dir: str) -> ml_collections.ConfigDict:
    from configs import eval as eval_configs
    config = eval_configs.get_config("tiny")
    config.data_dir = data_dir
    config.zero_shot.datasets = ("synthetic_medical@tiny/test", "mimic_cxr/test",
                                 "absent_dataset/test")
    config.retrieval.datasets = ("synthetic_medical@tiny/test", "synthetic_medical@tiny/nope",
                                 "mimic_cxr/validation")
    config.linear_probe.datasets = ("synthetic_medical@tiny",)
    config.vqa.datasets = ("synthetic_medical@tiny", "vqa_rad")
    return config


def fake_evaluation(calls: list, fail_on: str = ""):
    """A module with an `evaluate` that records how it was called."""
    module = types.ModuleType(FAKE_MODULE)

    def evaluate(loaded, data_dir, config):
        (spec,) = config.vqa.datasets
        calls.append({"spec": spec, "data_dir": config.data_dir, "output_dir": config.output_dir,
                      "step": loaded.step})
        if spec == fail_on:
            raise UserError(f"config.vqa.datasets: {spec} has no questions")
        return {f"{spec}/test:vqa": {"accuracy": 0.5, "closed_accuracy": 0.75}}

    module.evaluate = evaluate
    return module


def test_suite_writes_every_section_and_lists_what_it_skipped(loaded, workdir, data_dir,
                                                              tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, FAKE_MODULE, fake_evaluation(calls))
    monkeypatch.setitem(run_suite.EVALUATIONS, "vqa", FAKE_MODULE)
    monkeypatch.setitem(run_suite.EVALUATIONS, "linear_probe", "evals.no_such_linear_probe")
    config = suite_config(data_dir)
    output_dir = str(tmp_path / "eval")
    suite, path = run_suite.run_suite(loaded, data_dir, config, output_dir, workdir)

    assert path == os.path.join(output_dir, f"suite_step{loaded.step}.json")
    with open(path, encoding="utf-8") as f:
        on_disk = json.load(f)
    assert on_disk == json.loads(json.dumps(suite, sort_keys=True))
    assert set(on_disk) >= {"step", "workdir", "method", "train_config", "eval_config",
                            "datasets", "skipped", "results", "seconds"}
    assert on_disk["step"] == 5 and on_disk["workdir"] == workdir and on_disk["complete"]
    assert on_disk["method"] == "clip" == on_disk["train_config"]["method"]
    assert on_disk["eval_config"]["zero_shot"]["datasets"][2] == "absent_dataset/test"
    assert set(on_disk["results"]) == {"zero_shot", "retrieval", "linear_probe", "vqa"}
    assert set(on_disk["seconds"]) == set(on_disk["results"])

    # Dataset versions and folders, for every dataset that was read.
    datasets = on_disk["datasets"]
    assert set(datasets) == {"synthetic_medical@tiny/test", "mimic_cxr/test",
                             "mimic_cxr/validation", "synthetic_medical@tiny"}
    for spec, info in datasets.items():
        assert info["version"] == "1.0.0" and os.path.isabs(info["path"]), spec
        assert os.path.exists(os.path.join(info["path"], "dataset_info.json"))
    assert datasets["mimic_cxr/test"]["path"].endswith(os.path.join("mimic_cxr", "frontal",
                                                                    "1.0.0"))

    # Each section is what the evaluation's own evaluate() returns; both datasets ran.
    results = on_disk["results"]
    assert set(results["zero_shot"]) == {"synthetic_medical@tiny/test:chest_xray",
                                         "synthetic_medical@tiny/test:histopathology",
                                         "mimic_cxr/test:chexpert"}
    assert results["zero_shot"]["mimic_cxr/test:chexpert"]["num_samples"] == 16
    alone = ml_collections.ConfigDict(config.to_dict())
    alone.zero_shot.datasets = ("synthetic_medical@tiny/test",)
    direct = zero_shot.evaluate(loaded, data_dir, alone)
    chest = "synthetic_medical@tiny/test:chest_xray"
    assert results["zero_shot"][chest]["top1"] == direct[chest]["top1"]
    assert set(results["retrieval"]) == {"synthetic_medical@tiny/test", "mimic_cxr/validation"}
    alone.retrieval.datasets = ("mimic_cxr/validation",)
    assert (results["retrieval"]["mimic_cxr/validation"]
            == retrieval.evaluate(loaded, data_dir, alone)["mimic_cxr/validation"])
    assert results["linear_probe"] == {}
    assert results["vqa"] == {"synthetic_medical@tiny/test:vqa": {"accuracy": 0.5,
                                                                  "closed_accuracy": 0.75}}
    assert calls == [{"spec": "synthetic_medical@tiny", "data_dir": data_dir,
                      "output_dir": output_dir, "step": 5}]

    skipped = {(s["evaluation"], s["dataset"]): s["reason"] for s in on_disk["skipped"]}
    assert set(skipped) == {("zero_shot", "absent_dataset/test"),
                            ("retrieval", "synthetic_medical@tiny/nope"),
                            ("linear_probe", "synthetic_medical@tiny"), ("vqa", "vqa_rad")}
    assert skipped[("zero_shot", "absent_dataset/test")].startswith("dataset not found")
    assert "absent_dataset" in skipped[("zero_shot", "absent_dataset/test")]
    assert skipped[("retrieval", "synthetic_medical@tiny/nope")].startswith("split(s) nope")
    assert skipped[("linear_probe", "synthetic_medical@tiny")] == (
        "evaluation not available (no module evals.no_such_linear_probe)")
    assert "vqa_rad" in skipped[("vqa", "vqa_rad")]

    with open(os.path.splitext(path)[0] + ".md", encoding="utf-8") as f:
        markdown = f.read()
    for text in ("## zero_shot", "## retrieval", "## linear_probe", "## vqa", "## skipped",
                 "## datasets", "mimic_cxr/test:chexpert", "synthetic_medical@tiny/test:i2t",
                 "| mean_auroc |", "absent_dataset/test", "evaluation not available"):
        assert text in markdown, text


def test_a_failing_dataset_is_listed_and_the_others_still_run(loaded, workdir, data_dir,
                                                              tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, FAKE_MODULE,
                        fake_evaluation(calls, fail_on="synthetic_medical@tiny"))
    monkeypatch.setitem(run_suite.EVALUATIONS, "vqa", FAKE_MODULE)
    config = suite_config(data_dir)
    config.suite.evaluations = ("vqa",)
    config.vqa.datasets = ("synthetic_medical@tiny", "mimic_cxr")
    with pytest.raises(UserError, match=r"1 evaluation\(s\) failed \(vqa synthetic_medical@tiny"):
        run_suite.run_suite(loaded, data_dir, config, str(tmp_path), workdir)
    with open(tmp_path / "suite_step5.json", encoding="utf-8") as f:
        on_disk = json.load(f)
    assert [c["spec"] for c in calls] == ["synthetic_medical@tiny", "mimic_cxr"]
    assert on_disk["complete"] and list(on_disk["results"]["vqa"]) == ["mimic_cxr/test:vqa"]
    (failed,) = on_disk["skipped"]
    assert failed["reason"] == ("failed: config.vqa.datasets: synthetic_medical@tiny has no "
                                "questions")


def test_strict_suite_fails_on_a_skipped_dataset_after_running_the_rest(loaded, workdir,
                                                                       data_dir, tmp_path):
    config = suite_config(data_dir)
    config.suite.evaluations = ("retrieval",)
    config.suite.strict = True
    with pytest.raises(UserError, match=r"config.suite.strict: 1 evaluation\(s\) skipped "
                                        r"\(retrieval synthetic_medical@tiny/nope\)"):
        run_suite.run_suite(loaded, data_dir, config, str(tmp_path), workdir)
    with open(tmp_path / "suite_step5.json", encoding="utf-8") as f:
        on_disk = json.load(f)
    assert set(on_disk["results"]["retrieval"]) == {"synthetic_medical@tiny/test",
                                                    "mimic_cxr/validation"}
    config.retrieval.datasets = ("synthetic_medical@tiny/test",)
    suite, _ = run_suite.run_suite(loaded, data_dir, config, str(tmp_path), workdir)
    assert not suite["skipped"]


def test_unknown_evaluation_is_a_user_error(loaded, data_dir, tmp_path):
    config = suite_config(data_dir)
    config.suite.evaluations = ("zero_shot", "captioning")
    with pytest.raises(UserError, match="config.suite.evaluations: unknown evaluation.*captioning"):
        run_suite.run_suite(loaded, data_dir, config, str(tmp_path), "w")


def test_command_line_entry_point(workdir, data_dir, capsys, monkeypatch):
    """`run()` with parsed flags (as `python -m evals.run_suite` does), in-process.

    config_flags reads the --config.x overrides from sys.argv, hence the patch."""
    argv = ["run_suite", f"--workdir={workdir}",
            f"--config={os.path.join(REPO_ROOT, 'configs', 'eval.py')}:tiny",
            f"--config.data_dir={data_dir}", "--config.suite.evaluations=('retrieval',)",
            "--config.retrieval.datasets=('mimic_cxr/test','absent/test')"]
    run_in_process(run_suite.run, argv, monkeypatch)
    out = capsys.readouterr().out
    assert "[suite] retrieval:" in out and "| mimic_cxr/test:t2i |" in out
    path = os.path.join(workdir, "eval", "suite_step5.json")
    with open(path, encoding="utf-8") as f:
        on_disk = json.load(f)
    assert list(on_disk["results"]) == ["retrieval"]
    assert list(on_disk["results"]["retrieval"]) == ["mimic_cxr/test"]
    assert [s["dataset"] for s in on_disk["skipped"]] == ["absent/test"]
