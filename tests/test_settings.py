"""The typed settings (medclip_jax/settings.py): defaults, checks, and the docs that list them."""

import ast
import dataclasses
import importlib
import os
import re
import typing

import ml_collections
import pytest

from medclip_jax import optim, settings
from medclip_jax.data import pipeline
from medclip_jax.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("clip", "convirt", "cyclip", "declip", "filip", "gloria", "lit", "siglip", "slip",
           "vse")
TRAIN_PRESETS = ("demo", "tiny", "paper", "rehearsal", "tiny,lock=1")


@pytest.mark.parametrize("method", METHODS)
def test_every_training_preset_parses(method):
    module = importlib.import_module(f"configs.{method}")
    for preset in TRAIN_PRESETS:
        parsed = settings.TrainSettings.from_config(module.get_config(preset))
        assert parsed.method == module.get_config(preset).method


def test_every_eval_preset_parses():
    from configs import eval as eval_config
    for preset in eval_config.PRESETS:
        parsed = settings.EvalSettings.from_config(eval_config.get_config(preset))
        assert parsed.suite.evaluations == settings.EVALUATIONS


def test_config_files_take_their_defaults_from_the_settings():
    from configs import base, eval as eval_config
    config = base.get_base_config()
    for name, value in settings.defaults(settings.TrainSettings).items():
        got = config[name].to_dict() if isinstance(config[name], ml_collections.ConfigDict) \
            else config[name]
        assert got == value, name
    vqa = eval_config.vqa_config("paper")
    assert (vqa.epochs, vqa.dropout, vqa.weight_decay) == (40, 0.1, 1e-4)  # paper + defaults


def test_unknown_key_names_the_field_and_the_closest_one():
    with pytest.raises(UserError) as e:
        settings.OptimSettings.from_config({"learnin_rate": 1.0})
    assert str(e.value) == ("config.optim.learnin_rate: no such field; did you mean "
                            "config.optim.learning_rate?")
    with pytest.raises(UserError, match=r"^config.data.augment.crop: no such field$"):
        settings.DataSettings.from_config({"augment": {"crop": 1}})
    with pytest.raises(UserError, match=r"config.vqa.hiden_dim: .*config.vqa.hidden_dim\?"):
        settings.VqaSettings.from_config(ml_collections.ConfigDict({"hiden_dim": 3}))


@pytest.mark.parametrize("kind,field,value,message", [
    (settings.TrainSettings, "batch_size", 2.5, "must be an integer"),
    (settings.TrainSettings, "batch_size", True, "must be an integer"),
    (settings.TrainSettings, "num_epochs", "ten", "must be a number"),
    (settings.OptimSettings, "learning_rate", "abc", "must be a number"),
    (settings.AugmentSettings, "random_crop_scale", (0.5,), "must be a tuple of 2 values"),
    (settings.AugmentSettings, "flip", "yes", "must be True or False"),
    (settings.ZeroShotSettings, "datasets", "a/test", "must be a tuple"),
    (settings.RetrievalSettings, "ks", (1, "5"), "must be a tuple, each an integer"),
])
def test_wrong_types_name_the_field(kind, field, value, message):
    with pytest.raises(UserError, match=rf"^{kind.PATH}\.{field} {message}"):
        kind(**{field: value})


