"""Every configured evaluation of one checkpoint, in one process, into one results file.

    python -m evals.run_suite --workdir runs/clip_demo [--step N] [--config configs/eval.py:demo]

The model is restored once; then each evaluation of ``config.suite.evaluations`` (zero_shot,
retrieval, linear_probe, vqa: ``evals/<name>.py``) runs over its configured datasets
(``config.<name>.datasets``) by calling that module's ``evaluate(loaded, data_dir, config)``
with a config naming one dataset at a time. Nothing missing is fatal:

* a dataset, dataset config or split that is not in the data_dir is skipped, with the reason
  (the folder looked for and what is there, or the splits it has);
* an evaluation whose module is not installed, or has no ``evaluate``, is skipped for each of
  its datasets ("evaluation not available");
* an evaluation with no datasets configured is listed as skipped;
* a dataset whose evaluation fails with a user error (e.g. no zero-shot tasks in its metadata)
  is listed with the message, the others still run; the command then exits non-zero.

With ``config.suite.strict`` (the ``rehearsal`` preset) a skipped dataset also makes the
command exit non-zero once everything else has run: the benchmark is complete or it fails.

Presets: ``configs/eval.py:paper`` is the benchmark's 25 tasks (19 classification test sets for
zero-shot and linear probe, 4 retrieval corpora, 2 VQA sets), each run where it is built in
the data_dir and skipped otherwise; ``:demo`` (and ``:tiny``) are the synthetic dataset's.

Dataset specs are ``name[@config]/split``, or ``name[@config]`` for evaluations that name their
splits in their own section (``config.<name>.train_split`` / ``test_split``: linear probe, VQA).

Output ``<workdir>/eval/suite_step<N>.json`` (or ``config.output_dir``), rewritten after each
dataset so an interrupted suite keeps what it finished (``complete`` false)::

    {"step", "workdir", "data_dir", "method", "train_config", "eval_config",
     "datasets": {<spec>: {"version", "path"}},
     "skipped": [{"evaluation", "dataset", "reason"}],
     "results": {"zero_shot": {...}, "retrieval": {...}, "linear_probe": {...}, "vqa": {...}},
     "seconds": {<evaluation>: wall seconds}, "complete": true}

where each ``results`` section is what that evaluation's own binary writes under "results".
A markdown summary (headline metrics per result, the skipped list, the timings) is printed
and written next to it as ``suite_step<N>.md``.
"""

import importlib
import os
import time
from typing import Any, Callable

import jax
import ml_collections
from absl import flags

from evals import common
from medclip_jax.data import sources
from medclip_jax.errors import UserError
from medclip_jax.evaluation import evaluators, model_view, runner, tables

FLAGS = flags.FLAGS

# Evaluation name -> the library module whose `evaluate(view, data_dir, config)` runs it
# (`medclip_jax.evaluation.evaluators`).
EVALUATIONS = {name: evaluate.__module__ for name, evaluate in evaluators.EVALUATORS.items()}
# Headline metrics of the markdown summary, in column order (those present are shown).
HEADLINE = ("num_samples", "top1", "balanced_accuracy", "macro_f1", "macro_auroc",
            "mean_auroc", "num_labels", "R@1", "R@5", "R@10", "mean_rank", "median_rank",
            "accuracy", "closed_accuracy", "open_accuracy", "majority_closed_accuracy",
            "num_unseen_answers")

Evaluate = Callable[[model_view.ModelView, str, ml_collections.ConfigDict], dict[str, Any]]


def check_evaluations(config: ml_collections.ConfigDict) -> list[str]:
    """config.suite.evaluations, checked against the known evaluation names."""
    names = list(common.settings(config).suite.evaluations)
    unknown = [n for n in names if n not in EVALUATIONS]
    if unknown:  # settings.EVALUATIONS lists the same names
        raise UserError(f"config.suite.evaluations: unknown evaluation(s) {', '.join(unknown)}; "
                        f"choose from {', '.join(EVALUATIONS)}")
    return names


def import_evaluation(name: str) -> tuple[Evaluate | None, str]:
    """The evaluation's `evaluate` function, or None and why it is not available.

    Only the module itself being absent counts as "not available"; an import error inside
    an existing module is a bug and propagates.
    """
    module_name = EVALUATIONS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            return None, f"evaluation not available (no module {module_name})"
        raise
    evaluate = getattr(module, "evaluate", None)
    if not callable(evaluate):
        return None, f"evaluation not available ({module_name} has no evaluate())"
    return evaluate, ""


