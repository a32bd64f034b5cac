"""Typed settings: each config section parsed once, holding its defaults and its checks.

The config files in ``configs/`` build ml_collections ConfigDicts (users override them from the
command line); training and evaluation turn them into these frozen dataclasses once, at
start-up, and read only the dataclasses afterwards. So every default lives here, in one place,
and a mistake (an unknown key, a wrong type, an impossible value) fails before any work with one
line naming ``config.<section>.<field>``.

A section's fields are its dataclass fields; the annotation is the type a value must have
(``int`` refuses bools and floats, ``float`` takes ints, tuples are checked element-wise and
accept lists); a nested `Section` is parsed from its own sub-dict; ``Any`` passes the value
through (sections owned elsewhere: ``model``, ``loss``, ``init``).
"""

import dataclasses
import difflib
import math
import re
import typing
from typing import Any, ClassVar, Mapping

import ml_collections
import numpy as np

from medclip_jax.data.image_ops import CLIP_MEAN, CLIP_STD, ViewRecipe
from medclip_jax.data.text_ops import SELECTIONS
from medclip_jax.errors import UserError


def closest_name(name: str, choices: typing.Iterable[str]) -> str | None:
    """The choice most like `name` (difflib), or None when none is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def no_such_field(path: str, choices: typing.Iterable[str]) -> UserError:
    """`config.optim.learnin_rate: no such field; did you mean config.optim.learning_rate?`."""
    parent, _, name = path.rpartition(".")
    message = f"{path}: no such field"
    match = closest_name(name, choices)
    if match is not None:
        message += f"; did you mean {parent}.{match}?"
    return UserError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, (float, np.floating))


def _type_name(kind: Any) -> str:
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if kind is bool:
        return "True or False"
    if kind is str:
        return "a string"
    args = typing.get_args(kind)
    if args and args[-1] is Ellipsis:
        return f"a tuple, each {_type_name(args[0])}"
    return f"a tuple of {len(args)} values ({', '.join(_type_name(a) for a in args)})"


def coerce(value: Any, kind: Any, path: str) -> Any:
    """`value` as a `kind` (a field annotation), or a UserError naming `path`."""
    if kind is Any:
        return value
    if isinstance(kind, type) and issubclass(kind, Section):
        if isinstance(value, kind):
            return value
        if isinstance(value, Mapping) or hasattr(value, "keys"):
            return kind.from_config(value)
        raise UserError(f"{path} must be a section (a dict of fields), got {value!r}")
    ok = {bool: lambda v: isinstance(v, (bool, np.bool_)), int: _is_int, float: _is_number,
          str: lambda v: isinstance(v, str)}
    if kind in ok:
        if not ok[kind](value):
            raise UserError(f"{path} must be {_type_name(kind)}, got {value!r}")
        return kind(value)
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            raise UserError(f"{path} must be {_type_name(kind)}, got {value!r}")
        if args[-1] is Ellipsis:
            kinds = [args[0]] * len(value)
        elif len(value) != len(args):
            raise UserError(f"{path} must be {_type_name(kind)}, got {value!r}")
        else:
            kinds = list(args)
        try:
            return tuple(coerce(v, k, path) for v, k in zip(value, kinds))
        except UserError:
            raise UserError(f"{path} must be {_type_name(kind)}, got {value!r}") from None
    raise TypeError(f"{path}: unsupported settings annotation {kind!r}")


@dataclasses.dataclass(frozen=True)
class Section:
    """A config section: typed fields with defaults, checked on construction."""

    #: Where the section lives in the config, for messages.
    PATH: ClassVar[str] = "config"

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = coerce(getattr(self, field.name), hints[field.name],
                           f"{self.PATH}.{field.name}")
            object.__setattr__(self, field.name, value)
        self.check()

    def check(self) -> None:
        """Constraints between values (types are checked before); raises via `fail`."""

    def fail(self, name: str, rule: str) -> None:
        raise UserError(f"{self.PATH}.{name} must be {rule}, got {getattr(self, name)!r}")

    @classmethod
    def from_config(cls, node: Any) -> "Section":
        """The section from its ConfigDict (or dict; None = every default); unknown keys fail."""
        if node is None:
            return cls()
        if isinstance(node, cls):
            return node
        if isinstance(node, Section):  # e.g. a VqaSettings for its subclass
            node = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
        names = [f.name for f in dataclasses.fields(cls)]
        values = {}
        for key in node.keys():
            if key not in names:
                raise no_such_field(f"{cls.PATH}.{key}", names)
            values[key] = node[key]
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (nested sections as dicts): what a ConfigDict is built from."""
        return {f.name: (getattr(self, f.name).to_dict()
                         if isinstance(getattr(self, f.name), Section) else getattr(self, f.name))
                for f in dataclasses.fields(self)}


