"""The evaluators by name: each is `evaluate(view, data_dir, config) -> {key: {metric: value}}`.

`view` is a `model_view.ModelView` (from a checkpoint or from the running train state) and
`config` the eval config or its parsed `settings.EvalSettings`. `evals/run_suite.py` runs them
on a checkpoint; training runs those named in ``config.eval.evaluators`` every N steps.
"""

from typing import Any, Callable

from medclip_jax import settings
from medclip_jax.evaluation import linear_probe, model_view, retrieval, zero_shot

Evaluate = Callable[[model_view.ModelView, str, Any], dict[str, dict[str, Any]]]

EVALUATORS: dict[str, Evaluate] = {"zero_shot": zero_shot.evaluate,
                                   "retrieval": retrieval.evaluate,
                                   "linear_probe": linear_probe.evaluate}

# Those with a section in the training config's ``config.eval`` (settings cannot import this).
if not set(settings.TRAINING_EVALUATORS) <= set(EVALUATORS):
    raise AssertionError("settings.TRAINING_EVALUATORS must be keys of EVALUATORS")


def get(name: str) -> Evaluate:
    """The evaluator called `name` (names are checked when the config is parsed)."""
    return EVALUATORS[name]