def split_names(expression: str) -> list[str]:
    """The split names of a TFDS split expression: "train[:90%]+test" -> [train, test]."""
    return [part.split("[", 1)[0] for part in expression.split("+")]


def dataset_name_and_splits(spec: str, section: ml_collections.ConfigDict,
                            field: str) -> tuple[str, list[str]]:
    """(``name[@config]``, the split names the evaluation reads) of a dataset spec."""
    name, expressions = evaluators.dataset_splits(spec, section, field)
    return name, [split for expression in expressions for split in split_names(expression)]


def missing_reason(data_dir: str, spec: str, section: ml_collections.ConfigDict,
                   field: str) -> str | None:
    """Why a dataset spec cannot be evaluated from this data_dir, or None if it can."""
    name, splits = dataset_name_and_splits(spec, section, field)
    try:
        path = sources.dataset_dir(data_dir, name)
    except UserError as e:
        return f"dataset not found: {e}"
    have = list(sources.read_builder(path).info.splits.keys())
    absent = [s for s in splits if s not in have]
    if absent:
        return f"split(s) {', '.join(absent)} not in {path} (splits: {', '.join(have)})"
    return None


def dataset_info(data_dir: str, spec: str, section: ml_collections.ConfigDict,
                 field: str) -> dict[str, str]:
    """The TFDS version and the folder a present dataset spec is read from."""
    name, _ = dataset_name_and_splits(spec, section, field)
    path = sources.dataset_dir(data_dir, name)
    return {"version": str(sources.read_builder(path).info.version),
            "path": os.path.abspath(path)}


def one_dataset_config(config: ml_collections.ConfigDict, name: str, spec: str, data_dir: str,
                       output_dir: str) -> ml_collections.ConfigDict:
    """A copy of the eval config whose section `name` lists only `spec`, with data_dir and
    output_dir resolved (evaluations that cache files put them under output_dir)."""
    sub = config.copy_and_resolve_references()
    with sub.unlocked():
        sub.data_dir = data_dir
        sub.output_dir = output_dir
        sub[name].datasets = (spec,)
    return sub