@pytest.mark.parametrize("kind,values,field", [
    (settings.TrainSettings, {"batch_size": 0}, "config.batch_size"),
    (settings.TrainSettings, {"grad_accum_steps": 0}, "config.grad_accum_steps"),
    (settings.TrainSettings, {"num_epochs": 0.0}, "config.num_epochs"),
    (settings.TrainSettings, {"log_every_steps": 0}, "config.log_every_steps"),
    (settings.OptimSettings, {"learning_rate": -1e-3}, "config.optim.learning_rate"),
    (settings.OptimSettings, {"learning_rate": 0.0}, "config.optim.learning_rate"),
    (settings.OptimSettings, {"learning_rate": float("nan")}, "config.optim.learning_rate"),
    (settings.OptimSettings, {"weight_decay": -0.1}, "config.optim.weight_decay"),
    (settings.OptimSettings, {"warmup_fraction": 1.5}, "config.optim.warmup_fraction"),
    (settings.OptimSettings, {"b2": 1.0}, "config.optim.b2"),
    (settings.OptimSettings, {"eps": 0.0}, "config.optim.eps"),
    (settings.OptimSettings, {"grad_clip_norm": -1.0}, "config.optim.grad_clip_norm"),
    (settings.OptimSettings, {"name": "sgd"}, "config.optim.name"),
    (settings.OptimSettings, {"no_decay_regex": "("}, "config.optim.no_decay_regex"),
    (settings.OptimSettings, {"lr_multipliers": (("x", -1.0),)}, "config.optim.lr_multipliers"),
    (settings.AugmentSettings, {"random_crop_scale": (0.0, 1.0)},
     "config.data.augment.random_crop_scale"),
    (settings.AugmentSettings, {"random_crop_scale": (0.9, 0.5)},
     "config.data.augment.random_crop_scale"),
    (settings.AugmentSettings, {"random_crop_scale": (0.5, 1.5)},
     "config.data.augment.random_crop_scale"),
    (settings.AugmentSettings, {"random_crop_ratio": (2.0, 1.0)},
     "config.data.augment.random_crop_ratio"),
    (settings.ViewAugmentSettings, {"color_jitter": (0.4, 0.4, 0.4, 0.6)},
     "config.data.view_augment.color_jitter"),
    (settings.ViewAugmentSettings, {"blur_prob": 1.5}, "config.data.view_augment.blur_prob"),
    (settings.MlmSettings, {"mask_prob": 0.0}, "config.data.mlm.mask_prob"),
    (settings.MlmSettings, {"selection": "random"}, "config.data.mlm.selection"),
    (settings.DataSettings, {"std": (1.0, 0.0, 1.0)}, "config.data.std"),
    (settings.DataSettings, {"read_threads": -1}, "config.data.read_threads"),
    (settings.DataSettings, {"text_view_drop_prob": 1.2}, "config.data.text_view_drop_prob"),
    (settings.MeshSettings, {"data": 0}, "config.mesh.data"),
    (settings.MeshSettings, {"data": -1, "fsdp": -1}, "config.mesh.fsdp"),
    (settings.CheckpointSettings, {"every_steps": 0}, "config.checkpoint.every_steps"),
    (settings.CheckpointSettings, {"max_to_keep": 0}, "config.checkpoint.max_to_keep"),
    (settings.ValidationSettings, {"ks": ()}, "config.eval.ks"),
    (settings.ValidationSettings, {"max_examples": 0}, "config.eval.max_examples"),
    (settings.EvalSettings, {"batch_size": 0}, "config.batch_size"),
    (settings.EvalSettings, {"mesh": {"data": -2}}, "config.mesh.data"),
    (settings.ZeroShotSettings, {"multilabel_uncertain": "maybe"},
     "config.zero_shot.multilabel_uncertain"),
    (settings.RetrievalSettings, {"block_size": 0}, "config.retrieval.block_size"),
    (settings.LinearProbeSettings, {"validation_fraction": 1.0},
     "config.linear_probe.validation_fraction"),
    (settings.LinearProbeSettings, {"features": "pooled"}, "config.linear_probe.features"),
    (settings.LinearProbeSettings, {"l2_grid": ()}, "config.linear_probe.l2_grid"),
    (settings.LinearProbeSettings, {"k_shots": (0,)}, "config.linear_probe.k_shots"),
    (settings.VqaSettings, {"fusion": "concat"}, "config.vqa.fusion"),
    (settings.VqaSettings, {"fusion": "cross_attention", "hidden_dim": 15, "num_heads": 2},
     "config.vqa.hidden_dim"),
    (settings.VqaSettings, {"dropout": 1.0}, "config.vqa.dropout"),
    (settings.VqaSettings, {"image_lr_multiplier": 0.0}, "config.vqa.image_lr_multiplier"),
    (settings.SuiteSettings, {"evaluations": ("captioning",)}, "config.suite.evaluations"),
])
def test_impossible_values_name_the_field(kind, values, field):
    with pytest.raises(UserError, match=rf"^{re.escape(field)}\b") as e:
        kind.from_config(values)
    assert "\n" not in str(e.value)


