"""The benchmark report: many runs' evaluation results -> task x method tables, family averages,
mean ranks and the three research questions' comparisons (markdown).

Input is what the evaluation binaries write into a run's output folder: the suite file
``suite_step<N>.json`` (``evals/run_suite.py``) or, where a folder has none, the per-binary
files ``<evaluation>_step<N>.json`` (``evals/zero_shot.py``, ...; the latest step of each).
One folder = one run = one column.

Every result becomes a cell ``(family, task, metric) -> value``. A family's *primary* metric
is the task's score used for averages, ranks and comparisons:

* zero-shot classification: top-1 (macro AUROC tabled too);
* multi-label zero-shot: mean AUROC over the labels;
* linear probe: top-1 (k-shot top-1 mean ± std tabled);
* retrieval, one task per dataset and direction: mean of R@1, R@5 and R@10;
* VQA: overall accuracy (closed / open tabled).

A result that is absent or NaN is *missing*: it renders as "—" and is left out of every
average, rank and difference; it never counts as 0. Averages are over the tasks a method has
(their number is shown when short of the family's); a task's rank is among the methods that
have it (higher is better, ties share the mean of their ranks); a comparison of two runs uses
only the tasks both have.

Nothing here reads checkpoints: the train config comes from the suite file, or from
``config_loader(workdir)`` (the binary passes one that reads the checkpoint).
"""

import dataclasses
import glob
import json
import math
import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from medclip_jax.errors import UserError
from medclip_jax.evaluation.tables import markdown_table

MISSING = "—"
EVALUATIONS = ("zero_shot", "linear_probe", "retrieval", "vqa")
_STEP_FILE = re.compile(r"^(?P<name>[A-Za-z0-9_]+)_step(?P<step>\d+)\.json$")
_KSHOT = re.compile(r"^k(?P<k>\d+)/top1_mean$")
_RECALL = re.compile(r"^R@(?P<k>\d+)$")
RETRIEVAL_PRIMARY_KS = (1, 5, 10)


@dataclasses.dataclass(frozen=True)
class Family:
    key: str
    title: str
    primary: str        # metric used for averages, ranks and comparisons
    primary_label: str


FAMILIES = (
    Family("zero_shot", "Zero-shot classification", "top1", "top-1"),
    Family("multilabel", "Multi-label zero-shot", "mean_auroc", "mean AUROC"),
    Family("linear_probe", "Linear probe", "top1", "top-1"),
    Family("retrieval", "Retrieval", "R@mean", "mean of R@1, R@5, R@10"),
    Family("vqa", "VQA", "accuracy", "overall accuracy"),
)
FAMILY = {f.key: f for f in FAMILIES}

BASELINE_METHOD = "clip"


def question_pairs(question: str) -> tuple[tuple[str, str], ...]:
    """(treatment, baseline) method pairs of a research question, compared at equal freezing:
    every registered method whose `Method.question` it is, against CLIP."""
    from medclip_jax import methods
    return tuple((m.name, BASELINE_METHOD) for m in methods.registry().values()
                 if m.question == question)


UNIMODAL_PAIRS = question_pairs("unimodal")
FINE_GRAINED_PAIRS = question_pairs("fine_grained")


@dataclasses.dataclass
class Run:
    """One run's results, as loaded from its output folder."""
    name: str
    method: str                      # the train config's method ("" when unknown)
    lock: str                        # image-tower freezing (see `image_lock`)
    workdir: str
    directory: str                   # the folder the result files came from
    source: str                      # "suite", "suite (incomplete)" or "per-binary"
    steps: dict[str, int]            # evaluation -> checkpoint step
    files: list[str]
    results: dict[str, dict[str, dict[str, Any]]]   # evaluation -> result key -> metrics
    train_config: dict[str, Any] | None = None
    skipped: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    datasets: dict[str, Any] = dataclasses.field(default_factory=dict)


Cells = dict[tuple[str, str, str], float]   # (family, task, metric) -> value


# ----------------------------------------------------------------------------- loading

def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"--results: cannot read {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise UserError(f"--results: {path} is not an evaluation results file "
                        f"(no 'results' object)")
    return data


def step_file(path: str) -> tuple[str, int] | None:
    """``(evaluation, step)`` of a ``<evaluation>_step<N>.json`` path, else None."""
    match = _STEP_FILE.match(os.path.basename(path))
    return (match["name"], int(match["step"])) if match else None


