"""The benchmark report: loading suite / per-binary result files, table math against
hand-computed values (missing results never count), ranks with ties against scipy, the research
questions' pairing, the PNG plots, and the binary end to end. Fixtures are fake result files
in the real binaries' layouts (key and metric names as evals/zero_shot.py and
evals/retrieval.py write them)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
from PIL import Image

from configs import base as config_base
from helpers import REPO_ROOT, subprocess_env
from medclip_jax.errors import UserError
from medclip_jax.evaluation import report, report_plots

ZS = "synthetic_medical/test"
T1, T2 = f"{ZS}:chest_xray", f"{ZS}:histopathology"
DEPTH = 2


def train_config(method: str, lock: str = "none") -> dict:
    """The parts of a saved train config the report reads (JSON turns tuples into lists)."""
    rules = [list(r) for r in config_base.lock_rules(lock, DEPTH)]
    return {"method": method, "model": {"image": {"depth": DEPTH}},
            "optim": {"lr_multipliers": rules}}


def zs(top1, auroc=0.5) -> dict:
    return {"top1": top1, "balanced_accuracy": top1, "macro_f1": top1, "macro_auroc": auroc,
            "num_samples": 500, "num_classes": 5, "chance_top1": 0.2}


def retrieval(r1, r5, r10, prefix_layout=True, spec=ZS) -> dict:
    """Retrieval results as evals/retrieval.py writes them (one key per dataset with i2t_/t2i_
    metrics), or in the per-direction layout ``spec:i2t`` -> R@K."""
    ks = {"R@1": r1, "R@5": r5, "R@10": r10, "R@50": min(1.0, r10 + 0.3), "R@200": 1.0}
    if prefix_layout:
        out = {f"{d}_{k}": v - (0.01 if d == "t2i" else 0.0) for d in ("i2t", "t2i")
               for k, v in ks.items()}
        out.update(num_images=1000, num_texts=503, i2t_mean_rank=20.0, t2i_mean_rank=30.0)
        return {spec: out}
    return {f"{spec}:{d}": {k: v - (0.01 if d == "t2i" else 0.0) for k, v in ks.items()}
            for d in ("i2t", "t2i")}


def write_suite(folder, method, results, lock="none", step=100, skipped=()):
    folder = os.fspath(folder)
    os.makedirs(os.path.join(folder, "eval"), exist_ok=True)
    path = os.path.join(folder, "eval", f"suite_step{step}.json")
    with open(path, "w") as f:
        json.dump({"step": step, "workdir": folder, "method": method,
                   "train_config": train_config(method, lock), "eval_config": {},
                   "datasets": {ZS: {"version": "1.0.0", "path": "/data"}},
                   "skipped": list(skipped), "results": results}, f)
    return path


def write_binary(folder, evaluation, results, step):
    folder = os.fspath(folder)
    os.makedirs(os.path.join(folder, "eval"), exist_ok=True)
    path = os.path.join(folder, "eval", f"{evaluation}_step{step}.json")
    with open(path, "w") as f:
        json.dump({"step": step, "workdir": folder, "results": results}, f)
    return path


@pytest.fixture
def runs_dir(tmp_path):
    """clip, slip, a LiT-locked clip (suite files) and filip (per-binary files only).

    zero-shot top-1     T1    T2
        clip           0.50  0.80
        slip           0.60   (absent)
        clip[lock]     0.50  NaN      (NaN = missing)
        filip          0.40  0.90
    """
    write_suite(tmp_path / "clip", "clip", {
        "zero_shot": {T1: zs(0.5, 0.7), T2: zs(0.8, 0.9),
                      "mimic_cxr@frontal/test:chexpert": {"mean_auroc": 0.61,
                                                          "auroc/Edema": 0.7}},
        "retrieval": retrieval(0.1, 0.3, 0.5),
        "linear_probe": {T1: {**zs(0.7), "k1/top1_mean": 0.3, "k1/top1_std": 0.05,
                              "k4/top1_mean": 0.5, "k4/top1_std": 0.02}},
        "vqa": {}})
    write_suite(tmp_path / "slip", "slip", {
        "zero_shot": {T1: zs(0.6)},
        "vqa": {f"{ZS}:vqa": {"accuracy": 0.55, "closed_accuracy": 0.7, "open_accuracy": 0.2,
                             "num_unseen_answers": 3, "majority_closed_accuracy": 0.5}}},
        skipped=[{"evaluation": "linear_probe", "dataset": "bach/test",
                  "reason": "not built"}])
    write_suite(tmp_path / "lit", "clip", {
        "zero_shot": {T1: zs(0.5), T2: zs(float("nan"))},
        "retrieval": retrieval(0.05, 0.2, 0.4, prefix_layout=False)}, lock="tower")
    write_binary(tmp_path / "filip", "zero_shot", {T1: zs(0.1), T2: zs(0.1)}, step=50)
    write_binary(tmp_path / "filip", "zero_shot", {T1: zs(0.4), T2: zs(0.9)}, step=200)
    write_binary(tmp_path / "filip", "retrieval", retrieval(0.2, 0.4, 0.6), step=200)
    return tmp_path


def configs_of(tmp_path):
    return lambda workdir: (train_config("filip") if os.path.basename(workdir) == "filip"
                            else None)


def load(runs_dir, names=None):
    runs = report.load_runs([str(runs_dir / "*" / "eval" / "suite_step*.json")], names,
                            configs_of(runs_dir))
    return runs, report.build_benchmark(runs)


def test_loading_names_and_per_binary_runs(runs_dir):
    runs, bench = load(runs_dir)
    assert bench.names == ["clip", "clip[lock=tower]", "filip", "slip"]   # sorted
    by_name = {r.name: r for r in runs}
    filip = by_name["filip"]
    assert filip.source == "per-binary" and filip.method == "filip" and filip.lock == "none"
    assert filip.steps == {"zero_shot": 200, "retrieval": 200}   # the latest step of each
    assert bench.score("filip", "zero_shot", T1) == 0.4
    assert by_name["clip[lock=tower]"].lock == "tower" and by_name["clip"].source == "suite"
    assert by_name["slip"].skipped[0]["dataset"] == "bach/test"
    # --names: named runs first, in the order given; the rest sorted
    runs, bench = load(runs_dir, report.parse_names(
        f"LiT={runs_dir}/lit,CLIP={runs_dir / 'clip' / 'eval'}"))
    assert bench.names == ["LiT", "CLIP", "filip", "slip"]
    with pytest.raises(UserError, match="--names: x="):
        load(runs_dir, {"x": str(runs_dir / "nowhere")})
    with pytest.raises(UserError, match="not name=path"):
        report.parse_names("clip")
    with pytest.raises(UserError, match="matches no evaluation results"):
        report.load_runs([str(runs_dir / "none*" / "suite_step*.json")])


def test_cells_from_both_retrieval_layouts_and_multilabel(runs_dir):
    _, bench = load(runs_dir)
    assert bench.tasks["retrieval"] == [f"{ZS}:i2t", f"{ZS}:t2i"]
    assert bench.value("clip", "retrieval", f"{ZS}:i2t", "R@5") == 0.3
    assert bench.value("clip[lock=tower]", "retrieval", f"{ZS}:t2i", "R@10") == \
        pytest.approx(0.39)
    assert bench.score("clip", "retrieval", f"{ZS}:i2t") == pytest.approx((0.1 + 0.3 + 0.5) / 3)
    assert bench.tasks["multilabel"] == ["mimic_cxr@frontal/test:chexpert"]
    assert bench.tasks["zero_shot"] == [T1, T2]    # the multi-label task is not a top-1 task
    assert bench.score("clip", "multilabel", "mimic_cxr@frontal/test:chexpert") == 0.61
    assert bench.tasks["vqa"] == [f"{ZS}:vqa"] and bench.tasks["linear_probe"] == [T1]


def test_averages_skip_missing_results(runs_dir):
    _, bench = load(runs_dir)
    # hand-computed from the fixture table
    assert report.family_average(bench, "clip", "zero_shot") == (pytest.approx(0.65), 2)
    assert report.family_average(bench, "slip", "zero_shot") == (pytest.approx(0.6), 1)
    assert report.family_average(bench, "clip[lock=tower]", "zero_shot") == \
        (pytest.approx(0.5), 1)   # NaN is missing, not 0 (0 would give 0.25)
    assert report.family_average(bench, "slip", "retrieval") == (None, 0)
    table = report.average_table(bench)
    row = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert "0.6500 |" in row["clip"] and "0.6000 (1/2)" in row["slip"]
    assert row["slip"].count(report.MISSING) == 3   # multilabel, linear probe, retrieval


def test_missing_cell_renders_dash(runs_dir):
    _, bench = load(runs_dir)
    lines = report.task_table(bench, "zero_shot", [("top1", "top-1")]).splitlines()
    assert lines[0] == "| task | clip | clip[lock=tower] | filip | slip |"
    assert lines[2] == f"| {T1} | 0.5000 | 0.5000 | 0.4000 | 0.6000 |"
    assert lines[3] == f"| {T2} | 0.8000 | — | 0.9000 | — |"     # NaN and absent alike
    kshot = report.kshot_table(bench).splitlines()
    assert kshot[2] == f"| {T1} | 1 | 0.3000 ± 0.0500 | — | — | — |"
    assert "0.0000" not in "\n".join(lines)


def test_ranks_with_ties_hand_computed(runs_dir):
    _, bench = load(runs_dir)
    ranks = report.task_ranks(bench, ["zero_shot"])
    # T1: slip .6 -> 1; clip and clip[lock] tie at .5 -> (2 + 3) / 2; filip .4 -> 4
    assert ranks[("zero_shot", T1)] == {"slip": 1.0, "clip": 2.5, "clip[lock=tower]": 2.5,
                                        "filip": 4.0}
    # T2: only clip and filip have it
    assert ranks[("zero_shot", T2)] == {"filip": 1.0, "clip": 2.0}
    means = report.mean_ranks(bench, ["zero_shot"])
    assert means == {"clip": (2.25, 2), "clip[lock=tower]": (2.5, 1), "filip": (2.5, 2),
                     "slip": (1.0, 1)}
    table = report.rank_table(bench)
    # over all 7 tasks (2 zero-shot, 1 multi-label, 1 linear probe, 2 retrieval, 1 VQA):
    # clip ranks 2.5, 2 | 1 | 1 | 2, 2 (filip > clip > lit on both directions) -> 10.5 / 6
    assert "| clip | 1.750 | 6/7 | 2.250 | 1.000 | 1.000 | 2.000 | — |" in table
    assert "| slip | 1.000 | 2/7 | 1.000 | — | — | — | 1.000 |" in table


def test_rank_with_ties_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        values = rng.integers(0, 4, size=7).astype(float) / 4
        present = rng.random(7) < 0.8
        given = {f"m{i}": (float(v) if p else None) for i, (v, p) in
                 enumerate(zip(values, present))}
        ranks = report.rank_with_ties(given)
        expected = scipy.stats.rankdata(-values[present], method="average")
        assert set(ranks) == {f"m{i}" for i in np.flatnonzero(present)}
        np.testing.assert_allclose([ranks[f"m{i}"] for i in np.flatnonzero(present)], expected)


def test_image_lock_from_lit_rules():
    assert report.image_lock(train_config("clip")) == "none"
    assert report.image_lock(train_config("clip", "tower")) == "tower"
    assert report.image_lock(train_config("clip", "all")) == "all"
    assert report.image_lock(train_config("clip", "1")) == "1"
    assert report.image_lock(train_config("clip", "0")) == "0"   # embeddings only
    cfg = train_config("clip")
    cfg["optim"]["lr_multipliers"] = [["^image/block_1/", 0.0]]
    assert report.image_lock(cfg) == "partial"
    cfg["optim"]["lr_multipliers"] = [["^image/", 0.1]]      # slower, not frozen
    assert report.image_lock(cfg) == "none"
    assert report.image_lock(None) == "unknown"


def _run(name, method, lock="none"):
    return report.Run(name=name, method=method, lock=lock, workdir=name, directory=name,
                      source="suite", steps={}, files=[], results={})


def test_untrained_runs_are_named_step_0_beside_their_trained_peers():
    trained, untrained = _run("", "clip"), _run("", "clip")
    trained.steps, untrained.steps = {"zero_shot": 468}, {"zero_shot": 0, "retrieval": 0}
    named = report.name_runs([trained, untrained])
    assert [r.name for r in named] == ["clip", "clip[step 0]"]


def test_research_question_pairing():
    runs = [_run("clip", "clip"), _run("clip2", "clip"), _run("lit", "clip", "tower"),
            _run("slip", "slip"), _run("slip_lit", "slip", "tower"), _run("gloria", "gloria"),
            _run("siglip_lit", "siglip", "all")]
    pairs, notes = report.freezing_pairs(runs)
    assert [(p.treatment, p.baseline) for p in pairs] == [
        ("lit", "clip"), ("lit", "clip2"), ("slip_lit", "slip")]
    assert notes == ["siglip_lit: no run of siglip with a trained image tower"]
    pairs, notes = report.method_pairs(runs, report.UNIMODAL_PAIRS)
    # same freezing on both sides: slip-clip, slip-clip2, slip_lit-lit
    assert [(p.treatment, p.baseline) for p in pairs] == [
        ("slip", "clip"), ("slip", "clip2"), ("slip_lit", "lit")]
    assert notes == ["declip vs clip: no declip run"]
    pairs, notes = report.method_pairs(runs, report.FINE_GRAINED_PAIRS)
    assert [(p.treatment, p.baseline) for p in pairs] == [("gloria", "clip"),
                                                         ("gloria", "clip2")]
    assert notes == ["filip vs clip: no filip run"]
    assert report.freezing_pairs(runs[:2])[1][0].startswith("no run freezes")
    assert report.method_pairs([_run("g", "gloria", "tower"), _run("c", "clip")],
                               report.FINE_GRAINED_PAIRS)[1][1] == \
        "gloria vs clip: no two runs with the same image-tower freezing"


def test_differences_use_shared_tasks_only(runs_dir):
    _, bench = load(runs_dir)
    questions = dict((q, (p, n)) for q, p, n in report.research_questions(bench.runs))
    (pair,), _ = questions["Frozen vs trained image tower"]
    assert (pair.treatment, pair.baseline) == ("clip[lock=tower]", "clip")
    assert report.pair_difference(bench, pair, "zero_shot") == (pytest.approx(0.0), 1)
    # retrieval: lit (0.05,0.2,0.4) vs clip (0.1,0.3,0.5), same offset on t2i
    diff, n = report.pair_difference(bench, pair, "retrieval")
    assert n == 2 and diff == pytest.approx((-0.05 - 0.1 - 0.1) / 3)
    assert report.pair_difference(bench, pair, "vqa") == (None, 0)
    slip_pairs, _ = questions["With vs without a unimodal self-supervised loss"]
    assert report.pair_difference(bench, slip_pairs[0], "zero_shot") == \
        (pytest.approx(0.1), 1)
    fine, notes = questions["Global vs fine-grained alignment"]
    assert [(p.treatment, p.baseline) for p in fine] == [("filip", "clip")]
    # filip - clip: T1 -0.1, T2 +0.1
    assert report.pair_difference(bench, fine[0], "zero_shot") == (pytest.approx(0.0), 2)
    text = report.render_markdown(bench)
    assert "Pairs found: clip[lock=tower] vs clip." in text
    assert "gloria vs clip: no gloria run" in text and "| — |" in text


def _assert_png(path, min_bytes=5000):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > min_bytes
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert width > 200 and height > 150
        pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 10   # not a blank canvas


def test_plots_are_valid_pngs(runs_dir, tmp_path):
    _, bench = load(runs_dir)
    out = tmp_path / "plots"
    plots = report_plots.write_plots(bench, str(out))
    files = [name for section in plots.values() for _, name in section]
    assert sorted(files) == sorted(
        [f"bars_{f}.png" for f in ("zero_shot", "multilabel", "linear_probe", "retrieval",
                                   "vqa")] + ["recall_synthetic_medical_test.png",
                                              "heatmap.png"])
    for name in files:
        _assert_png(out / name)
    text = report.render_markdown(bench, plots)
    assert "![Method × task heat map](heatmap.png)" in text


@pytest.mark.slow
def test_binary_writes_report(runs_dir, tmp_path):
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "evals.report", "--results",
         str(runs_dir / "*" / "eval" / "suite_step*.json"), "--output_dir", str(out),
         "--names", f"clip={runs_dir / 'clip'},lit={runs_dir / 'lit'}"],
        cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (out / "report.md").read_text()
    assert "| task | clip | lit | filip | slip |" in text    # names first, in order
    assert f"| {T2} | 0.8000 | — | 0.9000 | — |" in text
    for link in ("bars_zero_shot.png", "heatmap.png", "recall_synthetic_medical_test.png"):
        assert f"]({link})" in text
        _assert_png(out / link)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scores"]["lit"]["zero_shot"][T2] is None
    # per-binary run without a checkpoint: named after its workdir
    assert "| filip | ? | unknown |" in text
    bad = subprocess.run([sys.executable, "-m", "evals.report", "--results",
                          str(tmp_path / "missing*"), "--output_dir", str(out)],
                         cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "matches no evaluation results" in bad.stderr
    assert math.isfinite(summary["mean_rank"]["clip"]["mean"])


@pytest.mark.slow
def test_missing_cells_and_require_complete(runs_dir, tmp_path):
    _, bench = load(runs_dir)
    gaps = report.missing_cells(bench)
    assert ("zero_shot", T2, "slip") in gaps and ("zero_shot", T2, "clip[lock=tower]") in gaps
    assert ("zero_shot", T1, "clip") not in gaps
    assert all(bench.score(run, family, task) is None for family, task, run in gaps)
    out = tmp_path / "report"

    def report_binary(results: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "evals.report", "--results", results, "--output_dir",
             str(out), "--require_complete", "--noplots"],
            cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)

    gappy = report_binary(str(runs_dir / "*" / "eval" / "suite_step*.json"))
    assert gappy.returncode == 2 and "--require_complete:" in gappy.stderr
    assert "slip skipped linear_probe bach/test;" in gappy.stderr
    assert "lacks zero_shot synthetic_medical/test:histopathology" in gappy.stderr
    assert (out / "report.md").exists()
    complete = report_binary(str(runs_dir / "clip" / "eval" / "suite_step*.json"))
    assert complete.returncode == 0, complete.stderr[-2000:]


def test_workdir_inputs_collisions_and_empty_runs(tmp_path):
    write_suite(tmp_path / "a", "clip", {"zero_shot": {T1: zs(0.5)}})
    write_suite(tmp_path / "b", "clip", {"zero_shot": {T1: zs(0.7)}}, step=10)
    write_suite(tmp_path / "b", "clip", {"zero_shot": {T1: zs(0.6)}}, step=20)  # latest wins
    write_suite(tmp_path / "c", "vse", {"zero_shot": {}, "retrieval": {}},
                skipped=[{"evaluation": "retrieval", "dataset": ZS, "reason": "not built"}])
    runs = report.load_runs([str(tmp_path / "a"), str(tmp_path / "b" / "eval"),
                             str(tmp_path / "c")])
    bench = report.build_benchmark(runs)
    assert bench.names == ["clip (a)", "clip (b)", "vse"]   # same method: workdir suffix
    assert bench.score("clip (b)", "zero_shot", T1) == 0.6
    assert report.family_average(bench, "vse", "zero_shot") == (None, 0)
    assert report.mean_ranks(bench)["vse"] == (None, 0)
    text = report.render_markdown(bench, report_plots.write_plots(bench, str(tmp_path / "o")))
    assert "- vse: retrieval on synthetic_medical/test: not built" in text
    assert "| vse | — | 0/1 | — |" in text
