"""`train_and_evaluate(config, workdir)`: the whole training run, resumable from its workdir.

Phases: validate the config -> mesh -> tokenizer and input pipeline -> model and sharded init ->
optimizer -> resume from the latest checkpoint, if any -> train loop (log, validate, checkpoint)
-> final checkpoint. The train step is one `jax.jit` with explicit in/out shardings and the
state donated.
"""

import contextlib
import dataclasses
import functools
import time
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from medclip_jax import (bad_records, checkpointing, methods, models, optim, preemption,
                         sharding, workdir_lock)
from medclip_jax.data import pipeline, sources, tokenizers
from medclip_jax.errors import UserError
from medclip_jax.evaluation import embed, evaluators, fields, model_view, retrieval
from medclip_jax.losses import clip as clip_losses
from medclip_jax.metric_logging import MetricWriter, Progress, format_duration
from medclip_jax.models import DualEncoder, build_model, presets
from medclip_jax.models import params as model_params
from medclip_jax.models.dual_encoder import clamped_scale
from medclip_jax.pretrained import init as init_lib
from medclip_jax.settings import OptimSettings, TrainSettings


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    method_state: Any  # e.g. DeCLIP's text queue; {} for stateless methods


def rest_of_state(state: TrainState) -> dict[str, Any]:
    """Everything but the params: saved as the checkpoint's `train_state` item."""
    return {"step": state.step, "opt_state": state.opt_state,
            "method_state": state.method_state}


def model_inputs(batch: dict[str, Any], method: str) -> dict[str, Any]:
    """The batch entries the method's model and loss read (`methods.batch_keys`)."""
    return {k: batch[k] for k in methods.batch_keys(method) if k in batch}


def validate_config(config: ml_collections.ConfigDict) -> TrainSettings:
    """Parses the config once into its settings; fails at start-up, naming the field, on
    unknown keys, wrong types and values that cannot work."""
    parsed = TrainSettings.from_config(config)
    methods.check_loss_kwargs(config.method, dict(config.loss))
    init_lib.check_init_config(config)
    return parsed


def model_config_with_vocab(model_config: ml_collections.ConfigDict,
                            tokenizer: tokenizers.Tokenizer) -> ml_collections.ConfigDict:
    """The text vocabulary comes from the tokenizer unless the config fixes it (<= 0: take it)."""
    model_config = ml_collections.ConfigDict(model_config.to_dict())
    if model_config.text.vocab_size <= 0:
        model_config.text.vocab_size = tokenizer.vocab_size
    elif model_config.text.vocab_size < tokenizer.vocab_size:
        raise UserError(f"config.model.text.vocab_size={model_config.text.vocab_size} is smaller "
                        f"than the tokenizer's vocabulary ({tokenizer.vocab_size})")
    return model_config


def init_params(model: DualEncoder, model_config: ml_collections.ConfigDict, rng: jax.Array,
                shardings: Any) -> Any:
    """Initialises params directly into their shardings (never whole on one device)."""
    init = functools.partial(models.init_params, model,
                             image_size=model_config.image.image_size,
                             max_len=model_config.text.max_len)
    return jax.jit(init, out_shardings=shardings)(rng)


def split_microbatches(batch: dict[str, jax.Array], count: int, mesh: Mesh | None = None
                       ) -> dict[str, jax.Array]:
    """[B, ...] -> [count, B / count, ...], each micro-batch still split over the data axes.

    Row r of micro-batch m is global row m + count * r, so every device keeps its own rows.
    """
    def split(x):
        x = x.reshape(x.shape[0] // count, count, *x.shape[1:]).swapaxes(0, 1)
        if mesh is None:
            return x
        return jax.lax.with_sharding_constraint(
            x, NamedSharding(mesh, P(None, sharding.BATCH_AXES)))

    return jax.tree.map(split, batch)


def merge_microbatches(tree: Any, count: int) -> Any:
    """Inverse of `split_microbatches` for stacked outputs; stacked scalars are taken once.

    Per-example outputs stack to [count, b, ...] (>= 2 dims); a scalar output (the logit scale,
    the same in every micro-batch) stacks to [count].
    """
    def merge(x):
        if x.ndim == 1:
            return x[0]
        return x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])

    return jax.tree.map(merge, tree)


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(x.dtype, jnp.inexact)