def _step_files_in(directory: str) -> list[str]:
    """The ``*_step<N>.json`` files of a folder, or of its ``eval/`` subfolder (a workdir)."""
    for folder in (os.path.join(directory, "eval"), directory):
        files = sorted(p for p in glob.glob(os.path.join(folder, "*_step*.json"))
                       if step_file(p))
        if files:
            return files
    return []


def expand_results(patterns: Sequence[str]) -> dict[str, list[str]]:
    """Result files per run folder, from glob patterns of files or folders.

    A pattern may name result files, eval folders or workdirs. For a pattern of suite files
    (``runs/*/eval/suite_step*.json``), folders its directory part matches that hold no suite
    file contribute their per-binary files instead, so runs evaluated binary by binary join.
    """
    by_dir: dict[str, list[str]] = {}

    def add(path: str) -> None:
        by_dir.setdefault(os.path.normpath(os.path.dirname(path)), []).append(path)

    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        found = False
        for match in matches:
            if os.path.isdir(match):
                for path in _step_files_in(match):
                    add(path)
                    found = True
            elif step_file(match):
                add(match)
                found = True
        if os.path.basename(pattern).startswith("suite_step"):
            for folder in sorted(glob.glob(os.path.dirname(pattern) or ".")):
                if os.path.isdir(folder) and not any(
                        (step_file(p) or ("",))[0] == "suite" for p in _step_files_in(folder)):
                    for path in _step_files_in(folder):
                        add(path)
                        found = True
        if not found:
            raise UserError(f"--results: {pattern!r} matches no evaluation results "
                            f"(<evaluation>_step<N>.json files, eval folders or workdirs)")
    return {d: sorted(set(files)) for d, files in sorted(by_dir.items())}


def _as_rules(rules: Any) -> list[tuple[str, float]]:
    return [(str(r[0]), float(r[1])) for r in (rules or ())]


def image_lock(train_config: Mapping[str, Any] | None) -> str:
    """How a train config's ``optim.lr_multipliers`` freeze the image tower.

    "none" (all trained), "tower" (the ViT locked, its projection trained), "all" (tower and
    projection), "<k>" (embeddings and the first k blocks, as ``configs/base.py:lock_rules``
    names them), "partial" (any other set of frozen image params) or "unknown" (no config).
    A param is frozen when the first rule whose regex ``re.search``-es its path has multiplier 0.
    """
    if not train_config:
        return "unknown"
    rules = _as_rules(train_config.get("optim", {}).get("lr_multipliers"))
    depth = int(train_config.get("model", {}).get("image", {}).get("depth", 12))

    def frozen(path: str) -> bool:
        for pattern, multiplier in rules:
            if re.search(pattern, path):
                return multiplier == 0.0
        return False

    embeddings = [frozen(f"image/{n}") for n in ("patch_embed/kernel", "cls_token",
                                                "pos_embed", "ln_pre/scale")]
    blocks = [frozen(f"image/block_{i}/mlp/fc1/kernel") for i in range(depth)]
    head, proj = frozen("image/ln_post/scale"), frozen("image_proj/kernel")
    tower = embeddings + blocks + [head]
    if not any(tower) and not proj:
        return "none"
    if all(tower):
        return "all" if proj else "tower"
    k = sum(blocks)
    if all(embeddings) and blocks == [True] * k + [False] * (depth - k) and not head \
            and not proj:
        return str(k)
    return "partial"


