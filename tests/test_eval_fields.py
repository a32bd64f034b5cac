"""Evaluations read each evaluated dataset's own fields, never the training config's: a
classification build (image + label, no caption) and a checkpoint trained on `captions` both
evaluate; fields, templates and class names can be overridden from the eval config."""

import json
import os

import numpy as np
import pytest

from conftest import tiny_config
from data_prep_helpers import run_build
from medclip_jax.evaluation import linear_probe as linear_probe_eval
from evals import zero_shot as zero_shot_eval
from helpers import REPO_ROOT, run_in_process
from medclip_jax import train
from medclip_jax.data import sources
from medclip_jax.errors import UserError
from medclip_jax.evaluation import fields, model_view, retrieval, vqa, zero_shot
from test_data_prep_pathology import write_lc25000
from test_zero_shot_multilabel import mimic_data_dir

LUNG = "lc25000@lung"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_data_dir) -> str:
    """The tiny synthetic set, a tiny MIMIC-CXR build (records with `captions`) and an
    LC25000 build (classification: image + label, no caption field) in one data_dir."""
    data_dir = str(tmp_path_factory.mktemp("fields_tfds"))
    os.symlink(os.path.join(tiny_data_dir, "synthetic_medical"),
               os.path.join(data_dir, "synthetic_medical"))
    os.symlink(os.path.join(mimic_data_dir(tmp_path_factory), "mimic_cxr"),
               os.path.join(data_dir, "mimic_cxr"))
    raw = str(tmp_path_factory.mktemp("fields_lc_raw"))
    write_lc25000(raw, ("lung",))
    run_build(LUNG, raw, data_dir, max_image_side=32)
    return data_dir


def checkpoint(data_dir: str, workdir: str, caption_field: str, mixture: str) -> str:
    """An untrained tiny CLIP checkpoint (step 3) whose training config reads `caption_field`."""
    config = tiny_config(data_dir, **{"eval.every_steps": 0, "data.caption_field": caption_field,
                                      "data.train_mixture": mixture, "num_epochs": 50.0})
    run, checkpointer = train.setup(config, workdir)
    checkpointer.save(3, run.state.params, train.rest_of_state(run.state), run.config.to_dict())
    checkpointer.wait_until_finished()
    checkpointer.close()
    return workdir


@pytest.fixture(scope="module", params=["caption", "captions"])
def workdir(request, data_dir, tmp_path_factory) -> str:
    """Checkpoints trained on `caption` (synthetic) and on `captions` (MIMIC-CXR, the paper
    preset's field, which neither the synthetic set nor any classification build has)."""
    mixture = ("synthetic_medical@tiny/train" if request.param == "caption"
               else "mimic_cxr/train")
    workdir = str(tmp_path_factory.mktemp(f"fields_ckpt_{request.param}"))
    return checkpoint(data_dir, workdir, request.param, mixture)


@pytest.fixture(scope="module")
def loaded(workdir) -> model_view.ModelView:
    return model_view.from_checkpoint(workdir)


def eval_config(data_dir: str):
    from configs import eval as eval_configs
    config = eval_configs.get_config("tiny")
    config.data_dir = data_dir
    return config


def test_zero_shot_on_a_classification_build_and_the_synthetic_set(loaded, data_dir):
    config = eval_config(data_dir)
    config.zero_shot.datasets = (f"{LUNG}/test", "synthetic_medical@tiny/test", "mimic_cxr/test")
    results = zero_shot.evaluate(loaded, data_dir, config)
    lung = results[f"{LUNG}/test:lc25000_lung"]
    assert lung["num_samples"] == sources.num_records(data_dir, LUNG, "test")
    assert lung["num_classes"] == 3 and 0.0 <= lung["top1"] <= 1.0
    assert "synthetic_medical@tiny/test:chest_xray" in results
    assert any(k.startswith("mimic_cxr/test:") for k in results)