def float_leaves(tree: Any) -> list[jax.Array]:
    """The differentiable leaves of a tree (masks and ids are integer)."""
    return [x for x in jax.tree.leaves(tree) if _is_float(x)]


def replace_float_leaves(tree: Any, new_leaves: list[jax.Array]) -> Any:
    leaves, treedef = jax.tree.flatten(tree)
    replacements = iter(new_leaves)
    return jax.tree.unflatten(treedef, [next(replacements) if _is_float(x) else x
                                        for x in leaves])


def split_trainable(params: Any, frozen: Any | None
                    ) -> tuple[list[jax.Array], Callable[[list], Any], Callable[[list], Any]]:
    """(the trainable leaves, `merge`: trainable leaves -> the whole param tree, `full`:
    their gradients -> a grads tree with zeros at the frozen leaves).

    Differentiating only the trainable leaves leaves the frozen ones constants of the
    gradient computation, so no cotangent is computed for a subtree that feeds nothing
    trainable: a locked tower costs its forward pass only.
    """
    leaves, treedef = jax.tree.flatten(params)
    mask = [False] * len(leaves) if frozen is None else [bool(f) for f in
                                                         treedef.flatten_up_to(frozen)]

    def fill(trainable: list, frozen_leaf: Callable[[jax.Array], jax.Array]) -> Any:
        it = iter(trainable)
        return treedef.unflatten([frozen_leaf(leaf) if f else next(it)
                                  for leaf, f in zip(leaves, mask)])

    trainable = [leaf for leaf, f in zip(leaves, mask) if not f]
    return (trainable, lambda t: fill(t, lambda leaf: leaf),
            lambda g: fill(g, jnp.zeros_like))


def make_grad_fn(model: DualEncoder, loss_fn: Callable, grad_accum_steps: int = 1,
                 mesh: Mesh | None = None, frozen: Any | None = None) -> Callable:
    """`(params, method_state, batch, rng) -> ((loss, (metrics, outputs)), grads)`.

    `loss_fn(outputs, method_state) -> (loss, metrics)` (see `methods.bind_loss`) sees the whole
    global batch. `frozen` (`optim.frozen_mask`): leaves that are not differentiated at all;
    their gradients are zeros.

    With `grad_accum_steps > 1` the loss still sees the whole global batch (every negative),
    while activations are only ever kept for one micro-batch: a gradient-free forward pass
    embeds each micro-batch, the loss and its gradient w.r.t. the embeddings are computed on
    the full batch, then each micro-batch is run again and back-propagated with its slice of
    those embedding gradients (the "gradient cache" scheme), and the param gradients summed.
    Loss-only inputs (the caption hashes) are split and merged with the embeddings, so
    duplicate captions are found across the whole global batch too.
    """

    def forward(params, batch, rng):
        return model.apply({"params": params}, batch, train=True, rngs={"dropout": rng},
                           method=DualEncoder.apply_batch)

    def full_batch_grads(params, method_state, batch, rng):
        trainable, merge, full = split_trainable(params, frozen)

        def compute_loss(trainable):
            outputs = forward(merge(trainable), batch, rng)
            loss, metrics = loss_fn(outputs, method_state)
            return loss, (metrics, outputs)

        value, grads = jax.value_and_grad(compute_loss, has_aux=True)(trainable)
        return value, full(grads)

    def accumulated_grads(params, method_state, batch, rng):
        trainable, merge, full = split_trainable(params, frozen)
        micro = split_microbatches(batch, grad_accum_steps, mesh)
        micro_rngs = jax.random.split(rng, grad_accum_steps)
        outputs = jax.lax.map(lambda xs: forward(params, xs[0], xs[1]), (micro, micro_rngs))
        merged = jax.lax.stop_gradient(merge_microbatches(outputs, grad_accum_steps))
        (loss, metrics), output_grads = jax.value_and_grad(
            lambda leaves: loss_fn(replace_float_leaves(merged, leaves), method_state),
            has_aux=True)(float_leaves(merged))
        # Each micro-batch gets its rows of the embedding gradients; a shared scalar's
        # gradient is split evenly, since every micro-batch's forward pass produces it.
        micro_output_grads = [
            jnp.broadcast_to(g / grad_accum_steps, (grad_accum_steps,)) if g.ndim == 0
            else split_microbatches({"g": g}, grad_accum_steps, mesh)["g"]
            for g in output_grads]

        def add_micro_grads(total, xs):
            micro_batch, micro_rng, cotangent = xs
            _, vjp = jax.vjp(lambda t: float_leaves(forward(merge(t), micro_batch, micro_rng)),
                             trainable)
            return jax.tree.map(jnp.add, total, vjp(cotangent)[0]), None

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        grads, _ = jax.lax.scan(add_micro_grads, zeros, (micro, micro_rngs, micro_output_grads))
        return (loss, (metrics, merged)), full(grads)

    return accumulated_grads if grad_accum_steps > 1 else full_batch_grads