def load_run(directory: str, files: Sequence[str],
             config_loader: Callable[[str], dict[str, Any] | None] | None = None) -> Run:
    """The run of one folder: its latest suite file, else the latest step of each binary."""
    parsed = [(p, *step_file(p)) for p in files if step_file(p)]
    suites = [(step, p) for p, name, step in parsed if name == "suite"]
    train_config, skipped, datasets = None, [], {}
    if suites:
        step, path = max(suites)
        data = _read_json(path)
        results = {name: dict(value) for name, value in data["results"].items()
                   if isinstance(value, dict)}
        steps = {name: int(data.get("step", step)) for name in results}
        train_config = data.get("train_config")
        method = str(data.get("method") or (train_config or {}).get("method") or "")
        workdir = str(data.get("workdir") or "")
        skipped = list(data.get("skipped") or [])
        datasets = dict(data.get("datasets") or {})
        source = "suite" if data.get("complete", True) else "suite (incomplete)"
        used = [path]
    else:
        latest: dict[str, tuple[int, str]] = {}
        for path, name, step in parsed:
            if name in EVALUATIONS and (name not in latest or step > latest[name][0]):
                latest[name] = (step, path)
        results, steps, used, workdir = {}, {}, [], ""
        for name in sorted(latest):
            step, path = latest[name]
            data = _read_json(path)
            results[name] = dict(data["results"])
            steps[name] = int(data.get("step", step))
            used.append(path)
            workdir = workdir or str(data.get("workdir") or "")
        if not used:
            raise UserError(f"--results: {directory} holds no suite file and no "
                            f"{'/'.join(EVALUATIONS)} results")
        if config_loader is not None and workdir:
            train_config = config_loader(workdir)
        method = str((train_config or {}).get("method") or "")
        source = "per-binary"
    if not workdir:
        parent = os.path.dirname(os.path.normpath(directory))
        workdir = parent if os.path.basename(os.path.normpath(directory)) == "eval" else directory
    return Run(name="", method=method, lock=image_lock(train_config), workdir=workdir,
               directory=directory, source=source, steps=steps, files=used, results=results,
               train_config=train_config, skipped=skipped, datasets=datasets)


def _same_path(a: str, b: str) -> bool:
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def parse_names(text: str) -> dict[str, str]:
    """``"clip=runs/clip_demo,lit=runs/lit_demo"`` -> {name: path}, in the order given."""
    names: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserError(f"--names: {item!r} is not name=path")
        if name.strip() in names:
            raise UserError(f"--names: name {name.strip()!r} given twice")
        names[name.strip()] = path.strip()
    return names


def default_name(run: Run) -> str:
    """The method, with the image-tower lock when the tower is (partly) frozen, and ``[step 0]``
    for untrained weights (``evals/import_weights.py`` workdirs)."""
    base = run.method or os.path.basename(os.path.normpath(run.workdir)) or run.directory
    if run.lock not in ("none", "unknown"):
        base = f"{base}[lock={run.lock}]"
    return f"{base}[step 0]" if run.steps and set(run.steps.values()) == {0} else base


def name_runs(runs: Sequence[Run], names: Mapping[str, str] | None = None) -> list[Run]:
    """Names every run and orders them: runs named by `names` first, in that order, then the
    others sorted by name. Runs whose default names collide get their workdir's basename."""
    names = dict(names or {})
    named: dict[int, str] = {}
    for name, path in names.items():
        hits = [i for i, r in enumerate(runs)
                if any(_same_path(path, p) for p in (r.workdir, r.directory, *r.files))]
        if not hits:
            raise UserError(f"--names: {name}={path} matches no run (give a workdir, eval "
                            f"folder or results file passed with --results)")
        if len(hits) > 1 or hits[0] in named:
            raise UserError(f"--names: {name}={path} matches more than one run or a run "
                            f"already named")
        named[hits[0]] = name
    defaults = {i: default_name(r) for i, r in enumerate(runs) if i not in named}
    counts: dict[str, int] = {}
    for value in list(named.values()) + list(defaults.values()):
        counts[value] = counts.get(value, 0) + 1
    for i, value in defaults.items():
        if counts[value] > 1:
            defaults[i] = f"{value} ({os.path.basename(os.path.normpath(runs[i].workdir))})"
    final = {**defaults, **named}
    if len(set(final.values())) != len(final):
        dupes = sorted({v for v in final.values() if list(final.values()).count(v) > 1})
        raise UserError(f"runs share the name(s) {', '.join(dupes)}: tell them apart with "
                        f"--names name=workdir")
    order = list(names)
    for i, run in enumerate(runs):
        run.name = final[i]
    return sorted(runs, key=lambda r: (order.index(r.name) if r.name in order else len(order),
                                       r.name))


def load_runs(patterns: Sequence[str], names: Mapping[str, str] | None = None,
              config_loader: Callable[[str], dict[str, Any] | None] | None = None
              ) -> list[Run]:
    """Every run the patterns reach, named and in report order."""
    files = expand_results(patterns)
    return name_runs([load_run(d, f, config_loader) for d, f in files.items()], names)


