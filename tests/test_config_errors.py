"""Config mistakes through the real command line: one line on stderr that names the field, the
preset, the option or the path, and exit code 2 — for the trainer and every eval binary.

In-process tests run absl's parse through `flag_errors.parse_flags` (what `cli.run_app` gives
`absl.app.run`) with the eval binaries' ``--config`` flag, loading the training config files
too; the slow ones start the real binaries."""

import os
import sys

import pytest
from absl import flags

from evals import common
from medclip_jax import cli, flag_errors, train
from helpers import REPO_ROOT, run, subprocess_env

FLAGS = flags.FLAGS
CLIP = os.path.join(REPO_ROOT, "configs", "clip.py")
EVAL = os.path.join(REPO_ROOT, "configs", "eval.py")


def run_command_line(argv: list[str], monkeypatch, then=None) -> int:
    """Exit code of parsing `argv` as a binary would, then of `then()` inside
    `cli.run_user_main` (where start-up checks run); 0 when nothing exits."""
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
    before = set(FLAGS)
    try:
        flag_errors.parse_flags(argv)
        if then is not None:
            cli.run_user_main(then)
        return 0
    except SystemExit as e:
        return e.code
    finally:
        FLAGS.unparse_flags()
        for name in set(FLAGS) - before:
            delattr(FLAGS, name)


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


TRAINING_MISTAKES = [
    (["--config.optim.learnin_rate=1"], "error: config.optim.learnin_rate: no such field; did "
                                        "you mean config.optim.learning_rate?"),
    (["--config.batch_sizee=3"], "error: config.batch_sizee: no such field; did you mean "
                                 "config.batch_size?"),
    (["--config.loss.temprature=0.1"], "error: config.loss.temprature: no such field"),
    (["--config.data.augment.random_crop_scal=(0.5,1.0)"],
     "error: config.data.augment.random_crop_scal: no such field; did you mean "
     "config.data.augment.random_crop_scale?"),
    (["--config.batch_size=abc"], "error: config.batch_size: cannot read 'abc' as an integer"),
    (["--config.optim.learning_rate=fast"],
     "error: config.optim.learning_rate: cannot read 'fast' as a number"),
]


@pytest.mark.parametrize("overrides,expected", TRAINING_MISTAKES)
def test_misspelt_or_unparsable_override_is_one_line(overrides, expected, monkeypatch, capsys):
    argv = ["main", f"--config={CLIP}:tiny", "--workdir=w", *overrides]
    assert run_command_line(argv, monkeypatch) == 2
    assert one_line(capsys) == expected


@pytest.mark.parametrize("arg,expected", [
    ("tinyy", "error: config preset: unknown preset 'tinyy'; choose demo, tiny, paper or "
              "rehearsal"),
    ("tiny,lock=13", "error: config argument lock='13': choose tower, all, none or a block count "
                     "in [0, 2]"),
    ("tiny,freeze=3", "error: config argument 'freeze=3': expected lock=<tower|all|none|k> or "
                      "text=<minilm|hf_bert:/folder>"),
])
def test_unknown_preset_or_option_is_one_line(arg, expected, monkeypatch, capsys):
    argv = ["main", f"--config={CLIP}:{arg}", "--workdir=w", "--config.batch_size=8"]
    assert run_command_line(argv, monkeypatch) == 2
    assert one_line(capsys) == expected


@pytest.mark.parametrize("overrides", [[], ["--config.batch_size=8"]])
def test_wrong_config_path_is_one_line(overrides, monkeypatch, capsys, tmp_path):
    missing = str(tmp_path / "configs" / "clip.py")
    argv = ["main", f"--config={missing}:tiny", "--workdir=w", *overrides]
    assert run_command_line(argv, monkeypatch) == 2
    assert one_line(capsys).startswith(f"error: --config={missing}:tiny: no config file "
                                       f"{missing}")


@pytest.mark.parametrize("override,field", [
    ("--config.optim.learning_rate=-0.001", "config.optim.learning_rate"),
    ("--config.optim.weight_decay=-0.1", "config.optim.weight_decay"),
    ("--config.data.augment.random_crop_scale=(0.9,0.5)", "config.data.augment.random_crop_scale"),
    ("--config.checkpoint.every_steps=0", "config.checkpoint.every_steps"),
    ("--config.optim.lr_multipliers=abc", "config.optim.lr_multipliers"),
])
def test_impossible_training_values_fail_at_start_up(override, field, monkeypatch, capsys):
    """A negative learning rate used to be accepted and to train."""
    argv = ["main", f"--config={CLIP}:tiny", "--workdir=w", override]
    assert run_command_line(argv, monkeypatch,
                            then=lambda: train.validate_config(FLAGS.config)) == 2
    assert one_line(capsys).startswith(f"error: {field} must be")


def test_unknown_loss_key_in_a_config_file_is_one_line(monkeypatch, capsys, tmp_path):
    config_file = tmp_path / "my_clip.py"
    config_file.write_text(
        "from configs import clip\n\n\ndef get_config(arg='tiny'):\n"
        "    config = clip.get_config(arg)\n    config.loss.temprature = 0.1\n"
        "    return config\n")
    argv = ["main", f"--config={config_file}:tiny", "--workdir=w"]
    assert run_command_line(argv, monkeypatch,
                            then=lambda: train.validate_config(FLAGS.config)) == 2
    assert "config.loss" in one_line(capsys)