def test_defaults_pass_their_own_checks_and_are_frozen():
    for kind in settings.SECTIONS:
        section = kind()
        with pytest.raises(dataclasses.FrozenInstanceError):
            section.seed = 1
    assert settings.OptimSettings.from_config(None) == settings.OptimSettings()


def test_values_are_normalised_to_their_types():
    data = settings.DataSettings.from_config(ml_collections.ConfigDict(
        {"augment": {"random_crop_scale": [1, 1]}, "image_views": 2}))
    assert data.augment.random_crop_scale == (1.0, 1.0)
    assert isinstance(data.augment.random_crop_scale[0], float)
    assert data.view_augment == settings.ViewAugmentSettings()


def test_warmup_steps_or_fraction():
    # Longer than the run is allowed (smoke runs of the paper preset); the schedule clips it.
    assert settings.OptimSettings(warmup_steps=20).warmup(10) == 20
    assert settings.OptimSettings(warmup_fraction=0.25).warmup(10) == 2  # round(2.5), as before
    schedule = optim.warmup_cosine_schedule(1.0, total_steps=10, warmup_steps=20)
    assert float(schedule(5)) == pytest.approx(0.5)


def test_negative_learning_rate_in_a_config_dict_fails_in_make_optimizer():
    config = ml_collections.ConfigDict(settings.defaults(settings.OptimSettings))
    config.learning_rate = -1e-3
    with pytest.raises(UserError, match="config.optim.learning_rate"):
        optim.make_optimizer(config, {}, 10)


def test_the_crop_default_is_the_documented_one():
    """A data config without ``augment`` used to train with no crop at all (the code's fallback
    was (1, 1)), although the docstring and base.py say (0.8, 1.0); it is (0.8, 1.0) now."""
    image = pipeline.ImageSettings(pipeline.data_settings(ml_collections.ConfigDict({})), 16, True)
    assert image.crop and image.scale == (0.8, 1.0)
    no_crop = pipeline.data_settings({"augment": {"random_crop_scale": (1.0, 1.0)}})
    assert not pipeline.ImageSettings(no_crop, 16, True).crop


def test_vqa_head_fields_have_one_home():
    from medclip_jax.evaluation import vqa
    head_fields = {f.name for f in dataclasses.fields(vqa.head.VqaHead)} - {
        "num_answers", "parent", "name"}
    assert head_fields <= {f.name for f in dataclasses.fields(settings.VqaSettings)}
    head = vqa.head.make_head(vqa.head.settings_from_config({}), 7)
    assert head.num_answers == 7
    for name in head_fields:
        assert getattr(head, name) == getattr(settings.VqaSettings(), name)
    for field in dataclasses.fields(vqa.head.VqaHead):  # the module repeats no default
        if field.name in head_fields:
            assert field.default is dataclasses.MISSING, field.name


# --- the documented fields ------------------------------------------------------------------


def test_fields_reference_is_generated_from_the_settings():
    with open(os.path.join(REPO_ROOT, "configs", "FIELDS.md"), encoding="utf-8") as f:
        assert f.read() == settings.fields_markdown(), (
            "configs/FIELDS.md is stale: python -m medclip_jax.settings > configs/FIELDS.md")


def leaf_defaults(kind, prefix=""):
    out = {}
    hints = typing.get_type_hints(kind)
    for field in dataclasses.fields(kind):
        hint = hints[field.name]
        if isinstance(hint, type) and issubclass(hint, settings.Section):
            out.update(leaf_defaults(hint, f"{prefix}{field.name}."))
        else:
            out[prefix + field.name] = getattr(kind(), field.name)
    return out


def documented_defaults(doc: str) -> dict[str, str]:
    """``name`` [default] pairs of a field list; names in a ``x.*`` bullet get the x. prefix."""
    pairs = {}
    for bullet in re.split(r"\n\* ", doc):
        prefix = re.match(r"``(\w+)\.\*``", bullet)
        for name, value in re.findall(r"``([\w.]+)``\s*\[([^\]]+)\]", bullet):
            pairs[(prefix.group(1) + "." if prefix else "") + name] = value
    return pairs