def test_zero_shot_scores_equal_a_direct_computation(loaded, data_dir):
    """The LC25000 task's top-1 from the binary's path equals prompts + cosines done here."""
    config = eval_config(data_dir)
    config.zero_shot.datasets = (f"{LUNG}/test",)
    result = zero_shot.evaluate(loaded, data_dir, config)[f"{LUNG}/test:lc25000_lung"]
    task = sources.dataset_metadata(data_dir, LUNG)["tasks"]["lc25000_lung"]
    labels = sources.load_annotations(data_dir, LUNG, "test", ["label"])["label"]
    images = model_view.embed_split_images(loaded, data_dir, LUNG, "test", 8)
    prompts = [t.format(c) for c in task["class_names"] for t in task["templates"]]
    texts = model_view.embed_texts(loaded, prompts, 8).reshape(len(task["class_names"]),
                                                           len(task["templates"]), -1)
    texts = texts / np.linalg.norm(texts, axis=-1, keepdims=True)
    classes = texts.mean(1)
    classes = classes / np.linalg.norm(classes, axis=-1, keepdims=True)
    images = images / np.linalg.norm(images, axis=-1, keepdims=True)
    top1 = np.mean(np.argmax(images @ classes.T, axis=1) == labels)
    assert result["top1"] == pytest.approx(top1)


def test_retrieval_reads_captions_when_present_else_caption(loaded, data_dir):
    config = eval_config(data_dir)
    config.retrieval.datasets = ("synthetic_medical@tiny/test", "mimic_cxr/test")
    results = retrieval.evaluate(loaded, data_dir, config)
    mimic = sources.load_annotations(data_dir, "mimic_cxr", "test", ["captions"])["captions"]
    distinct = {c.strip() for caps in mimic for c in caps if c.strip()}
    assert results["mimic_cxr/test"]["num_texts"] == len(distinct)
    synthetic = sources.load_annotations(data_dir, "synthetic_medical@tiny", "test",
                                         ["caption"])["caption"]
    assert results["synthetic_medical@tiny/test"]["num_texts"] == len(
        {c.strip() for c in synthetic})
    # An override retrieves over the first caption only.
    config.fields = ("mimic_cxr:caption=caption",)
    first_only = retrieval.evaluate(loaded, data_dir, config)["mimic_cxr/test"]
    firsts = sources.load_annotations(data_dir, "mimic_cxr", "test", ["caption"])["caption"]
    assert first_only["num_texts"] == len({c.strip() for c in firsts if c.strip()})


@pytest.mark.slow
def test_linear_probe_on_a_classification_build(loaded, data_dir, tmp_path):
    config = eval_config(data_dir)
    config.linear_probe.datasets = (LUNG, "synthetic_medical@tiny")
    config.linear_probe.k_shots = ()
    results = linear_probe_eval.evaluate(loaded, data_dir, config, str(tmp_path))
    lung = results[f"{LUNG}/test:lc25000_lung"]
    assert lung["num_samples"] == sources.num_records(data_dir, LUNG, "test")
    assert 0.0 <= lung["top1"] <= 1.0 and lung["num_classes"] == 3


@pytest.mark.slow
def test_vqa_runs_on_a_checkpoint_trained_on_either_field(loaded, data_dir, tmp_path):
    config = eval_config(data_dir)
    config.vqa.datasets = ("synthetic_medical@tiny",)
    config.vqa.epochs = 1
    results = vqa.evaluate(loaded, data_dir, config)
    assert results and all("accuracy" in r for r in results.values())


