"""The workdir lock: one trainer per workdir, stale locks taken over, only ours released."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from medclip_jax import workdir_lock
from medclip_jax.errors import UserError


def write_lock(workdir, **holder) -> str:
    os.makedirs(workdir, exist_ok=True)
    path = workdir_lock.lock_path(str(workdir))
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": "then",
                   **holder}, f)
    return path


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_acquire_then_release_removes_the_file(tmp_path):
    mine = workdir_lock.acquire(str(tmp_path), 120)
    path = workdir_lock.lock_path(str(tmp_path))
    assert workdir_lock.read_holder(path) == mine and mine["pid"] == os.getpid()
    workdir_lock.release(str(tmp_path), mine)
    assert not os.path.exists(path)


def test_a_live_holder_is_refused_in_one_line_naming_it(tmp_path):
    write_lock(tmp_path, pid=os.getpid(), started="2026-12-07T10:00:00+00:00")
    with pytest.raises(UserError) as error:
        workdir_lock.acquire(str(tmp_path), 120)
    message = str(error.value)
    assert "in use by another trainer" in message and f"pid {os.getpid()}" in message
    assert socket.gethostname() in message and "\n" not in message


def test_a_live_holder_on_another_host_is_refused_while_its_heartbeat_is_fresh(tmp_path):
    write_lock(tmp_path, host="some-other-node", pid=1)
    with pytest.raises(UserError, match="some-other-node"):
        workdir_lock.acquire(str(tmp_path), 120)


def test_a_dead_pid_on_this_host_is_stale_and_taken_over(tmp_path, capsys):
    pid = dead_pid()
    write_lock(tmp_path, pid=pid)
    mine = workdir_lock.acquire(str(tmp_path), 120)
    assert mine["pid"] == os.getpid()
    assert f"pid {pid} no longer runs on this host" in capsys.readouterr().out


def test_an_old_heartbeat_on_another_host_is_stale(tmp_path, capsys):
    path = write_lock(tmp_path, host="requeued-from-node", pid=1)
    old = time.time() - 300
    os.utime(path, (old, old))
    workdir_lock.acquire(str(tmp_path), 120)
    assert "heartbeat stopped" in capsys.readouterr().out


def test_a_zombie_counts_as_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while time.time() < deadline:  # exited but not reaped: a zombie
        with open(f"/proc/{child.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)
    assert not workdir_lock.pid_running(child.pid)
    child.wait()
    assert not workdir_lock.pid_running(child.pid)
    assert workdir_lock.pid_running(os.getpid())


def test_release_leaves_someone_elses_lock(tmp_path):
    mine = workdir_lock.acquire(str(tmp_path), 120)
    path = write_lock(tmp_path, pid=12345, host="another")
    workdir_lock.release(str(tmp_path), mine)
    assert os.path.exists(path)


def test_hold_releases_on_an_exception_and_heartbeats(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.05)
    path = workdir_lock.lock_path(str(tmp_path))
    with pytest.raises(RuntimeError):
        with workdir_lock.hold(str(tmp_path), 120):
            old = time.time() - 100
            os.utime(path, (old, old))
            time.sleep(0.5)
            assert time.time() - os.path.getmtime(path) < 50  # the heartbeat refreshed it
            raise RuntimeError("boom")
    assert not os.path.exists(path)


def test_lock_stale_s_is_checked():
    from medclip_jax import settings
    with pytest.raises(UserError, match="config.checkpoint.lock_stale_s must be"):
        settings.CheckpointSettings.from_config({"lock_stale_s": 5})