# ----------------------------------------------------------------------------- cells

def _number(value: Any) -> float | None:
    """A finite float, or None for anything missing (None, NaN, non-numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _retrieval_entries(results: Mapping[str, Mapping[str, Any]]
                       ) -> Iterable[tuple[str, dict[str, Any]]]:
    """(``spec:direction``, {"R@K": ...}) from either retrieval layout: a key per dataset
    with ``i2t_R@K`` / ``t2i_R@K`` metrics, or a key per ``spec:direction`` with ``R@K``."""
    for key, metrics in results.items():
        split = False
        for direction in ("i2t", "t2i"):
            prefix = direction + "_"
            inner = {m[len(prefix):]: v for m, v in metrics.items() if m.startswith(prefix)}
            if inner:
                split = True
                yield f"{key}:{direction}", inner
        if not split:
            yield key, dict(metrics)


def run_cells(run: Run) -> Cells:
    """All of a run's numeric results as (family, task, metric) -> value, plus each task's
    primary metric (retrieval's ``R@mean`` is derived here)."""
    cells: Cells = {}

    def put(family: str, task: str, metrics: Mapping[str, Any]) -> None:
        for metric, value in metrics.items():
            number = _number(value)
            if number is not None:
                cells[(family, task, metric)] = number

    for evaluation, results in run.results.items():
        for key, metrics in results.items():
            if not isinstance(metrics, dict):
                continue
            if evaluation == "zero_shot":
                multilabel = "mean_auroc" in metrics and "top1" not in metrics
                put("multilabel" if multilabel else "zero_shot", key, metrics)
            elif evaluation in ("multilabel", "zero_shot_multilabel"):
                put("multilabel", key, metrics)
            elif evaluation in ("linear_probe", "vqa"):
                put(evaluation, key, metrics)
    for task, metrics in _retrieval_entries(run.results.get("retrieval", {})):
        put("retrieval", task, metrics)
        recalls = [_number(metrics.get(f"R@{k}")) for k in RETRIEVAL_PRIMARY_KS]
        if all(r is not None for r in recalls):
            cells[("retrieval", task, "R@mean")] = sum(recalls) / len(recalls)
    return cells


@dataclasses.dataclass
class Benchmark:
    """The runs and their cells, with every family's tasks (sorted) across runs."""
    runs: list[Run]
    cells: dict[str, Cells]            # run name -> cells
    tasks: dict[str, list[str]]        # family -> tasks any run has a primary result for

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.runs]

    def value(self, name: str, family: str, task: str, metric: str) -> float | None:
        return self.cells[name].get((family, task, metric))

    def score(self, name: str, family: str, task: str) -> float | None:
        return self.value(name, family, task, FAMILY[family].primary)

    def metrics(self, family: str) -> set[str]:
        return {m for cells in self.cells.values() for f, _, m in cells if f == family}


def build_benchmark(runs: Sequence[Run]) -> Benchmark:
    cells = {r.name: run_cells(r) for r in runs}
    tasks = {f.key: sorted({t for c in cells.values() for fam, t, m in c
                            if fam == f.key and m == f.primary}) for f in FAMILIES}
    return Benchmark(list(runs), cells, tasks)


def missing_cells(bench: Benchmark) -> list[tuple[str, str, str]]:
    """(family, task, run) of every gap in the task x run tables: a task some run has a
    primary result for and another run lacks."""
    return [(family, task, name) for family, tasks in bench.tasks.items() for task in tasks
            for name in bench.names if bench.score(name, family, task) is None]


# ----------------------------------------------------------------------------- math