def section_field(kind: type) -> Any:
    """A nested section's field, defaulting to that section's defaults."""
    return dataclasses.field(default_factory=kind)


def _check_range(section: Section, name: str, low_open: bool = False, high: float | None = 1.0,
                 ) -> None:
    """(low, high) with 0 <(=) low <= high (<= `high`)."""
    low, upper = getattr(section, name)
    ok = (0 < low if low_open else 0 <= low) and low <= upper and (high is None or upper <= high)
    if not ok:
        rule = f"(low, high) with 0 {'<' if low_open else '<='} low <= high"
        section.fail(name, rule + (f" <= {high:g}" if high is not None else ""))


def _check_regex(section: Section, name: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        section.fail(name, f"a valid regular expression ({e})")


# --------------------------------------------------------------------------------------------
# Training config (configs/base.py)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptimSettings(Section):
    """``config.optim``: AdamW, linear warmup + cosine decay, clipping, decay/freeze rules."""
    PATH: ClassVar[str] = "config.optim"
    name: str = "adamw"
    learning_rate: float = 5e-4
    warmup_steps: int = -1
    warmup_fraction: float = 0.05
    end_lr_fraction: float = 0.0
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.1
    grad_clip_norm: float = 1.0
    no_decay_regex: str = r"(logit_scale|logit_bias|pos_embed|cls_token|position|token_type)"
    lr_multipliers: tuple[tuple[str, float], ...] = ()

    def check(self) -> None:
        if self.name != "adamw":
            self.fail("name", "'adamw' (the only optimizer implemented)")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            self.fail("learning_rate", "a finite number > 0")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            self.fail("warmup_fraction", "in [0, 1]")
        if not 0.0 <= self.end_lr_fraction <= 1.0:
            self.fail("end_lr_fraction", "in [0, 1]")
        for name in ("b1", "b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                self.fail(name, "in [0, 1)")
        if not self.eps > 0:
            self.fail("eps", "> 0")
        if not self.weight_decay >= 0:
            self.fail("weight_decay", ">= 0")
        if not self.grad_clip_norm >= 0:
            self.fail("grad_clip_norm", ">= 0 (0 = no clipping)")
        _check_regex(self, "no_decay_regex", self.no_decay_regex)
        for pattern, multiplier in self.lr_multipliers:
            _check_regex(self, "lr_multipliers", pattern)
            if multiplier < 0:
                self.fail("lr_multipliers", f"rules with multipliers >= 0 ({pattern!r}: "
                                            f"{multiplier})")

    def warmup(self, total_steps: int) -> int:
        """``warmup_steps`` if set (>= 0), else ``warmup_fraction`` of training.

        A warmup longer than the run is not an error: a smoke run of a preset
        (``paper``: 2000 warmup steps, ``--config.max_steps=10``) stays in warmup, as
        `optim.warmup_cosine_schedule` clips it."""
        if self.warmup_steps >= 0:
            return self.warmup_steps
        return int(round(self.warmup_fraction * total_steps))


@dataclasses.dataclass(frozen=True)
class AugmentSettings(Section):
    """``config.data.augment``: the main train image's random resized crop and flip.

    The crop scale default (0.8, 1.0) is CLIP-style light cropping; ``(1.0, 1.0)`` turns the
    crop off (shorter side resize + centre crop, as in evaluation)."""
    PATH: ClassVar[str] = "config.data.augment"
    random_crop_scale: tuple[float, float] = (0.8, 1.0)
    random_crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False  # Flips swap "left" and "right" in radiology captions.

    def check(self) -> None:
        _check_range(self, "random_crop_scale", low_open=True)
        _check_range(self, "random_crop_ratio", low_open=True, high=None)


@dataclasses.dataclass(frozen=True)
class ViewAugmentSettings(Section, ViewRecipe):
    """``config.data.view_augment``: the extra views' SimCLR recipe (`image_ops.ViewRecipe`,
    whose defaults are SLIP's)."""
    PATH: ClassVar[str] = "config.data.view_augment"

    def check(self) -> None:
        _check_range(self, "random_crop_scale", low_open=True)
        _check_range(self, "random_crop_ratio", low_open=True, high=None)
        if min(self.color_jitter) < 0 or self.color_jitter[3] > 0.5:
            self.fail("color_jitter", "(brightness, contrast, saturation, hue), all >= 0, "
                                      "hue <= 0.5")
        _check_range(self, "blur_sigma", low_open=True, high=None)
        for name in ("color_jitter_prob", "grayscale_prob", "blur_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                self.fail(name, "in [0, 1]")


@dataclasses.dataclass(frozen=True)
class MlmSettings(Section):
    """``config.data.mlm``: masked-language-model inputs (DeCLIP)."""
    PATH: ClassVar[str] = "config.data.mlm"
    enabled: bool = False
    mask_prob: float = 0.15
    max_predictions: int = 20
    selection: str = "bernoulli"

    def check(self) -> None:
        if not 0.0 < self.mask_prob <= 1.0:
            self.fail("mask_prob", "in (0, 1]")
        if self.max_predictions < 1:
            self.fail("max_predictions", "an integer >= 1")
        if self.selection not in SELECTIONS:
            self.fail("selection", f"one of {', '.join(SELECTIONS)}")


#: ``config.data.on_bad_record``: stop at an unreadable training record, or replace it.
BAD_RECORD_POLICIES = ("fail", "skip")


@dataclasses.dataclass(frozen=True)
class DataSettings(Section):
    """``config.data``: the input pipeline (`medclip_jax.data.pipeline`)."""
    PATH: ClassVar[str] = "config.data"
    data_dir: str = "data/tfds"
    train_mixture: str = "synthetic_medical/train"
    tokenizer: str = "minilm"
    augment: AugmentSettings = section_field(AugmentSettings)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    read_threads: int = 2
    prefetch_batches: int = 2
    worker_processes: int = 0
    image_field: str = "image"
    caption_field: str = "caption"
    image_views: int = 0
    view_augment: ViewAugmentSettings = section_field(ViewAugmentSettings)
    text_views: int = 0
    text_view_drop_prob: float = 0.1
    mlm: MlmSettings = section_field(MlmSettings)
    on_bad_record: str = "fail"

    def check(self) -> None:
        if self.on_bad_record not in BAD_RECORD_POLICIES:
            self.fail("on_bad_record", f"one of {', '.join(BAD_RECORD_POLICIES)}")
        if min(self.std) <= 0:
            self.fail("std", "3 values > 0")
        for name in ("read_threads", "prefetch_batches", "worker_processes", "image_views",
                     "text_views"):
            if getattr(self, name) < 0:
                self.fail(name, "an integer >= 0")
        if not 0.0 <= self.text_view_drop_prob <= 1.0:
            self.fail("text_view_drop_prob", "in [0, 1]")


@dataclasses.dataclass(frozen=True)
class ShardingSettings(Section):
    """``config.sharding``: how params are laid out on the mesh (`medclip_jax/sharding.py`);
    the optimizer state follows its params (`sharding.mirrored_shardings`).

    ``rules``: ``(regex, spec)``, the first match on a param path wins; spec ``fsdp`` splits
    the largest dimension divisible by the fsdp axis, ``replicate`` copies, or one mesh axis
    (or None) per dimension. ``fsdp_min_size``: an ``fsdp`` leaf with fewer elements stays
    replicated; the default, 65,536 (256 KiB in float32), keeps biases and norms whole (a
    ViT-B/16's largest is 3,072 elements; splitting it saves no memory worth a gather) and
    splits every ViT-B/16 and BERT-base kernel and embedding.
    """
    PATH: ClassVar[str] = "config.sharding"
    rules: tuple[tuple[str, str], ...] = ((".*", "fsdp"),)
    fsdp_min_size: int = 2 ** 16

    def check(self) -> None:
        for pattern, _ in self.rules:
            _check_regex(self, "rules", pattern)
        if self.fsdp_min_size < 0:
            self.fail("fsdp_min_size", "an integer >= 0")


@dataclasses.dataclass(frozen=True)
class MeshSettings(Section):
    """``config.mesh``: device mesh axis sizes; one may be -1 (all remaining devices)."""
    PATH: ClassVar[str] = "config.mesh"
    data: int = -1
    fsdp: int = 1

    def check(self) -> None:
        for name in ("data", "fsdp"):
            if getattr(self, name) == 0 or getattr(self, name) < -1:
                self.fail(name, "a positive integer or -1")
        if (self.data, self.fsdp).count(-1) > 1:
            self.fail("fsdp", "a positive integer when config.mesh.data is -1 (at most one "
                              "axis takes the remaining devices)")

    def axis_sizes(self) -> dict[str, int]:
        return {"data": self.data, "fsdp": self.fsdp}


@dataclasses.dataclass(frozen=True)
class CheckpointSettings(Section):
    """``config.checkpoint``: save interval, how many checkpoints to keep, and when the
    workdir lock of a vanished run counts as stale (`medclip_jax.workdir_lock`)."""
    PATH: ClassVar[str] = "config.checkpoint"
    every_steps: int = 200
    max_to_keep: int = 3
    lock_stale_s: float = 120.0

    def check(self) -> None:
        if self.every_steps < 1:
            self.fail("every_steps", "a positive integer")
        if self.max_to_keep < 1:
            self.fail("max_to_keep", "a positive integer")
        if not self.lock_stale_s >= 30:
            self.fail("lock_stale_s", "a number of seconds >= 30 (3 lock heartbeats)")


# --------------------------------------------------------------------------------------------
# Evaluation config (configs/eval.py)
# --------------------------------------------------------------------------------------------

UNCERTAIN_POLICIES = ("exclude", "negative", "positive")
EVALUATIONS = ("zero_shot", "retrieval", "linear_probe", "vqa")
FUSIONS = ("bilinear", "cross_attention")
QUESTION_FEATURES = ("tokens", "pooled")
PROBE_FEATURES = ("projected", "backbone")


@dataclasses.dataclass(frozen=True)
class ZeroShotSettings(Section):
    """``config.zero_shot`` (`evals/zero_shot.py`)."""
    PATH: ClassVar[str] = "config.zero_shot"
    datasets: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    prompts: str = ""
    multilabel_uncertain: str = "exclude"

    def check(self) -> None:
        if self.multilabel_uncertain not in UNCERTAIN_POLICIES:
            self.fail("multilabel_uncertain", f"one of {', '.join(UNCERTAIN_POLICIES)}")


@dataclasses.dataclass(frozen=True)
class RetrievalSettings(Section):
    """``config.retrieval`` (`evals/retrieval.py`)."""
    PATH: ClassVar[str] = "config.retrieval"
    datasets: tuple[str, ...] = ()
    ks: tuple[int, ...] = (1, 5, 10, 50, 200)
    block_size: int = 1024

    def check(self) -> None:
        if not self.ks or min(self.ks) < 1:
            self.fail("ks", "a non-empty tuple of positive integers")
        if self.block_size < 1:
            self.fail("block_size", "a positive integer")


@dataclasses.dataclass(frozen=True)
class LinearProbeSettings(Section):
    """``config.linear_probe`` (`evals/linear_probe.py`): an L2-regularised softmax probe on
    frozen features, its l2 picked on validation, optional k-shot draws."""
    PATH: ClassVar[str] = "config.linear_probe"
    datasets: tuple[str, ...] = ()
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str = "test"
    validation_fraction: float = 0.2
    seed: int = 0
    features: str = "projected"
    standardize: bool = True
    l2_grid: tuple[float, ...] = tuple(10.0 ** e for e in range(-6, 1))
    max_iterations: int = 1000
    tolerance: float = 1e-4
    refit: bool = True
    k_shots: tuple[int, ...] = (1, 2, 4, 8, 16)
    k_shot_seeds: int = 5
    cache_dir: str = ""

    def check(self) -> None:
        if not 0.0 < self.validation_fraction < 1.0:
            self.fail("validation_fraction", "in (0, 1)")
        if self.features not in PROBE_FEATURES:
            self.fail("features", f"one of {', '.join(PROBE_FEATURES)}")
        if not self.l2_grid or min(self.l2_grid) < 0:
            self.fail("l2_grid", "a non-empty tuple of numbers >= 0")
        if self.max_iterations < 1:
            self.fail("max_iterations", "a positive integer")
        if not self.tolerance >= 0:
            self.fail("tolerance", ">= 0")
        if self.k_shots and min(self.k_shots) < 1:
            self.fail("k_shots", "a tuple of positive integers")
        if self.k_shot_seeds < 1:
            self.fail("k_shot_seeds", "a positive integer")


@dataclasses.dataclass(frozen=True)
class VqaSettings(Section):
    """``config.vqa`` (`evals/vqa.py`): the datasets, the fusion head and its training.

    The head's fields are the `evaluation.vqa.VqaHead` module's (matched by name, `head`)."""
    PATH: ClassVar[str] = "config.vqa"
    datasets: tuple[str, ...] = ()
    train_split: str = "train"
    test_split: str = "test"
    fusion: str = "bilinear"
    question_features: str = "tokens"
    hidden_dim: int = 128
    bilinear_factor: int = 4
    num_heads: int = 4
    num_layers: int = 1
    classifier_hidden_dim: int = 256
    dropout: float = 0.1
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    max_answers: int = 0
    finetune_image: bool = False
    image_lr_multiplier: float = 0.1

    def check(self) -> None:
        if self.fusion not in FUSIONS:
            self.fail("fusion", f"one of {', '.join(FUSIONS)}")
        if self.question_features not in QUESTION_FEATURES:
            self.fail("question_features", f"one of {', '.join(QUESTION_FEATURES)}")
        for name in ("hidden_dim", "bilinear_factor", "num_heads", "num_layers",
                     "classifier_hidden_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                self.fail(name, "a positive integer")
        if self.fusion == "cross_attention" and self.hidden_dim % self.num_heads:
            self.fail("hidden_dim", f"divisible by config.vqa.num_heads={self.num_heads}")
        if self.max_answers < 0:
            self.fail("max_answers", "an integer >= 0 (0 = every train answer)")
        if not 0.0 <= self.dropout < 1.0:
            self.fail("dropout", "in [0, 1)")
        if not self.learning_rate > 0:
            self.fail("learning_rate", "> 0")
        if not self.weight_decay >= 0:
            self.fail("weight_decay", ">= 0")
        if not self.image_lr_multiplier > 0:
            self.fail("image_lr_multiplier", "> 0")

    @property
    def needs_image_tokens(self) -> bool:
        return self.fusion == "cross_attention"

    @property
    def needs_question_tokens(self) -> bool:
        return self.fusion == "cross_attention" and self.question_features == "tokens"


# --------------------------------------------------------------------------------------------
# Training config, continued: ``config.eval`` reuses the evaluation sections above
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainZeroShotSettings(ZeroShotSettings):
    """``config.eval.zero_shot``: `ZeroShotSettings` for the zero-shot evaluator in training."""
    PATH: ClassVar[str] = "config.eval.zero_shot"


@dataclasses.dataclass(frozen=True)
class TrainRetrievalSettings(RetrievalSettings):
    """``config.eval.retrieval``: `RetrievalSettings` for the retrieval evaluator in training."""
    PATH: ClassVar[str] = "config.eval.retrieval"


@dataclasses.dataclass(frozen=True)
class TrainLinearProbeSettings(LinearProbeSettings):
    """``config.eval.linear_probe``: `LinearProbeSettings` for the probe in training (its
    features are not cached unless ``cache_dir`` is set)."""
    PATH: ClassVar[str] = "config.eval.linear_probe"


@dataclasses.dataclass(frozen=True)
class TrainVqaSettings(VqaSettings):
    """``config.eval.vqa``: `VqaSettings` for the VQA evaluator in training."""
    PATH: ClassVar[str] = "config.eval.vqa"


#: The evaluators training can schedule (`medclip_jax.evaluation.evaluators.EVALUATORS`):
#: every evaluation, each with its section in ``config.eval``.
TRAINING_EVALUATORS = EVALUATIONS


@dataclasses.dataclass(frozen=True)
class ValidationSettings(Section):
    """``config.eval``: in-loop validation (val loss + retrieval recall) and the evaluators
    scheduled in the training loop.

    ``evaluators``: ``"<name>[:<every_steps>]"`` entries, e.g. ``("zero_shot:100",
    "retrieval")``; without ``:<every_steps>`` an evaluator runs every ``eval.every_steps``
    (and always after the last step). Their settings are the sections of the same name
    (``eval.zero_shot``, ``eval.retrieval``, ``eval.linear_probe``, ``eval.vqa``: the eval
    config's fields), with ``eval.fields``
    and ``eval.batch_size`` (0 = the training batch size) as in `EvalSettings`."""
    PATH: ClassVar[str] = "config.eval"
    split: str = "synthetic_medical/validation"
    every_steps: int = 200
    max_examples: int = 512
    ks: tuple[int, ...] = (1, 5, 10)
    evaluators: tuple[str, ...] = ()
    batch_size: int = 0
    fields: tuple[str, ...] = ()
    zero_shot: TrainZeroShotSettings = section_field(TrainZeroShotSettings)
    retrieval: TrainRetrievalSettings = section_field(TrainRetrievalSettings)
    linear_probe: TrainLinearProbeSettings = section_field(TrainLinearProbeSettings)
    vqa: TrainVqaSettings = section_field(TrainVqaSettings)

    def check(self) -> None:
        if self.max_examples < 1:
            self.fail("max_examples", "a positive integer")
        if not self.ks or min(self.ks) < 1:
            self.fail("ks", "a non-empty tuple of positive integers")
        if self.batch_size < 0:
            self.fail("batch_size", "an integer >= 0 (0 = the training batch size)")
        self.schedule()

    def schedule(self) -> tuple[tuple[str, int], ...]:
        """``evaluators`` parsed: (name, every_steps) pairs, checked."""
        out = []
        for entry in self.evaluators:
            name, sep, every = entry.partition(":")
            if name not in TRAINING_EVALUATORS:
                match = closest_name(name, TRAINING_EVALUATORS)
                raise UserError(f"config.eval.evaluators: no evaluator {name!r} in {entry!r}; "
                                f"choose from {', '.join(TRAINING_EVALUATORS)}"
                                + (f" (did you mean {match}?)" if match else ""))
            if not sep:
                steps = self.every_steps
            elif every.isdigit() and int(every) > 0:
                steps = int(every)
            else:
                raise UserError(f"config.eval.evaluators: {entry!r} must be '<name>' or "
                                f"'<name>:<every_steps>' with every_steps a positive integer")
            if steps < 1:
                raise UserError(f"config.eval.evaluators: {entry!r} runs every "
                                f"config.eval.every_steps={self.every_steps} steps, which is "
                                f"off; give '{name}:<every_steps>'")
            if not getattr(self, name).datasets:
                raise UserError(f"config.eval.evaluators schedules {name}, but "
                                f"config.eval.{name}.datasets is empty")
            out.append((name, steps))
        names = [name for name, _ in out]
        if len(set(names)) != len(names):
            self.fail("evaluators", "a tuple naming each evaluator at most once")
        return tuple(out)

    def eval_settings(self, train_batch_size: int) -> "EvalSettings":
        """The `EvalSettings` the scheduled evaluators read (what the binaries parse from the
        eval config)."""
        return EvalSettings(batch_size=self.batch_size or train_batch_size, fields=self.fields,
                            **{name: getattr(self, name) for name in TRAINING_EVALUATORS})


@dataclasses.dataclass(frozen=True)
class SuiteSettings(Section):
    """``config.suite`` (`evals/run_suite.py`)."""
    PATH: ClassVar[str] = "config.suite"
    evaluations: tuple[str, ...] = EVALUATIONS
    strict: bool = False

    def check(self) -> None:
        unknown = [n for n in self.evaluations if n not in EVALUATIONS]
        if unknown:
            raise UserError(f"config.suite.evaluations: unknown evaluation(s) "
                            f"{', '.join(unknown)}; choose from {', '.join(EVALUATIONS)}")


@dataclasses.dataclass(frozen=True)
class EvalSettings(Section):
    """The evaluation config: shared fields and one section per evaluation.

    ``mesh`` passes through: empty = the training config's mesh."""
    PATH: ClassVar[str] = "config"
    data_dir: str = ""
    output_dir: str = ""
    batch_size: int = 256
    mesh: Any = None
    fields: tuple[str, ...] = ()
    zero_shot: ZeroShotSettings = section_field(ZeroShotSettings)
    retrieval: RetrievalSettings = section_field(RetrievalSettings)
    linear_probe: LinearProbeSettings = section_field(LinearProbeSettings)
    vqa: VqaSettings = section_field(VqaSettings)
    suite: SuiteSettings = section_field(SuiteSettings)

    def check(self) -> None:
        if self.batch_size < 1:
            self.fail("batch_size", "a positive integer")
        if self.mesh:
            MeshSettings.from_config(self.mesh)


@dataclasses.dataclass(frozen=True)
class TrainSettings(Section):
    """The whole training config: run-level fields and the sections parsed here.

    ``model``, ``loss`` and ``init`` pass through as given (the model presets, the method's
    loss and the weight import check their own)."""
    PATH: ClassVar[str] = "config"
    method: str = "clip"
    seed: int = 0
    batch_size: int = 128
    grad_accum_steps: int = 1
    num_epochs: float = 10.0
    max_steps: int = -1
    log_every_steps: int = 20
    #: FLIP's unmasked tuning: the run's last N steps keep every patch (with
    #: config.model.image.token_keep_fraction < 1 for the steps before).
    unmasked_tuning_steps: int = 0
    loss: Any = None
    model: Any = None
    data: DataSettings = section_field(DataSettings)
    optim: OptimSettings = section_field(OptimSettings)
    mesh: MeshSettings = section_field(MeshSettings)
    sharding: ShardingSettings = section_field(ShardingSettings)
    checkpoint: CheckpointSettings = section_field(CheckpointSettings)
    eval: ValidationSettings = section_field(ValidationSettings)
    init: Any = None

    def check(self) -> None:
        for name in ("batch_size", "grad_accum_steps", "log_every_steps"):
            if getattr(self, name) < 1:
                self.fail(name, "a positive integer")
        if not self.num_epochs > 0:
            self.fail("num_epochs", "> 0")
        if self.unmasked_tuning_steps < 0:
            self.fail("unmasked_tuning_steps", "an integer >= 0")


#: Every section class, for the docs tests and the tools that list fields.
SECTIONS: tuple[type[Section], ...] = (
    TrainSettings, DataSettings, AugmentSettings, ViewAugmentSettings, MlmSettings,
    OptimSettings, MeshSettings, ShardingSettings, CheckpointSettings, ValidationSettings,
    TrainZeroShotSettings, TrainRetrievalSettings, EvalSettings,
    ZeroShotSettings, RetrievalSettings, LinearProbeSettings, VqaSettings, SuiteSettings)


def defaults(kind: type[Section]) -> dict[str, Any]:
    """The section's default values as a dict, without the pass-through (``Any``) fields."""
    hints = typing.get_type_hints(kind)
    return {name: value for name, value in kind().to_dict().items() if hints[name] is not Any}


def config_dict(kind: type[Section]) -> Any:
    """A ConfigDict of the section's defaults: what the config files start from, so a default
    is written only here."""
    return ml_collections.ConfigDict(defaults(kind))


#: Where the pass-through (``Any``) fields are defined and checked.
OWNERS = {"config.loss": "the method's loss (`medclip_jax/losses/`)",
          "config.model": "the size preset (`medclip_jax/models/presets.py`)",
          "config.init": "published weights (`medclip_jax/pretrained/init.py`)",
          "config.mesh": "empty = the training config's mesh"}


def field_rows(kind: type[Section]) -> list[tuple[str, str, Any]]:
    """(dotted config path, type, default) of every field, nested sections expanded; a
    pass-through field is listed with its owner."""
    hints = typing.get_type_hints(kind)
    default = kind()
    rows = []
    for field in dataclasses.fields(kind):
        path, hint = f"{kind.PATH}.{field.name}", hints[field.name]
        if isinstance(hint, type) and issubclass(hint, Section):
            rows += field_rows(hint)
        elif hint is Any:
            rows.append((path, "section", OWNERS[path]))
        else:
            name = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            rows.append((path, name, getattr(default, field.name)))
    return rows


def fields_markdown() -> str:
    """The field reference (``configs/FIELDS.md``): every field of the training and the
    evaluation config with its type and default, generated from the dataclasses above."""
    lines = ["# Config fields and their defaults", "",
             "Generated by `python -m medclip_jax.settings > configs/FIELDS.md` from",
             "`medclip_jax/settings.py`, the one home of these defaults (a test keeps it in sync).",
             "Presets (`configs/<method>.py:<preset>`, `configs/eval.py:<preset>`) change some.",
             ""]
    for title, kind in (("Training (`configs/base.py`, every method)", TrainSettings),
                        ("Evaluation (`configs/eval.py`)", EvalSettings)):
        lines += [f"## {title}", "", "| field | type | default |", "|---|---|---|"]
        lines += [f"| `{path}` | {type_name} | {default} |" if type_name == "section"
                  else f"| `{path}` | {type_name} | `{default!r}` |"
                  for path, type_name, default in field_rows(kind)]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(fields_markdown(), end="")
