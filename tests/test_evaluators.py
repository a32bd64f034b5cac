"""The evaluation contract: one `evaluate(view, data_dir, settings)` per evaluator, usable from
a checkpoint (the `evals/` binaries) and from the running train state (`config.eval.evaluators`)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_evaluation_imports_neither_train_nor_data_prep():
    """Layers import downwards only: a fresh interpreter importing every evaluation module
    must not load `medclip_jax.train` or `data_prep`."""
    folder = os.path.join(ROOT, "medclip_jax", "evaluation")
    names = sorted(os.path.relpath(os.path.join(parent, f), folder)[:-3].replace(os.sep, ".")
                   for parent, _, files in os.walk(folder) for f in files if f.endswith(".py"))
    names = [n.removesuffix(".__init__") for n in names if n != "__init__"]
    assert "vqa" in names and "vqa.fit" in names
    code = ("import sys\n"
            + "".join(f"import medclip_jax.evaluation.{n}\n" for n in names)
            + "bad = sorted(m for m in sys.modules if m == 'medclip_jax.train' "
              "or m == 'data_prep' or m.startswith('data_prep.'))\n"
              "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.stdout.strip() == "", f"medclip_jax.evaluation pulls in {out.stdout.strip()}"


def test_registry_names_the_evaluators_training_can_schedule():
    from medclip_jax import settings
    from medclip_jax.evaluation import evaluators, linear_probe, retrieval, vqa, zero_shot
    from evals import run_suite
    assert settings.TRAINING_EVALUATORS == ("zero_shot", "retrieval", "linear_probe", "vqa")
    assert set(settings.TRAINING_EVALUATORS) == set(evaluators.EVALUATORS)
    library = {"zero_shot": zero_shot.evaluate, "retrieval": retrieval.evaluate,
               "linear_probe": linear_probe.evaluate, "vqa": vqa.evaluate}
    for name, evaluate in library.items():
        assert evaluators.get(name) is evaluate
        # The suite runs the same functions (it imports them by module name).
        assert run_suite.import_evaluation(name)[0] is evaluate
    assert tuple(run_suite.EVALUATIONS) == settings.EVALUATIONS


def test_evaluator_schedule_parses_names_and_intervals():
    from medclip_jax import settings, train
    parsed = settings.ValidationSettings.from_config({
        "every_steps": 4, "evaluators": ("zero_shot:3", "retrieval"),
        "zero_shot": {"datasets": ("a/test",)}, "retrieval": {"datasets": ("b/test",)}})
    assert parsed.schedule() == (("zero_shot", 3), ("retrieval", 4))
    run_settings = settings.TrainSettings.from_config({"eval": parsed})
    due = {step: train.due_evaluators(run_settings, step, last=step == 10)
           for step in range(1, 11)}
    assert due[3] == ["zero_shot"] and due[4] == ["retrieval"] and due[5] == []
    assert due[8] == ["retrieval"] and due[9] == ["zero_shot"]
    assert due[10] == ["zero_shot", "retrieval"]  # the last step runs every evaluator
    eval_settings = parsed.eval_settings(train_batch_size=16)
    assert eval_settings.batch_size == 16 and eval_settings.zero_shot.datasets == ("a/test",)
    assert settings.ValidationSettings.from_config(
        {"batch_size": 8}).eval_settings(16).batch_size == 8


@pytest.mark.parametrize("section,message", [
    ({"evaluators": ("zero_shoot",), "zero_shot": {"datasets": ("a/test",)}},
     "config.eval.evaluators: no evaluator 'zero_shoot' in 'zero_shoot'; choose from zero_shot, "
     "retrieval, linear_probe, vqa (did you mean zero_shot?)"),
    ({"evaluators": ("vqa:10",)},
     "config.eval.evaluators schedules vqa, but config.eval.vqa.datasets is empty"),
    ({"vqa": {"fusion": "concat"}}, "config.eval.vqa.fusion must be one of"),
    ({"linear_probe": {"validation_fraction": 1.5}},
     "config.eval.linear_probe.validation_fraction must be in (0, 1)"),
    ({"evaluators": ("retrieval:0",), "retrieval": {"datasets": ("a/test",)}},
     "config.eval.evaluators: 'retrieval:0' must be '<name>' or '<name>:<every_steps>' with "
     "every_steps a positive integer"),
    ({"evaluators": ("retrieval:often",), "retrieval": {"datasets": ("a/test",)}},
     "config.eval.evaluators: 'retrieval:often' must be"),
    ({"evaluators": ("retrieval",), "every_steps": 0, "retrieval": {"datasets": ("a/test",)}},
     "config.eval.evaluators: 'retrieval' runs every config.eval.every_steps=0 steps"),
    ({"evaluators": ("zero_shot",)},
     "config.eval.evaluators schedules zero_shot, but config.eval.zero_shot.datasets is empty"),
    ({"evaluators": ("retrieval:2", "retrieval:4"), "retrieval": {"datasets": ("a/test",)}},
     "config.eval.evaluators must be a tuple naming each evaluator at most once"),
    ({"evaluators": "zero_shot"}, "config.eval.evaluators must be a tuple"),
    ({"zero_shot": {"multilabel_uncertain": "maybe"}},
     "config.eval.zero_shot.multilabel_uncertain must be one of"),
    ({"retrieval": {"block_sise": 8}},
     "config.eval.retrieval.block_sise: no such field; did you mean "
     "config.eval.retrieval.block_size?"),
    ({"batch_size": -1}, "config.eval.batch_size must be an integer >= 0"),
])
def test_bad_evaluator_settings_are_one_line_errors(section, message):
    from medclip_jax import settings
    from medclip_jax.errors import UserError
    with pytest.raises(UserError) as error:
        settings.ValidationSettings.from_config(section)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_evaluator_scalars_keep_numbers_only():
    from medclip_jax import train
    results = {"ds/test:chest": {"top1": 0.5, "num_samples": 12, "skipped_labels": ["a"],
                                 "ok": True}}
    assert train.evaluator_scalars("zero_shot", results) == {
        "zero_shot/ds/test:chest/top1": 0.5, "zero_shot/ds/test:chest/num_samples": 12.0}


@pytest.mark.slow
def test_in_training_evaluators_equal_the_offline_binaries_on_the_same_step(tiny_data_dir,
                                                                           tmp_path):
    """Every evaluator scheduled in training gives the numbers the offline evaluation of that
    step's checkpoint gives (the `evals/` binaries call the same `evaluate` on
    `model_view.from_checkpoint`): zero-shot and retrieval on several steps, the linear probe
    and VQA (a head trained on the features) on the last."""
    import json

    import numpy as np

    from configs import eval as eval_config
    from conftest import tiny_config
    from medclip_jax import train
    from medclip_jax.evaluation import evaluators, model_view

    workdir = str(tmp_path / "run")
    config = tiny_config(tiny_data_dir, max_steps=3, **{
        "eval.every_steps": 0, "checkpoint.every_steps": 2,
        "eval.evaluators": ("zero_shot:2", "retrieval:1", "linear_probe:3", "vqa:3")})
    offline_config = eval_config.get_config("tiny")
    config.eval.linear_probe = offline_config.linear_probe
    config.eval.vqa = offline_config.vqa
    train.train_and_evaluate(config, workdir)
    lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]

    def logged(step, name):
        return {k: v for line in lines if line["step"] == step for k, v in line.items()
                if k.startswith(name + "/")}

    def steps_with(name):
        return sorted(line["step"] for line in lines if any(k.startswith(name + "/")
                                                            for k in line))

    assert steps_with("retrieval") == [1, 2, 3] and steps_with("zero_shot") == [2, 3]
    assert steps_with("linear_probe") == [3] and steps_with("vqa") == [3]
    for step, names in ((2, ("zero_shot", "retrieval")),
                        (3, ("zero_shot", "retrieval", "linear_probe", "vqa"))):
        view = model_view.from_checkpoint(workdir, step)
        assert view.step == step
        for name in names:
            offline = train.evaluator_scalars(
                name, evaluators.get(name)(view, tiny_data_dir, offline_config))
            online = logged(step, name)
            assert set(online) == set(offline) and len(offline) > 5, name
            for key, value in offline.items():
                np.testing.assert_allclose(online[key], value, rtol=1e-5, atol=1e-6,
                                           equal_nan=True, err_msg=f"step {step} {key}")
    assert "synthetic_medical@tiny/test:chest_xray" in " ".join(logged(2, "zero_shot"))
    assert "retrieval/synthetic_medical@tiny/test/i2t_R@1" in logged(1, "retrieval")
    assert "vqa/synthetic_medical@tiny/test:vqa/accuracy" in logged(3, "vqa")


def test_a_missing_evaluator_dataset_fails_at_start_up(tiny_data_dir):
    from conftest import tiny_config
    from medclip_jax import train
    from medclip_jax.errors import UserError
    config = tiny_config(tiny_data_dir, **{"eval.evaluators": ("retrieval:2",),
                                           "eval.retrieval.datasets": ("no_such_set/test",)})
    with pytest.raises(UserError, match=r"^config\.eval\.retrieval\.datasets: no_such_set/test: "):
        train.check_evaluator_datasets(train.validate_config(config))
    train.check_evaluator_datasets(train.validate_config(tiny_config(
        tiny_data_dir, **{"eval.evaluators": ("retrieval:2", "zero_shot")})))
    # A bare `name[@config]` spec (linear probe, VQA) reads its section's train / test split.
    vqa = {"eval.evaluators": ("vqa:2",), "eval.vqa.datasets": ("synthetic_medical@tiny",)}
    train.check_evaluator_datasets(train.validate_config(tiny_config(tiny_data_dir, **vqa)))
    with pytest.raises(UserError, match=r"^config\.eval\.vqa\.datasets: synthetic_medical@tiny: "
                                        r".*held_out"):
        train.check_evaluator_datasets(train.validate_config(tiny_config(
            tiny_data_dir, **vqa, **{"eval.vqa.test_split": "held_out"})))