def parse_default(text: str):
    text = text.strip().strip("`")
    try:
        return ast.literal_eval(text.replace("3/4", "0.75").replace("4/3", str(4 / 3)))
    except (ValueError, SyntaxError):
        return text


def test_pipeline_docstring_defaults_match_the_data_settings():
    doc = pipeline.__doc__.split("``config.data`` fields read here", 1)[1]
    documented = documented_defaults(doc)
    assert documented.pop("std") == "OpenAI CLIP's"  # "``mean``, ``std`` [OpenAI CLIP's]"
    expected = leaf_defaults(settings.DataSettings)
    assert expected["mean"] == (0.48145466, 0.4578275, 0.40821073)
    assert set(documented) | {"mean", "std"} == set(expected)
    for name, text in documented.items():
        value = parse_default(text)
        if isinstance(value, tuple):
            assert value == pytest.approx(expected[name]), name
        else:
            assert value == expected[name], name


def test_vqa_binary_docstring_lists_every_vqa_field():
    import evals.vqa
    doc = evals.vqa.__doc__.split("``config.vqa`` fields:", 1)[1].split("Metrics:", 1)[0]
    names = set(re.findall(r"\b[a-z]+(?:_[a-z]+)*\b", doc))
    assert {f.name for f in dataclasses.fields(settings.VqaSettings)} <= names


@pytest.mark.parametrize("module,kind", [("configs/base.py", settings.TrainSettings),
                                         ("configs/eval.py", settings.EvalSettings)])
def test_config_docstring_fields_exist(module, kind):
    with open(os.path.join(REPO_ROOT, module), encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    block = re.split(r"^Fields\b.*?:\n", doc, maxsplit=1, flags=re.M | re.S)[1]
    block = block.split("\n\nEvery method config takes", 1)[0]  # base.py's options follow
    documented = set(re.findall(r"^  ([a-z_]+(?:\.[a-z_]+)?)\b", block, re.M))
    fields = {f.name for f in dataclasses.fields(kind)}
    top = {name.split(".")[0] for name in documented}
    assert top <= fields, top - fields
    assert fields <= top, fields - top  # every top-level field and section is documented
    for name in documented:
        if "." in name:
            section, field = name.split(".")
            section_kind = typing.get_type_hints(kind)[section]
            if isinstance(section_kind, type) and issubclass(section_kind, settings.Section):
                assert field in {f.name for f in dataclasses.fields(section_kind)}, name


def test_evaluation_names_and_choices_have_one_home():
    from evals import run_suite
    from medclip_jax.evaluation import linear_probe as lp_eval
    from medclip_jax.evaluation import linear_probe, zero_shot
    assert tuple(run_suite.EVALUATIONS) == settings.EVALUATIONS
    assert lp_eval.FEATURE_KINDS is settings.PROBE_FEATURES
    assert zero_shot.UNCERTAIN_POLICIES is settings.UNCERTAIN_POLICIES
    probe, section = linear_probe.ProbeSettings(), settings.LinearProbeSettings()
    assert (probe.l2_grid, probe.max_iterations, probe.tolerance, probe.standardize) == \
        (section.l2_grid, section.max_iterations, section.tolerance, section.standardize)


def test_evals_readme_lists_every_linear_probe_field_with_its_defaults():
    with open(os.path.join(REPO_ROOT, "evals", "README.md"), encoding="utf-8") as f:
        text = f.read()
    paragraph = text.split("Config (`config.linear_probe`):", 1)[1].split("\n\n", 1)[0]
    named = set(re.findall(r"`([a-z_0-9]+)`", paragraph))
    section = settings.LinearProbeSettings()
    assert {f.name for f in dataclasses.fields(section)} <= named
    assert f"`max_iterations` ({section.max_iterations})" in paragraph
    assert section.tolerance == 1e-4 and "`tolerance` (1e-4 " in paragraph
    assert section.l2_grid[0] == 1e-6 and section.l2_grid[-1] == 1 and "1e-6 … 1" in paragraph
