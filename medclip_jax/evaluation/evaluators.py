"""The evaluators by name: each is `evaluate(view, data_dir, config) -> {key: {metric: value}}`.

`view` is a `model_view.ModelView` (from a checkpoint or from the running train state) and
`config` the eval config or its parsed `settings.EvalSettings`. `evals/run_suite.py` runs them
on a checkpoint; training runs those named in ``config.eval.evaluators`` every N steps.
"""

from typing import Any, Callable

from medclip_jax import settings
from medclip_jax.data import sources
from medclip_jax.evaluation import linear_probe, model_view, retrieval, vqa, zero_shot

Evaluate = Callable[[model_view.ModelView, str, Any], dict[str, dict[str, Any]]]

EVALUATORS: dict[str, Evaluate] = {"zero_shot": zero_shot.evaluate,
                                   "retrieval": retrieval.evaluate,
                                   "linear_probe": linear_probe.evaluate,
                                   "vqa": vqa.evaluate}

# Those with a section in the training config's ``config.eval`` (settings cannot import this).
if not set(settings.TRAINING_EVALUATORS) <= set(EVALUATORS):
    raise AssertionError("settings.TRAINING_EVALUATORS must be keys of EVALUATORS")


def get(name: str) -> Evaluate:
    """The evaluator called `name` (names are checked when the config is parsed)."""
    return EVALUATORS[name]


#: The split fields of an evaluator's section that its bare (``name[@config]``) specs read.
SPLIT_FIELDS = ("train_split", "test_split")


def dataset_splits(spec: str, section: Any, field: str) -> tuple[str, list[str]]:
    """(``name[@config]``, the split expressions read) of one of an evaluator's dataset specs:
    the spec's own split (``name/split``), else its section's ``train_split`` / ``test_split``
    (the linear probe and VQA fit on one split and score another). `section`: the
    evaluator's ConfigDict or settings; `field` names it in errors."""
    if "/" in spec:
        entry = sources.parse_entry(spec, field)
        return entry.name, [entry.split]
    return spec, [str(getattr(section, f)) for f in SPLIT_FIELDS if getattr(section, f, None)]