def make_train_step(tx: optax.GradientTransformation, schedule: optax.Schedule,
                    grad_fn: Callable,
                    update_method_state: Callable[[Any, Any], Any] = lambda s, o: s
                    ) -> Callable:
    """The pure step `(state, batch, rng) -> (state, metrics)`.

    The method state (e.g. a queue of past embeddings) is updated after the loss has used it,
    from this step's outputs without gradients.
    """

    def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
        (loss, (metrics, outputs)), grads = grad_fn(state.params, state.method_state, batch,
                                                    rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        method_state = update_method_state(state.method_state, jax.lax.stop_gradient(outputs))
        metrics = {**metrics, "loss": loss, "logit_scale": outputs.logit_scale,
                   "learning_rate": schedule(state.step), "grad_norm": optax.tree.norm(grads)}
        if getattr(outputs, "logit_bias", None) is not None:
            metrics["logit_bias"] = outputs.logit_bias
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             method_state=method_state), metrics

    return train_step


def init_state_and_steps(config: ml_collections.ConfigDict, models: dict[str, DualEncoder],
                         mesh: Mesh, total_steps: int, rng: jax.Array,
                         optim_settings: OptimSettings | None = None
                         ) -> tuple[TrainState, dict[str, Callable]]:
    """The sharded initial state and, per entry of `models` (variants of one model with the
    same params, e.g. FLIP's masked and whole-image towers), the train step jitted for that
    state (in/out shardings, donation). Params are initialised by the first model.
    `optim_settings`: parsed ``config.optim`` (parsed here when not given)."""
    model = next(iter(models.values()))
    p_shardings = model_params.param_shardings(model, config, mesh)
    params = init_lib.apply_init(init_params(model, config.model, rng, p_shardings), config)
    optim_settings = optim_settings or OptimSettings.from_config(config.optim)
    tx, schedule = optim.make_optimizer(optim_settings, params, total_steps)
    opt_shardings = sharding.mirrored_shardings(jax.eval_shape(tx.init, params), params,
                                                p_shardings, mesh)
    replicated = sharding.replicated(mesh)
    method_state = jax.device_put(
        methods.init_method_state(config.method, config.loss, config.model.embed_dim),
        replicated)
    state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated),
                       params=params, opt_state=jax.jit(tx.init, out_shardings=opt_shardings)(params),
                       method_state=method_state)
    state_shardings = TrainState(step=replicated, params=p_shardings, opt_state=opt_shardings,
                                 method_state=jax.tree.map(lambda _: replicated, method_state))
    frozen = optim.frozen_mask(params, optim_settings)
    loss_fn = methods.bind_loss(config.method, config.loss, mesh)
    update = methods.bind_state_update(config.method, config.loss)

    def jit_step(variant: DualEncoder) -> Callable:
        grad_fn = make_grad_fn(variant, loss_fn, config.grad_accum_steps, mesh, frozen)
        return jax.jit(make_train_step(tx, schedule, grad_fn, update),
                       in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated),
                       out_shardings=(state_shardings, replicated), donate_argnums=(0,))

    return state, {name: jit_step(variant) for name, variant in models.items()}


def init_state_and_step(config: ml_collections.ConfigDict, model: DualEncoder, mesh: Mesh,
                        total_steps: int, rng: jax.Array,
                        optim_settings: OptimSettings | None = None
                        ) -> tuple[TrainState, Callable]:
    """`init_state_and_steps` for one model: (state, its jitted train step)."""
    state, steps = init_state_and_steps(config, {"train": model}, mesh, total_steps, rng,
                                        optim_settings)
    return state, steps["train"]


