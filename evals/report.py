"""The benchmark report over many runs' evaluation results: markdown tables and PNG plots.

    python -m evals.report --results 'runs/*/eval/suite_step*.json' [--results ...] \
        --output_dir reports/benchmark [--names clip=runs/clip_demo,lit=runs/lit_demo]

`--results` takes glob patterns of suite files, per-binary result files
(`<evaluation>_step<N>.json`), eval folders or workdirs; a folder with no suite file is read
from its per-binary files (the latest step of each). One folder is one run, named after its
train config's method (plus the image-tower lock when it is frozen), or as `--names` says;
runs named there come first, in that order, the others sorted by name. Writes
`<output_dir>/report.md`, `summary.json` and the PNGs it links. See
`medclip_jax/evaluation/report.py` for the tables' definitions. `--require_complete` makes a
gap (a task one run has and another lacks, or a skipped evaluation) exit 2 after writing.
"""

import json
import os
import sys
from typing import Any

from absl import flags

from medclip_jax import cli
from medclip_jax.errors import UserError
from medclip_jax.evaluation import report

flags.DEFINE_multi_string("results", None, "Glob pattern(s) of results files, eval folders or "
                          "workdirs (repeatable).")
flags.DEFINE_string("output_dir", "reports/benchmark", "Where report.md and the PNGs go.")
flags.DEFINE_string("names", "", "Comma-separated name=path (workdir, eval folder or results "
                    "file): column names, in this order.")
flags.DEFINE_bool("plots", True, "Write the PNG plots.")
flags.DEFINE_bool("require_complete", False, "Fail (exit 2) after writing the report when a "
                  "run lacks a result another run has, or a run skipped an evaluation.")

FLAGS = flags.FLAGS


def checkpoint_config(workdir: str) -> dict[str, Any] | None:
    """The train config saved with a workdir's latest checkpoint, None when unreadable
    (per-binary result files carry no config)."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return None
    try:
        from medclip_jax import checkpointing
        return checkpointing.restore_config(workdir)[0]
    except Exception as e:  # noqa: BLE001 - a report still renders without the method name
        print(f"warning: no train config from {workdir}: {e}", file=sys.stderr)
        return None


def run() -> None:
    runs = report.load_runs(FLAGS.results, report.parse_names(FLAGS.names), checkpoint_config)
    bench = report.build_benchmark(runs)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    plots = {}
    if FLAGS.plots:
        from medclip_jax.evaluation import report_plots
        plots = report_plots.write_plots(bench, FLAGS.output_dir)
    text = report.render_markdown(bench, plots)
    path = os.path.join(FLAGS.output_dir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(FLAGS.output_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(report.summary(bench), f, indent=2, sort_keys=True)
    print(f"{report.average_table(bench)}\n\n{report.rank_table(bench)}\n\n"
          f"report of {len(runs)} runs written to {path} "
          f"({sum(len(v) for v in plots.values())} plots)", flush=True)
    if FLAGS.require_complete:
        check_complete(bench)


def check_complete(bench: report.Benchmark) -> None:
    """--require_complete: every run has every task's result and skipped nothing."""
    gaps = [f"{r.name} skipped {s.get('evaluation')} {s.get('dataset')}"
            for r in bench.runs for s in r.skipped]
    gaps += [f"{run} lacks {family} {task}" for family, task, run in report.missing_cells(bench)]
    if gaps:
        raise UserError(f"--require_complete: {len(gaps)} gap(s): {'; '.join(gaps[:10])}"
                        + (" ..." if len(gaps) > 10 else ""))


def main(argv):
    del argv
    cli.quiet_library_logs()
    cli.run_user_main(run)


if __name__ == "__main__":
    flags.mark_flag_as_required("results")
    cli.run_app(main)