@pytest.mark.parametrize("args,expected", [
    ([f"--config={EVAL}:tiny", "--config.zero_shot.dataset=('a/test',)"],
     "error: config.zero_shot.dataset: no such field; did you mean config.zero_shot.datasets?"),
    ([f"--config={EVAL}:tiny", "--config.vqa.hiden_dim=8"],
     "error: config.vqa.hiden_dim: no such field; did you mean config.vqa.hidden_dim?"),
    ([f"--config={EVAL}:tinyy"],
     "error: config preset: unknown eval preset 'tinyy'; choose demo, tiny, paper, rehearsal"),
    ([f"--config={EVAL}:tiny", "--config.batch_size=big"],
     "error: config.batch_size: cannot read 'big' as an integer"),
    ([f"--config={EVAL}:tiny", "--stepp=3"], "error: Unknown command line flag 'stepp'"),
])
def test_eval_config_mistakes_are_one_line(args, expected, monkeypatch, capsys):
    assert run_command_line(["zero_shot", "--workdir=w", *args], monkeypatch) == 2
    assert one_line(capsys).startswith(expected)


@pytest.mark.parametrize("override,field", [
    ("--config.vqa.dropout=1.0", "config.vqa.dropout"),
    ("--config.linear_probe.features=pooled", "config.linear_probe.features"),
    ("--config.retrieval.block_size=0", "config.retrieval.block_size"),
    ("--config.zero_shot.multilabel_uncertain=maybe", "config.zero_shot.multilabel_uncertain"),
    ("--config.suite.evaluations=('captioning',)", "config.suite.evaluations"),
])
def test_impossible_eval_values_fail_before_the_checkpoint_is_read(override, field, monkeypatch,
                                                                   capsys, tmp_path):
    argv = ["zero_shot", f"--workdir={tmp_path / 'no_run'}", f"--config={EVAL}:tiny", override]
    assert run_command_line(argv, monkeypatch, then=common.load) == 2
    assert one_line(capsys).startswith(f"error: {field}")


def test_a_bug_in_a_config_file_keeps_its_traceback(monkeypatch, tmp_path):
    config_file = tmp_path / "broken.py"
    config_file.write_text("def get_config(arg=None):\n    return undefined_name\n")
    with pytest.raises(NameError):
        run_command_line(["main", f"--config={config_file}", "--workdir=w"], monkeypatch)


def test_default_eval_config_is_inserted_before_the_overrides():
    argv = ["zero_shot", "--workdir=w", "--config.batch_size=8"]
    assert flag_errors.with_default_config(argv, "config", "e.py:demo") == [
        "zero_shot", "--config=e.py:demo", "--workdir=w", "--config.batch_size=8"]
    given = ["zero_shot", "--config", "x.py:tiny"]
    assert flag_errors.with_default_config(given, "config", "e.py:demo") == given


# --- the real binaries (each a JAX import) ---------------------------------------------------


def assert_one_line_exit_2(args: list[str], expected: str) -> None:
    result = run([sys.executable, "-m", *args], subprocess_env(), timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [expected] or (
        len(result.stderr.strip().splitlines()) == 1
        and result.stderr.strip().startswith(expected)), result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("args,expected", [
    (["--config", "configs/clip.py:tiny", "--config.optim.learnin_rate=1"],
     "error: config.optim.learnin_rate: no such field; did you mean "
     "config.optim.learning_rate?"),
    (["--config", "configs/clip.py:tinyy"],
     "error: config preset: unknown preset 'tinyy'; choose demo, tiny, paper or rehearsal"),
    (["--config", "configs/clip.py:tiny,lock=13"],
     "error: config argument lock='13': choose tower, all, none or a block count in [0, 2]"),
    (["--config", "configs/clipp.py:tiny"], "error: --config=configs/clipp.py:tiny: no config "
                                            "file configs/clipp.py"),
    (["--config", "configs/clip.py:tiny", "--config.loss.foo=1"],
     "error: config.loss.foo: no such field"),
    (["--config", "configs/clip.py:tiny", "--config.optim.learning_rate=-1"],
     "error: config.optim.learning_rate must be a finite number > 0, got -1.0"),
])
def test_trainer_command_line(args, expected, tmp_path):
    assert_one_line_exit_2(["medclip_jax.main", "--workdir", str(tmp_path / "w"), *args],
                           expected)


@pytest.mark.slow
@pytest.mark.parametrize("binary", ["evals.zero_shot", "evals.retrieval", "evals.linear_probe",
                                    "evals.vqa", "evals.run_suite"])
def test_eval_binary_command_line(binary, tmp_path):
    assert_one_line_exit_2(
        [binary, "--workdir", str(tmp_path), "--config.retrieval.kss=(1,)"],
        "error: config.retrieval.kss: no such field; did you mean config.retrieval.ks?")


@pytest.mark.slow
def test_import_weights_and_report_command_lines(tmp_path):
    assert_one_line_exit_2(
        ["evals.import_weights", "--workdir", str(tmp_path / "w"),
         "--config", "configs/clip.py:paper", "--config.init.clipp=/models/clip"],
        "error: config.init.clipp: no such field; did you mean config.init.clip?")
    assert_one_line_exit_2(["evals.report", "--resultz", str(tmp_path)],
                           "error: Unknown command line flag 'resultz'")