def jsonable(tree: Any) -> Any:
    """Config dicts (tuples, numpy scalars) -> JSON values."""
    if isinstance(tree, dict):
        return {str(k): jsonable(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [jsonable(v) for v in tree]
    if hasattr(tree, "item") and callable(tree.item):
        return tree.item()
    if tree is None or isinstance(tree, (str, int, float, bool)):
        return tree
    return str(tree)


def run_suite(loaded: model_view.ModelView, data_dir: str, config: ml_collections.ConfigDict,
              output_dir: str, workdir: str) -> tuple[dict[str, Any], str]:
    """Runs the suite (see the module docstring); returns the results dict and the JSON path."""
    names = check_evaluations(config)
    suite: dict[str, Any] = {
        "step": loaded.step, "workdir": workdir, "data_dir": os.path.abspath(data_dir),
        "method": loaded.train_config.get("method", ""),
        "train_config": jsonable(loaded.train_config.to_dict()),
        "eval_config": jsonable(config.copy_and_resolve_references().to_dict()),
        "datasets": {}, "skipped": [], "results": {name: {} for name in names},
        "seconds": {}, "complete": False}
    failures = []

    def skip(evaluation: str, dataset: str, reason: str) -> None:
        suite["skipped"].append({"evaluation": evaluation, "dataset": dataset, "reason": reason})
        print(f"[suite] skipped {evaluation} {dataset or '(no dataset)'}: {reason}", flush=True)

    for name in names:
        start = time.perf_counter()
        section = config.get(name) or ml_collections.ConfigDict()
        specs = [str(s) for s in section.get("datasets", ())]
        field = f"config.{name}.datasets"
        evaluate, unavailable = import_evaluation(name)
        if not specs:
            skip(name, "", f"no datasets configured ({field} is empty)")
        for spec in specs:
            if evaluate is None:
                skip(name, spec, unavailable)
                continue
            reason = missing_reason(data_dir, spec, section, field)
            if reason:
                skip(name, spec, reason)
                continue
            suite["datasets"].setdefault(spec, dataset_info(data_dir, spec, section, field))
            spec_start = time.perf_counter()
            try:
                results = evaluate(loaded, data_dir,
                                   one_dataset_config(config, name, spec, data_dir, output_dir))
            except UserError as e:
                failures.append(f"{name} {spec}")
                skip(name, spec, f"failed: {e}")
                continue
            suite["results"][name].update(results)
            print(f"[suite] {name} {spec}: {len(results)} result(s) in "
                  f"{time.perf_counter() - spec_start:.1f} s", flush=True)
            write(output_dir, suite)
        suite["seconds"][name] = round(time.perf_counter() - start, 2)
        print(f"[suite] {name}: {suite['seconds'][name]:.1f} s", flush=True)
    suite["complete"] = True
    path = write(output_dir, suite)
    if common.settings(config).suite.strict and suite["skipped"] and not failures:
        print(summary(suite), flush=True)
        raise UserError(f"config.suite.strict: {len(suite['skipped'])} evaluation(s) skipped "
                        f"({'; '.join(skip_names(suite))}); the reasons are under 'skipped' "
                        f"in {path}")
    if failures:
        print(summary(suite), flush=True)
        raise UserError(f"{len(failures)} evaluation(s) failed ({'; '.join(failures)}); the "
                        f"others are in {path}, the reasons under 'skipped'")
    return suite, path


def skip_names(suite: dict[str, Any]) -> list[str]:
    return [f"{s['evaluation']} {s['dataset'] or '(no dataset)'}" for s in suite["skipped"]]


def write(output_dir: str, suite: dict[str, Any]) -> str:
    return runner.write_results(output_dir, f"suite_step{suite['step']}", suite, summary(suite))


def result_rows(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Result key -> metrics, with retrieval's ``i2t_*`` / ``t2i_*`` split into two rows."""
    rows: dict[str, dict[str, Any]] = {}
    for key, metrics in results.items():
        directions = {d: {k[len(d) + 1:]: v for k, v in metrics.items() if k.startswith(d + "_")}
                      for d in ("i2t", "t2i")}
        if any(directions.values()):
            for direction, inner in directions.items():
                rows[f"{key}:{direction}"] = inner
        else:
            rows[key] = metrics
    return rows


def headline_table(results: dict[str, dict[str, Any]]) -> str:
    rows = result_rows(results)
    kshot = sorted({k for m in rows.values() for k in m
                    if k.startswith("k") and k.endswith("/top1_mean")},
                   key=lambda k: int(k[1:].split("/")[0]))
    columns = [c for c in HEADLINE if any(c in m for m in rows.values())] + kshot
    body = [[key, *[m.get(c, "—") for c in columns]] for key, m in rows.items()]
    return tables.markdown_table(["result", *columns], body)


def summary(suite: dict[str, Any]) -> str:
    """The markdown summary: one headline table per evaluation, skipped, seconds."""
    lines = [f"# Evaluation suite: {suite['workdir']}, step {suite['step']}, method "
             f"{suite['method'] or '?'}", ""]
    for name, results in suite["results"].items():
        seconds = suite["seconds"].get(name)
        lines.append(f"## {name}" + (f" ({seconds:.1f} s)" if seconds is not None else ""))
        lines += ["", headline_table(results) if results else "(no results)", ""]
    if suite["datasets"]:
        lines += ["## datasets", "", tables.markdown_table(
            ["spec", "version", "path"],
            [[s, d["version"], d["path"]] for s, d in suite["datasets"].items()]), ""]
    if suite["skipped"]:
        lines += ["## skipped", "", tables.markdown_table(
            ["evaluation", "dataset", "reason"],
            [[s["evaluation"], s["dataset"], s["reason"]] for s in suite["skipped"]]), ""]
    total = sum(suite["seconds"].values())
    lines.append(f"Total {total:.1f} s" + ("" if suite["complete"] else " (incomplete)"))
    return "\n".join(lines)


def run() -> None:
    start = time.perf_counter()
    loaded, data_dir, output_dir = common.load()
    print(f"[suite] restored step {loaded.step} in {time.perf_counter() - start:.1f} s",
          flush=True)
    suite, path = run_suite(loaded, data_dir, FLAGS.config, output_dir, FLAGS.workdir)
    if jax.process_index() == 0:
        print(summary(suite) + f"\n(written to {path} and {os.path.splitext(path)[0]}.md)",
              flush=True)


if __name__ == "__main__":
    common.run_binary(run)
