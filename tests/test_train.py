"""End to end: one step, train -> checkpoint -> both evals, SIGKILL resume, multi-process."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import tiny_config
from helpers import (REPO_ROOT, assert_params_close, final_params, run, subprocess_env,
                     tiny_train_args)
from medclip_jax import train
from medclip_jax.errors import UserError


@pytest.mark.slow
def test_one_step_end_to_end(tiny_data_dir, tmp_path):
    config = tiny_config(tiny_data_dir, max_steps=1, **{"eval.every_steps": 1})
    state = train.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 1
    lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl", encoding="utf-8")]
    train_line = next(l for l in lines if "train/loss" in l)
    val_line = next(l for l in lines if "val/loss" in l)
    assert np.isfinite(train_line["train/loss"]) and train_line["train/pairs_per_s"] > 0
    assert 0.0 <= val_line["val/i2t_R@1"] <= 1.0
    assert os.listdir(tmp_path / "tensorboard")
    assert (tmp_path / "checkpoints" / "1").is_dir()


@pytest.mark.slow
def test_loss_decreases_and_evals_run_from_checkpoint(tiny_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    env = subprocess_env(num_devices=2)
    result = run(tiny_train_args(tiny_data_dir, workdir, "--config.num_epochs=8",
                                 "--config.eval.every_steps=0", "--config.optim.learning_rate=3e-3"),
                 env)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [json.loads(l)["train/loss"] for l in open(os.path.join(workdir, "metrics.jsonl"))
              if "train/loss" in l]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])

    for binary, marker in (("evals.zero_shot", "top1"), ("evals.retrieval", "R@10")):
        result = run([os.sys.executable, "-m", binary, "--workdir", workdir,
                      "--config", "configs/eval.py:tiny"], env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert marker in result.stdout
    outputs = sorted(os.listdir(os.path.join(workdir, "eval")))
    assert any(f.startswith("zero_shot_step") and f.endswith(".json") for f in outputs)
    assert any(f.startswith("retrieval_step") and f.endswith(".md") for f in outputs)
    zero_shot = json.load(open(os.path.join(workdir, "eval",
                                            next(f for f in outputs if f.startswith("zero_shot")
                                                 and f.endswith(".json")))))
    assert set(zero_shot["results"]) == {"synthetic_medical@tiny/test:chest_xray",
                                       "synthetic_medical@tiny/test:histopathology"}


def _wait_for_line(process: subprocess.Popen, needle: str, timeout: float) -> None:
    deadline = time.time() + timeout
    for line in process.stdout:
        if needle in line:
            return
        if time.time() > deadline:
            break
    raise AssertionError(f"never saw {needle!r}")


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigkill_and_sigterm_resume_match_uninterrupted_run(tiny_data_dir, tmp_path):
    env = subprocess_env(num_devices=1)
    args = ("--config.num_epochs=8", "--config.eval.every_steps=0",
            "--config.checkpoint.every_steps=8", "--config.log_every_steps=1")
    reference = str(tmp_path / "reference")
    result = run(tiny_train_args(tiny_data_dir, reference, *args), env)
    assert result.returncode == 0, result.stderr[-3000:]
    total = final_params(reference)["step"]

    resumed = str(tmp_path / "resumed")
    process = _start(tiny_train_args(tiny_data_dir, resumed, *args), env)
    _wait_for_line(process, "step 20/", timeout=240)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = final_params(resumed)["step"]
    assert 8 <= killed_at < total and killed_at % 8 == 0

    # SIGTERM (preemption): a checkpoint at the step it stopped, exit code 0.
    process = _start(tiny_train_args(tiny_data_dir, resumed, *args), env)
    _wait_for_line(process, f"Resumed from checkpoint at step {killed_at}", timeout=240)
    _wait_for_line(process, f"step {killed_at + 11}/", timeout=240)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=240)[0]
    assert process.returncode == 0, output[-3000:]
    assert "Stopped by SIGTERM at step" in output
    stopped_at = final_params(resumed)["step"]
    assert killed_at + 11 <= stopped_at < total

    result = run(tiny_train_args(tiny_data_dir, resumed, *args), env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resumed from checkpoint at step {stopped_at}" in result.stdout
    assert_params_close(final_params(resumed), final_params(reference), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_data_dir, tmp_path):
    args = ("--config.max_steps=4", "--config.eval.every_steps=0",
            "--config.checkpoint.every_steps=2", "--config.batch_size=16")
    single = str(tmp_path / "single")
    result = run(tiny_train_args(tiny_data_dir, single, *args), subprocess_env(num_devices=2))
    assert result.returncode == 0, result.stderr[-3000:]

    import portpicker
    port = portpicker.pick_unused_port()
    multi = str(tmp_path / "multi")
    env = subprocess_env(num_devices=1, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    processes = [
        subprocess.Popen(tiny_train_args(tiny_data_dir, multi, *args,
                                         f"--coordinator_address=localhost:{port}",
                                         "--num_processes=2", f"--process_id={i}"),
                         cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out[-3000:]
    assert_params_close(final_params(multi), final_params(single), rtol=1e-5, atol=1e-6)


def test_user_errors_name_the_field(tiny_data_dir, tmp_path):
    with pytest.raises(UserError, match="config.method"):
        train.setup(tiny_config(tiny_data_dir, method="nope"), str(tmp_path / "a"))
    with pytest.raises(UserError, match="config.batch_size=12"):
        train.setup(tiny_config(tiny_data_dir, batch_size=12), str(tmp_path / "b"))
    with pytest.raises(UserError, match="does_not_exist"):
        train.setup(tiny_config(str(tmp_path / "does_not_exist")), str(tmp_path / "c"))
    with pytest.raises(UserError, match="no_tokenizer_here"):
        train.setup(tiny_config(tiny_data_dir, **{"data.tokenizer": "hf:/no_tokenizer_here"}),
                    str(tmp_path / "d"))


def test_cli_user_error_is_one_line_and_nonzero(tiny_data_dir, tmp_path):
    result = run(tiny_train_args(tiny_data_dir, str(tmp_path), "--config.method=nope"),
                 subprocess_env())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: config.method")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_checkpoint_shape_mismatch_names_the_tensor(tiny_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(tiny_config(tiny_data_dir, max_steps=1), workdir)
    with pytest.raises(UserError, match=r"tensor params/.*has shape"):
        train.setup(tiny_config(tiny_data_dir, max_steps=1, **{"model.embed_dim": 48}),
                    workdir)


def _params_after_steps(data_dir: str, workdir: str, mesh: dict, accum: int = 1):
    """Three steps of batch 32 with every leaf FSDP-sharded (no size floor)."""
    config = tiny_config(data_dir, max_steps=3, batch_size=32, grad_accum_steps=accum,
                         **{"eval.every_steps": 0, "sharding.fsdp_min_size": 0})
    config.mesh.data, config.mesh.fsdp = mesh["data"], mesh["fsdp"]
    state = train.train_and_evaluate(config, workdir)
    return state.params


@pytest.mark.slow
def test_data_parallel_fsdp_and_accumulation_give_the_same_params(tiny_data_dir, tmp_path):
    """Data parallel (8 x 1), FSDP (2 x 4) and 4 micro-batches on a data x fsdp mesh (4 x 2)
    reach the same params in three CLIP steps (the tiny data's variable-length captions
    included): accumulation keeps every negative of the global batch."""
    import jax
    dp = _params_after_steps(tiny_data_dir, str(tmp_path / "dp"), {"data": 8, "fsdp": 1})
    fsdp = _params_after_steps(tiny_data_dir, str(tmp_path / "fsdp"), {"data": 2, "fsdp": 4})
    accumulated = _params_after_steps(tiny_data_dir, str(tmp_path / "accum"),
                                      {"data": 4, "fsdp": 2}, accum=4)
    kernel = fsdp["image"]["block_0"]["mlp"]["fc1"]["kernel"]
    assert "fsdp" in str(kernel.sharding.spec)
    assert len(kernel.addressable_shards) == 8
    assert kernel.addressable_shards[0].data.size * 4 == kernel.size
    for (path, a), b, c in zip(jax.tree_util.tree_flatten_with_path(dp)[0],
                               jax.tree.leaves(fsdp), jax.tree.leaves(accumulated)):
        name = jax.tree_util.keystr(path)
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6,
                                   err_msg=f"fsdp {name}")
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-4, atol=2e-5,
                                   err_msg=f"accumulated {name}")


def test_missing_eval_split_fails_at_start(tiny_data_dir, tmp_path):
    config = tiny_config(tiny_data_dir, **{"eval.split": "synthetic_medical@tiny/nope"})
    with pytest.raises(UserError, match="nope"):
        train.setup(config, str(tmp_path))


@pytest.mark.slow
def test_divergence_stops_with_one_line(tiny_data_dir, tmp_path):
    # A NaN learning rate is refused at start-up now (config.optim.learning_rate must be
    # finite); an absurdly large one still makes the run diverge.
    config = tiny_config(tiny_data_dir, max_steps=2, **{"optim.learning_rate": float("nan"),
                                                        "eval.every_steps": 0})
    with pytest.raises(UserError, match="config.optim.learning_rate must be a finite number"):
        train.train_and_evaluate(config, str(tmp_path))
    config = tiny_config(tiny_data_dir, max_steps=2, **{"optim.learning_rate": 1e30,
                                                        "eval.every_steps": 0})
    with pytest.raises(UserError, match="diverged"):
        train.train_and_evaluate(config, str(tmp_path))