def mean_or_none(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def family_average(bench: Benchmark, name: str, family: str) -> tuple[float | None, int]:
    """Mean primary score over the family's tasks this run has, and how many it has."""
    scores = [bench.score(name, family, t) for t in bench.tasks[family]]
    present = [s for s in scores if s is not None]
    return mean_or_none(present), len(present)


def rank_with_ties(values: Mapping[str, float | None]) -> dict[str, float]:
    """1-based ranks (higher value = better = rank 1) of the entries that have a value; tied
    values share the mean of the ranks they span; entries without a value get none."""
    present = {k: v for k, v in values.items() if v is not None}
    return {k: 1.0 + sum(o > v for o in present.values())
            + (sum(o == v for o in present.values()) - 1) / 2.0 for k, v in present.items()}


def task_ranks(bench: Benchmark, families: Sequence[str] | None = None
               ) -> dict[tuple[str, str], dict[str, float]]:
    """(family, task) -> {run name: rank} among the runs with that task's primary result."""
    return {(f, t): rank_with_ties({n: bench.score(n, f, t) for n in bench.names})
            for f in (families or list(FAMILY)) for t in bench.tasks[f]}


def mean_ranks(bench: Benchmark, families: Sequence[str] | None = None
               ) -> dict[str, tuple[float | None, int]]:
    """Run name -> (mean rank over the tasks it was ranked on, number of those tasks)."""
    ranks = task_ranks(bench, families)
    out = {}
    for name in bench.names:
        mine = [r[name] for r in ranks.values() if name in r]
        out[name] = (mean_or_none(mine), len(mine))
    return out


@dataclasses.dataclass(frozen=True)
class Pair:
    treatment: str    # run names
    baseline: str
    label: str        # e.g. "slip vs clip"


def freezing_pairs(runs: Sequence[Run]) -> tuple[list[Pair], list[str]]:
    """(frozen image tower run, same method trained) pairs; and notes on frozen runs with no
    unfrozen partner (or that no run freezes the tower)."""
    pairs, notes = [], []
    frozen = [r for r in runs if r.lock not in ("none", "unknown")]
    for run in frozen:
        partners = [b for b in runs if b.method == run.method and b.lock == "none"]
        for b in partners:
            pairs.append(Pair(run.name, b.name, f"{run.method}: lock={run.lock} vs trained"))
        if not partners:
            notes.append(f"{run.name}: no run of {run.method or 'its method'} with a trained "
                         f"image tower")
    if not frozen:
        notes.append("no run freezes the image tower (optim.lr_multipliers of 0 on image/, "
                     "e.g. configs/lit.py)")
    return pairs, notes


def method_pairs(runs: Sequence[Run], wanted: Sequence[tuple[str, str]]
                 ) -> tuple[list[Pair], list[str]]:
    """Runs of each (treatment, baseline) method pair trained with the same image-tower
    freezing; and a note for each wanted pair with no such runs."""
    pairs, notes = [], []
    for treatment, baseline in wanted:
        found = [Pair(a.name, b.name, f"{treatment} vs {baseline}"
                      + ("" if a.lock == "none" else f" (lock={a.lock})"))
                 for a in runs if a.method == treatment
                 for b in runs if b.method == baseline and b.lock == a.lock]
        pairs += found
        if not found:
            have_t = any(r.method == treatment for r in runs)
            have_b = any(r.method == baseline for r in runs)
            missing = [m for m, have in ((treatment, have_t), (baseline, have_b)) if not have]
            why = (f"no {' and no '.join(missing)} run" if missing
                   else "no two runs with the same image-tower freezing")
            notes.append(f"{treatment} vs {baseline}: {why}")
    return pairs, notes


def pair_difference(bench: Benchmark, pair: Pair, family: str) -> tuple[float | None, int]:
    """Mean of (treatment - baseline) primary scores over the family's tasks both runs have,
    and the number of such tasks."""
    diffs = []
    for task in bench.tasks[family]:
        a = bench.score(pair.treatment, family, task)
        b = bench.score(pair.baseline, family, task)
        if a is not None and b is not None:
            diffs.append(a - b)
    return mean_or_none(diffs), len(diffs)


# ----------------------------------------------------------------------------- markdown

def fmt(value: float | None, digits: int = 4, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def task_table(bench: Benchmark, family: str, metrics: Sequence[tuple[str, str]]) -> str:
    """Rows: task (x metric when several); columns: runs; a missing result is "—"."""
    several = len(metrics) > 1
    header = ["task", *(["metric"] if several else []), *bench.names]
    rows = []
    for task in bench.tasks[family]:
        for metric, label in metrics:
            rows.append([task, *([label] if several else []),
                         *(fmt(bench.value(n, family, task, metric)) for n in bench.names)])
    return markdown_table(header, rows)


def kshot_table(bench: Benchmark) -> str | None:
    """Linear-probe k-shot top-1 as mean ± std per task and k; None when no run has k-shot."""
    ks = sorted({int(m["k"]) for m in map(_KSHOT.match, bench.metrics("linear_probe")) if m})
    if not ks:
        return None
    rows = []
    for task in bench.tasks["linear_probe"]:
        for k in ks:
            cells = []
            for name in bench.names:
                mean = bench.value(name, "linear_probe", task, f"k{k}/top1_mean")
                std = bench.value(name, "linear_probe", task, f"k{k}/top1_std")
                cells.append(MISSING if mean is None
                             else fmt(mean) + ("" if std is None else f" ± {fmt(std)}"))
            rows.append([task, str(k), *cells])
    return markdown_table(["task", "k", *bench.names], rows)


def _tasks(count: int) -> str:
    return f"{count} task" + ("" if count == 1 else "s")


def average_table(bench: Benchmark) -> str:
    """Rows: runs; columns: each family's mean primary score ("(n/N)" when tasks are missing)."""
    families = [f for f in FAMILIES if bench.tasks[f.key]]
    header = ["method", *(f"{f.title} ({f.primary_label}, {_tasks(len(bench.tasks[f.key]))})"
                          for f in families)]
    rows = []
    for name in bench.names:
        row = [name]
        for f in families:
            mean, count = family_average(bench, name, f.key)
            total = len(bench.tasks[f.key])
            row.append(fmt(mean) + ("" if count == total or mean is None
                                    else f" ({count}/{total})"))
        rows.append(row)
    return markdown_table(header, rows)


def rank_table(bench: Benchmark) -> str:
    """Rows: runs; columns: mean rank over all tasks, tasks ranked, mean rank per family."""
    families = [f for f in FAMILIES if bench.tasks[f.key]]
    total = sum(len(bench.tasks[f.key]) for f in families)
    overall = mean_ranks(bench)
    per_family = {f.key: mean_ranks(bench, [f.key]) for f in families}
    header = ["method", "mean rank", "tasks ranked", *(f.title for f in families)]
    rows = []
    for name in bench.names:
        mean, count = overall[name]
        rows.append([name, fmt(mean, 3), f"{count}/{total}",
                     *(fmt(per_family[f.key][name][0], 3) for f in families)])
    return markdown_table(header, rows)


def comparison_table(bench: Benchmark, pairs: Sequence[Pair]) -> str:
    """Rows: pairs; columns: per family, mean (treatment - baseline) over shared tasks."""
    families = [f for f in FAMILIES if bench.tasks[f.key]]
    header = ["comparison", "treatment", "baseline",
              *(f"Δ {f.title} ({f.primary_label})" for f in families)]
    rows = []
    for pair in pairs:
        cells = []
        for f in families:
            diff, count = pair_difference(bench, pair, f.key)
            cells.append(MISSING if diff is None else f"{fmt(diff, signed=True)} (n={count})")
        rows.append([pair.label, pair.treatment, pair.baseline, *cells])
    return markdown_table(header, rows)


def research_questions(runs: Sequence[Run]) -> list[tuple[str, list[Pair], list[str]]]:
    """(question, pairs found, notes on pairs not found) for the three questions."""
    return [
        ("Frozen vs trained image tower", *freezing_pairs(runs)),
        ("With vs without a unimodal self-supervised loss", *method_pairs(runs, UNIMODAL_PAIRS)),
        ("Global vs fine-grained alignment", *method_pairs(runs, FINE_GRAINED_PAIRS)),
    ]


def runs_table(runs: Sequence[Run]) -> str:
    rows = []
    for r in runs:
        steps = sorted(set(r.steps.values()))
        step = (str(steps[0]) if len(steps) == 1 else
                ", ".join(f"{e} {s}" for e, s in sorted(r.steps.items())) or MISSING)
        rows.append([r.name, r.method or "?", r.lock, r.workdir, step, r.source,
                     ", ".join(sorted(r.results)) or MISSING, str(len(r.skipped))])
    return markdown_table(["name", "method", "image lock", "workdir", "step", "source",
                           "evaluations", "skipped"], rows)


def _section_tables(bench: Benchmark) -> list[str]:
    """The task x method tables of every family that has results."""
    out = []
    if bench.tasks["zero_shot"]:
        out += ["### Zero-shot classification: top-1", task_table(bench, "zero_shot",
                                                                  [("top1", "top-1")]),
                "### Zero-shot classification: macro AUROC",
                task_table(bench, "zero_shot", [("macro_auroc", "macro AUROC")])]
    if bench.tasks["multilabel"]:
        out += ["### Multi-label zero-shot: mean AUROC",
                task_table(bench, "multilabel", [("mean_auroc", "mean AUROC")])]
    if bench.tasks["linear_probe"]:
        out += ["### Linear probe: top-1", task_table(bench, "linear_probe",
                                                      [("top1", "top-1")])]
        kshot = kshot_table(bench)
        if kshot:
            out += ["### Linear probe: k-shot top-1 (mean ± std over seeds)", kshot]
    if bench.tasks["retrieval"]:
        out += ["### Retrieval: Recall@K", task_table(
            bench, "retrieval", [(f"R@{k}", f"R@{k}") for k in RETRIEVAL_PRIMARY_KS])]
    if bench.tasks["vqa"]:
        out += ["### VQA: accuracy", task_table(bench, "vqa", [
            ("accuracy", "overall"), ("closed_accuracy", "closed"), ("open_accuracy", "open"),
            ("majority_closed_accuracy", "closed, majority-answer baseline")])]
    return out


def render_markdown(bench: Benchmark, plots: Mapping[str, Sequence[tuple[str, str]]]
                    | None = None) -> str:
    """The whole report. `plots`: section -> [(title, relative PNG path)]."""
    plots = plots or {}

    def images(section: str) -> list[str]:
        return [f"![{title}]({path})" for title, path in plots.get(section, ())]

    parts = ["# Benchmark report",
             f"{len(bench.runs)} runs. A missing result is shown as {MISSING} and left out of "
             f"averages, ranks and differences (never counted as 0).",
             "## Runs", runs_table(bench.runs)]
    skipped = [f"- {r.name}: {s.get('evaluation', '?')} on {s.get('dataset', '?')}: "
               f"{s.get('reason', '')}" for r in bench.runs for s in r.skipped]
    if skipped:
        parts += ["Skipped by the suite (data missing):", "\n".join(skipped)]
    parts += ["## Results per task", *_section_tables(bench), *images("bars")]
    parts += images("recall") + images("heatmap")
    parts += ["## Average per task family",
              "Mean of each task's primary metric over the tasks the method has; (n/N) when "
              "it lacks some.", average_table(bench),
              "## Mean rank",
              "Rank per task among the methods that have it (1 = best, ties share the mean "
              "rank), averaged over the tasks the method was ranked on.", rank_table(bench),
              "## Research questions",
              "Δ = treatment − baseline, mean over the family's tasks both runs have (n)."]
    for question, pairs, notes in research_questions(bench.runs):
        parts.append(f"### {question}")
        found = ", ".join(f"{p.treatment} vs {p.baseline}" for p in pairs)
        parts.append(f"Pairs found: {found or 'none'}.")
        if pairs:
            parts.append(comparison_table(bench, pairs))
        if notes:
            parts.append("Not found: " + "; ".join(notes) + ".")
    return "\n\n".join(parts) + "\n"


def summary(bench: Benchmark) -> dict[str, Any]:
    """The report's numbers as JSON (None where missing)."""
    ranks = mean_ranks(bench)
    return {
        "runs": [{"name": r.name, "method": r.method, "lock": r.lock, "workdir": r.workdir,
                  "steps": r.steps, "source": r.source, "files": r.files} for r in bench.runs],
        "tasks": bench.tasks,
        "scores": {n: {f: {t: bench.score(n, f, t) for t in ts} for f, ts in bench.tasks.items()
                       if ts} for n in bench.names},
        "family_average": {n: {f: family_average(bench, n, f)[0] for f, ts in bench.tasks.items()
                               if ts} for n in bench.names},
        "mean_rank": {n: {"mean": ranks[n][0], "tasks": ranks[n][1]} for n in bench.names},
        "research_questions": [
            {"question": q, "notes": notes,
             "pairs": [{"treatment": p.treatment, "baseline": p.baseline, "label": p.label,
                        "difference": {f: pair_difference(bench, p, f)[0]
                                       for f, ts in bench.tasks.items() if ts}}
                       for p in pairs]}
            for q, pairs, notes in research_questions(bench.runs)],
    }