@dataclasses.dataclass
class Run:
    """Everything built from the config that the loop needs."""
    config: ml_collections.ConfigDict
    settings: TrainSettings
    mesh: Mesh
    model: DualEncoder
    tokenizer: tokenizers.Tokenizer
    state: TrainState
    train_step: Callable
    total_steps: int
    data_iter: Iterator
    #: FLIP's unmasked tuning (`config.unmasked_tuning_steps`): the step on whole images
    #: (None: every step masks as the model says).
    unmasked_step: Callable | None = None

    @property
    def unmasked_from(self) -> int | None:
        """The 0-based index of the first whole-image step (None: no unmasked tuning)."""
        if self.unmasked_step is None:
            return None
        return self.total_steps - self.settings.unmasked_tuning_steps

    def step_fn(self, step: int) -> Callable:
        """The jitted train step for 0-based step index `step`."""
        if self.unmasked_step is not None and step >= self.unmasked_from:
            return self.unmasked_step
        return self.train_step


def resolve_model(config: ml_collections.ConfigDict
                  ) -> tuple[ml_collections.ConfigDict, tokenizers.Tokenizer, DualEncoder]:
    """(a resolved copy of the config with the tokenizer's vocabulary, tokenizer, model)."""
    tokenizer = tokenizers.load_tokenizer(config.data.tokenizer)
    if pipeline.data_settings(config.data).mlm.enabled:
        tokenizer = tokenizers.with_mask_token(tokenizer)
    config = ml_collections.ConfigDict(config.to_dict())
    config.model = model_config_with_vocab(config.model, tokenizer)
    return config, tokenizer, build_model(config.model, config.method)


def unmasked_tuning_model(config: ml_collections.ConfigDict, model: DualEncoder,
                          settings: TrainSettings, total_steps: int) -> DualEncoder:
    """The model for FLIP's unmasked tuning phase: the same params, every patch kept."""
    steps = settings.unmasked_tuning_steps
    if presets.token_keep_fraction(config.model) >= 1.0:
        raise UserError(f"config.unmasked_tuning_steps={steps} needs "
                        f"config.model.image.token_keep_fraction < 1 (FLIP's token dropping): "
                        f"with every patch kept there is nothing to tune without masking")
    if steps >= total_steps:
        raise UserError(f"config.unmasked_tuning_steps={steps} must be fewer than the run's "
                        f"{total_steps} steps")
    return model.clone(image=model.image.clone(token_keep_fraction=1.0))


def check_evaluator_datasets(settings: TrainSettings) -> None:
    """Every dataset split a scheduled evaluator reads exists (a one-line error naming the
    field now, not after the first stretch of training)."""
    for name, _ in settings.eval.schedule():
        field = f"config.eval.{name}.datasets"
        section = getattr(settings.eval, name)
        for spec in section.datasets:
            dataset, splits = evaluators.dataset_splits(spec, section, field)
            for split in splits:
                try:
                    sources.num_records(settings.data.data_dir, dataset, split)
                except UserError as e:
                    raise UserError(f"{field}: {spec}: {e}") from None


def setup(config: ml_collections.ConfigDict, workdir: str) -> tuple[Run, checkpointing.Checkpointer]:
    """Builds the run from the config; restores from the workdir's latest checkpoint if any."""
    run_settings = validate_config(config)
    batch_size, accum = run_settings.batch_size, run_settings.grad_accum_steps
    mesh = sharding.make_mesh(run_settings.mesh.axis_sizes())
    sharding.check_batch_size(batch_size, mesh)
    if batch_size % (accum * sharding.data_parallel_size(mesh)):
        raise UserError(f"config.grad_accum_steps={accum}: the batch size "
                        f"{batch_size} must split into that many micro-batches, each "
                        f"divisible by the data-parallel size {sharding.data_parallel_size(mesh)}")
    config, tokenizer, model = resolve_model(config)

    num_examples = pipeline.num_examples(run_settings.data, run_settings.data.train_mixture)
    if run_settings.eval.every_steps > 0:  # Fail now, not after the first stretch of training.
        entry = sources.parse_mixture(run_settings.eval.split, field="config.eval.split")[0]
        sources.num_records(run_settings.data.data_dir, entry.name, entry.split)
    check_evaluator_datasets(run_settings)
    total_steps = optim.total_train_steps(num_examples, run_settings.num_epochs, batch_size)
    if run_settings.max_steps > 0:
        total_steps = min(total_steps, run_settings.max_steps)

    models = {"train": model}
    if run_settings.unmasked_tuning_steps:
        models["unmasked"] = unmasked_tuning_model(config, model, run_settings, total_steps)
    state, steps = init_state_and_steps(
        config, models, mesh, total_steps,
        jax.random.fold_in(jax.random.key(run_settings.seed), 0), run_settings.optim)

    def make_data_iter() -> Iterator:
        return pipeline.make_train_iterator(
            run_settings.data, image_size=config.model.image.image_size,
            max_len=config.model.text.max_len, tokenizer=tokenizer,
            global_batch_size=batch_size, process_index=jax.process_index(),
            process_count=jax.process_count(), seed=run_settings.seed)

    data_iter = make_data_iter()
    checkpointer = checkpointing.Checkpointer(workdir,
                                              max_to_keep=run_settings.checkpoint.max_to_keep)
    if checkpointer.latest_step() is not None:
        state, data_iter = resume(checkpointer, state, data_iter, make_data_iter)

    run = Run(config=config, settings=run_settings, mesh=mesh, model=model, tokenizer=tokenizer,
              state=state, train_step=steps["train"], total_steps=total_steps,
              data_iter=data_iter, unmasked_step=steps.get("unmasked"))
    return run, checkpointer