def test_templates_and_class_names_from_the_eval_config(loaded, data_dir, tmp_path):
    config = eval_config(data_dir)
    config.zero_shot.datasets = (f"{LUNG}/test",)
    key = f"{LUNG}/test:lc25000_lung"
    base = zero_shot.evaluate(loaded, data_dir, config)[key]
    config.zero_shot.templates = ("{}",)
    bare = zero_shot.evaluate(loaded, data_dir, config)[key]
    names = ["adenocarcinoma", "benign tissue", "squamous cell carcinoma"]
    labels = sources.load_annotations(data_dir, LUNG, "test", ["label"])["label"]
    images = model_view.embed_split_images(loaded, data_dir, LUNG, "test", 8)
    meta_names = sources.dataset_metadata(data_dir, LUNG)["tasks"]["lc25000_lung"]["class_names"]

    def top1_for(class_names, templates):
        classifier = zero_shot.class_embeddings(loaded, class_names, templates, 8)
        scores = np.asarray(zero_shot.zero_shot_scores(images, classifier))
        return float(np.mean(scores.argmax(1) == labels))

    assert bare["top1"] == pytest.approx(top1_for(meta_names, ["{}"]))
    assert base["top1"] == pytest.approx(top1_for(
        meta_names, sources.dataset_metadata(data_dir, LUNG)["tasks"]["lc25000_lung"]["templates"]))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({
        "lc25000": {"templates": ["a photo of {}."]},
        f"{LUNG}:lc25000_lung": {"class_names": names}}))
    config.zero_shot.prompts = str(prompts)
    overridden = zero_shot.evaluate(loaded, data_dir, config)[key]
    assert overridden["top1"] == pytest.approx(top1_for(names, ["a photo of {}."]))
    prompts.write_text(json.dumps({LUNG: {"class_names": names[:2]}}))
    with pytest.raises(UserError, match="3 classes.*override names 2"):
        zero_shot.evaluate(loaded, data_dir, config)
    prompts.write_text(json.dumps({LUNG: {"templates": ["no slot"]}}))
    with pytest.raises(UserError, match="has no '\\{\\}'"):
        zero_shot.evaluate(loaded, data_dir, config)


def test_field_overrides_parse_and_check():
    overrides = fields.parse_overrides(("roco:caption=caption", "roco@all:caption=captions",
                                        "ham10000@lesion_split:label=dx"))
    assert fields.caption_field("roco@radiology", {"caption", "captions"}, overrides) == "caption"
    assert fields.caption_field("roco@all", {"caption", "captions"}, overrides) == "captions"
    assert fields.caption_field("pmc_oa", {"caption", "captions"}) == "captions"
    assert fields.caption_field("bach", {"caption"}) == "caption"
    assert fields.label_field("ham10000@lesion_split", None, overrides) == "dx"
    assert fields.label_field("bach", "label", overrides) == "label"
    with pytest.raises(UserError, match="bach has no caption field"):
        fields.caption_field("bach", {"image", "label"})
    with pytest.raises(UserError, match="config.fields: roco@radiology has no field 'caption'"):
        fields.caption_field("roco@radiology", {"captions"}, overrides)
    with pytest.raises(UserError, match="config.fields: cannot parse"):
        fields.parse_overrides(("roco=caption",))


@pytest.mark.parametrize("workdir", ["captions"], indirect=True)  # flags parse once a process
def test_zero_shot_command_line_on_a_classification_build(data_dir, workdir, capsys,
                                                          monkeypatch):
    """The user's command from the issue, on the paper preset's caption field:
    `python -m evals.zero_shot --workdir W --config.data_dir=D
    --config.zero_shot.datasets="('lc25000@lung/test',)"`, in-process."""
    argv = ["zero_shot", f"--workdir={workdir}",
            f"--config={os.path.join(REPO_ROOT, 'configs', 'eval.py')}:tiny",
            f"--config.data_dir={data_dir}", f"--config.zero_shot.datasets=('{LUNG}/test',)"]
    run_in_process(zero_shot_eval.run, argv, monkeypatch)
    assert f"| {LUNG}/test:lc25000_lung |" in capsys.readouterr().out



def test_classes_whose_prompts_truncate_alike_are_reported(loaded, data_dir, capsys):
    """The tiny model reads 16 text positions: a long template cuts every class name off, so
    the scores tie; the evaluation says so instead of reporting chance silently."""
    config = eval_config(data_dir)
    config.zero_shot.datasets = (f"{LUNG}/test",)
    config.zero_shot.templates = ("a histopathology slide showing {}.",)
    zero_shot.evaluate(loaded, data_dir, config)
    err = capsys.readouterr().err
    assert "have identical prompts after tokenisation to config.model.text.max_len=16" in err
    config.zero_shot.templates = ("{}",)
    zero_shot.evaluate(loaded, data_dir, config)
    assert "identical prompts" not in capsys.readouterr().err
