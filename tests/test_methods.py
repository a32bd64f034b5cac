"""The method registry: found from the package, one config file per method, the one-line error
for an unknown method, and the report's research questions read from it."""

import importlib
import os
import pkgutil

import pytest

from conftest import REPO_ROOT
from medclip_jax import methods, train
from medclip_jax.errors import UserError


def test_every_module_of_the_package_is_a_registered_method():
    modules = {m.name for m in pkgutil.iter_modules(methods.__path__)
               if not m.name.startswith("_")}
    assert set(methods.names()) == modules
    assert methods.names() == sorted(modules)
    assert {"clip", "convirt", "cyclip", "declip", "filip", "gloria", "siglip", "slip",
            "vse", "itm"} <= modules


@pytest.mark.parametrize("name", methods.names())
def test_every_method_has_its_config_file(name):
    assert os.path.exists(os.path.join(REPO_ROOT, "configs", f"{name}.py"))
    config = importlib.import_module(f"configs.{name}").get_config("tiny")
    assert config.method == name
    methods.check_loss_kwargs(name, dict(config.loss))
    for field in methods.get(name).model_fields:
        assert field in config.model, field


def test_variants_name_config_files_of_registered_methods():
    for label, (config_file, suffix, loss) in methods.runs().items():
        config = importlib.import_module(f"configs.{config_file}").get_config("tiny" + suffix)
        assert config.method in methods.registry(), label
        methods.check_loss_kwargs(config.method, {**config.loss, **loss})
    assert methods.runs()["lit"] == ("lit", ",lock=tower", {})


def test_an_unknown_method_is_one_line_naming_the_field():
    from configs import clip
    config = clip.get_config("tiny")
    config.method = "clipp"
    with pytest.raises(UserError, match=r"^config\.method: unknown method 'clipp'; known "
                                        r"methods: \['clip', "):
        train.validate_config(config)


def test_the_reports_research_questions_come_from_the_registry():
    from medclip_jax.evaluation import report
    assert report.UNIMODAL_PAIRS == (("declip", "clip"), ("slip", "clip"))
    assert report.FINE_GRAINED_PAIRS == (("filip", "clip"), ("gloria", "clip"))