def resume(checkpointer: checkpointing.Checkpointer, state: TrainState, data_iter: Iterator,
           make_data_iter: Callable[[], Iterator]) -> tuple[TrainState, Iterator]:
    """The state and data position of the newest readable checkpoint. Damaged ones (unreadable
    items, NaN or Inf values) are moved aside with one line each; with none left, the fresh
    `state` and a fresh iterator (a damaged step's data item may have been read into
    `data_iter`)."""
    abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                 sharding=x.sharding), state)
    restored = checkpointer.restore_newest_readable(
        abstract_state.params, rest_of_state(abstract_state), data_iter,
        report=lambda line: print(line, flush=True))
    if restored is None:
        print(f"No readable checkpoint left in {checkpointer.directory}: training from "
              f"scratch", flush=True)
        return state, make_data_iter()
    _, params, rest = restored
    return TrainState(step=rest["step"], params=params, opt_state=rest["opt_state"],
                      method_state=rest["method_state"]), data_iter


def step_rng(seed: int, step: int) -> jax.Array:
    """Per-step randomness depends on (seed, step) only, so a resumed run repeats it exactly."""
    return jax.random.fold_in(jax.random.key(seed), step + 1)


def validate(run: Run, state: TrainState) -> dict[str, float]:
    """Val loss and retrieval recall on the first val examples.

    The val loss is the CLIP InfoNCE in train-batch-sized chunks for every method, so runs of
    different methods can be compared on one number. The split's texts are its own caption
    field (`fields.caption_field`; the first caption of a list), not config.data.caption_field.
    """
    config, settings = run.config, run.settings
    view = model_view.from_train_state(run, state)
    params = view.params
    entry = sources.parse_mixture(settings.eval.split, field="config.eval.split")[0]
    available = sources.read_builder(
        sources.dataset_dir(settings.data.data_dir, entry.name)).info.features.keys()
    caption_field = fields.caption_field(entry.name, available)
    batches = pipeline.make_eval_iterator(
        settings.data.data_dir, entry.name, entry.split,
        image_size=config.model.image.image_size, max_len=config.model.text.max_len,
        tokenizer=run.tokenizer, global_batch_size=settings.batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        data_config=settings.data, image_field=fields.image_field(entry.name, available),
        text_field=caption_field)
    max_batches = max(1, -(-settings.eval.max_examples // settings.batch_size))
    out = embed.embed_batches(run.model, params, batches, run.mesh, max_batches=max_batches)
    image_emb, text_emb = out["image_emb"], out["text_emb"]
    scale = clamped_scale(params["logit_scale"], config.model.max_logit_scale)
    chunk_losses = [
        clip_losses.clip_loss(image_emb[i:i + settings.batch_size],
                              text_emb[i:i + settings.batch_size], scale)[0]
        for i in range(0, len(image_emb), settings.batch_size)]
    # The retrieval evaluator's computation, over each embedded record's first caption (the one
    # its val loss pairs with the image); identical captions are one text.
    annotations = sources.load_annotations(settings.data.data_dir, entry.name, entry.split,
                                           fields=(caption_field,))
    captions = [c if isinstance(c, str) else (c[0] if len(c) else "")
                for c in np.asarray(annotations[caption_field])[out["index"]]]
    metrics = retrieval.caption_retrieval_metrics(
        image_emb, [[c] for c in captions],
        lambda texts: model_view.embed_texts(view, texts, settings.batch_size), settings.eval.ks)
    keep = {k: v for k, v in metrics.items() if "R@" in k}
    return {"loss": float(np.mean(chunk_losses)), **keep}


def evaluator_scalars(name: str, results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``<evaluator>/<result key>/<metric>`` for every numeric metric of an evaluator's results."""
    return {f"{name}/{key}/{metric}": float(value)
            for key, result in results.items() for metric, value in result.items()
            if isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_))}


#: The metrics of an evaluator's stdout line, where a result has them.
HEADLINE_METRICS = ("top1", "mean_auroc", "i2t_R@1", "t2i_R@1", "i2t_R@10", "t2i_R@10")


def due_evaluators(settings: TrainSettings, done: int, last: bool) -> list[str]:
    """The scheduled evaluators (``config.eval.evaluators``) that run after step `done`."""
    return [name for name, every in settings.eval.schedule() if done % every == 0 or last]


def run_evaluators(run: Run, state: TrainState, writer: MetricWriter, done: int,
                   last: bool) -> None:
    """Runs the evaluators due at this step on the train state; writes their metrics
    (``<evaluator>/...``) and one stdout line each."""
    names = due_evaluators(run.settings, done, last)
    if not names:
        return
    view = model_view.from_train_state(run, state)
    eval_settings = run.settings.eval.eval_settings(run.settings.batch_size)
    for name in names:
        start = time.perf_counter()
        results = evaluators.get(name)(view, run.settings.data.data_dir, eval_settings)
        writer.write(done, evaluator_scalars(name, results))
        headline = " ".join(f"{key} {metric} {result[metric]:.4f}"
                            for key, result in results.items() for metric in HEADLINE_METRICS
                            if metric in result)
        print(f"step {done} {name}: {headline} ({time.perf_counter() - start:.1f}s)", flush=True)


def divergence_error(what: str, done: int, checkpointer: checkpointing.Checkpointer
                     ) -> UserError:
    """The one line that stops a diverged run, naming the last good checkpoint (every saved
    one is finite: `Checkpointer.save` refuses NaN/Inf). Closes the checkpointer first, so
    that the step it names is on disk."""
    checkpointer.close()
    latest = checkpointer.latest_step()
    good = (f"the last good checkpoint is step {latest}" if latest is not None
            else "no checkpoint was saved before it")
    return UserError(f"training diverged: {what} at step {done}; {good} (lower "
                     f"config.optim.learning_rate, or use float32)")


def save_checkpoint(checkpointer: checkpointing.Checkpointer, done: int, state: TrainState,
                    config: ml_collections.ConfigDict, data_iter: Iterator) -> None:
    """Saves the state after step `done`; a state holding NaN or Inf is not saved and stops
    the run (checked on the devices, at save time only)."""
    try:
        checkpointer.save(done, state.params, rest_of_state(state), config.to_dict(), data_iter)
    except checkpointing.NonFiniteState as e:
        raise divergence_error(f"{e.tensor} holds NaN or Inf (not saved)", done,
                               checkpointer) from None


@contextlib.contextmanager
def saves_finished_on_error(checkpointer: checkpointing.Checkpointer) -> Iterator[None]:
    """A UserError leaving the loop (a bad train or eval record, ...) first lets the checkpoint
    save in flight finish: exiting under it ends in an Orbax "cannot schedule new futures
    after shutdown" traceback after the one-line error."""
    try:
        yield
    except UserError:
        checkpointer.wait_until_finished()
        raise


def bad_record_log(workdir: str, settings: TrainSettings, start_step: int
                   ) -> bad_records.BadRecordLog:
    """``bad_records.jsonl`` and the ``train/bad_records`` count (``on_bad_record="skip"``)."""
    return bad_records.BadRecordLog(
        workdir, start_step, enabled=settings.data.on_bad_record == "skip",
        writer=jax.process_index() == 0, log_every_steps=settings.log_every_steps,
        checkpoint_every_steps=settings.checkpoint.every_steps)


def log_train_metrics(writer: MetricWriter, progress: Progress, pending: list[dict], done: int,
                      total_steps: int, checkpointer: checkpointing.Checkpointer,
                      extra: dict[str, float] | None = None) -> None:
    """Averages the metrics since the last log line, writes them (with `extra`, e.g. the bad
    record count), and stops on divergence."""
    logged = jax.tree.map(lambda *xs: np.mean([np.asarray(x) for x in xs]), *pending)
    if not np.isfinite(logged["loss"]):
        raise divergence_error(f"the loss is {logged['loss']}", done, checkpointer)
    values = writer.write(done, {**logged, **progress.report(done), **(extra or {})},
                          prefix="train/")
    print(f"step {done}/{total_steps} loss {values['train/loss']:.4f} "
          f"lr {values['train/learning_rate']:.2e} scale {values['train/logit_scale']:.2f} "
          f"{values['train/pairs_per_s']:.0f} pairs/s "
          f"{values['train/step_time_s'] * 1000:.0f} ms/step "
          f"eta {format_duration(values['train/eta_s'])}{bad_records.note(values)}", flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (resuming if the workdir has checkpoints) and returns the final state.

    Stops early, after saving a checkpoint, when the job receives SIGTERM or Ctrl-C; holds
    the workdir lock (`workdir_lock`) throughout, so a second trainer there refuses to start.
    """
    lock_stale_s = validate_config(config).checkpoint.lock_stale_s
    with workdir_lock.hold(workdir, lock_stale_s) as release_lock:
        return train_locked(config, workdir, release_lock)


def train_locked(config: ml_collections.ConfigDict, workdir: str,
                 release_lock: Callable[[], None]) -> TrainState:
    """`train_and_evaluate`'s body, inside the workdir lock (`release_lock` frees it before
    an abort by a second Ctrl-C)."""
    run, checkpointer = setup(config, workdir)
    config, settings = run.config, run.settings
    writer = MetricWriter(workdir)
    state = run.state
    start_step = int(state.step)
    if start_step:
        print(f"Resumed from checkpoint at step {start_step}", flush=True)
    progress = Progress(run.total_steps, start_step, settings.batch_size)
    compile_start = time.perf_counter()
    pending = []
    bad_log = bad_record_log(workdir, settings, start_step)
    with preemption.PreemptionWatcher(on_abort=release_lock) as watcher, \
            saves_finished_on_error(checkpointer):
        for step in range(start_step, run.total_steps):
            local_batch = next(run.data_iter)
            batch = sharding.to_global_batch(model_inputs(local_batch, config.method),
                                             run.mesh)
            if run.unmasked_from is not None and step == max(start_step, run.unmasked_from):
                print(f"step {step + 1}: unmasked tuning (every patch kept) for the last "
                      f"{run.total_steps - step} steps", flush=True)
            state, metrics = run.step_fn(step)(state, batch, step_rng(settings.seed, step))
            done = step + 1
            if step == start_step:
                jax.block_until_ready(metrics)
                print(f"step {done}: compiled and ran the first train step in "
                      f"{time.perf_counter() - compile_start:.1f}s", flush=True)
                progress = Progress(run.total_steps, done, settings.batch_size)
            pending.append(metrics)
            last = done == run.total_steps
            bad_log.record(local_batch, done, last)
            if done % settings.log_every_steps == 0 or last:
                log_train_metrics(writer, progress, pending, done, run.total_steps, checkpointer,
                                  bad_log.scalars())
                pending = []
            if settings.eval.every_steps > 0 and (done % settings.eval.every_steps == 0 or last):
                val = writer.write(done, validate(run, state), prefix="val/")
                print(f"step {done} validation: " +
                      " ".join(f"{k[4:]} {v:.4f}" for k, v in val.items()), flush=True)
            run_evaluators(run, state, writer, done, last)
            # One process checks every step for free; several agree at log steps (all-gather).
            check = jax.process_count() == 1 or done % settings.log_every_steps == 0
            stop = check and watcher.should_stop()
            if stop or done % settings.checkpoint.every_steps == 0 or last:
                save_checkpoint(checkpointer, done, state, config, run.data_iter)
            if stop:
                print(f"Stopped by {watcher.signal_name or 'a signal to another process'} at "
                      f"step {done}; checkpoint saved. Re-run the same command to resume.",
                      flush=True)
                break
    checkpointer.close()
    writer.close()
    return state
