"""The multi-process watch's bookkeeping, on a fake key-value store (the real one needs a
multi-process job: `scripts/faults/processes.py` kills a process of a real one)."""

import pytest

from medclip_jax import peer_watch


class FakeStore:
    def __init__(self):
        self.values: dict[str, str] = {}

    def key_value_set(self, key, value, allow_overwrite=False):
        self.values[key] = value

    def key_value_try_get(self, key):
        if key not in self.values:
            raise RuntimeError(f"NOT_FOUND: {key}")
        return self.values[key]


@pytest.fixture
def store(monkeypatch):
    fake = FakeStore()
    monkeypatch.setattr(peer_watch, "_client", lambda: fake)
    return fake


def watch_of_process_0(count: int, timeout_s: float) -> peer_watch.PeerWatch:
    watch = peer_watch.PeerWatch.__new__(peer_watch.PeerWatch)
    watch.timeout_s, watch.me, watch.count = timeout_s, 0, count
    watch.peers = list(range(1, count))
    watch._seen = {}
    import threading
    watch._stopping = threading.Event()
    return watch


def test_a_peer_is_silent_only_after_its_counter_stops_for_the_timeout(store):
    watch = watch_of_process_0(3, timeout_s=10)
    store.values.update({"medclip_jax/alive/1": "1", "medclip_jax/alive/2": "1"})
    assert watch.silent_peers(0.0) == []
    store.values["medclip_jax/alive/1"] = "2"        # 1 beats, 2 stalls
    assert watch.silent_peers(9.0) == []
    store.values["medclip_jax/alive/1"] = "3"
    assert watch.silent_peers(10.5) == [2]
    store.values["medclip_jax/done/2"] = "1"         # a finished peer is never lost
    store.values["medclip_jax/alive/1"] = "4"
    assert watch.silent_peers(30.0) == []
    assert watch.silent_peers(41.0) == [1]           # 1 stalled since 30


def test_a_peer_that_never_started_is_silent_after_the_timeout(store):
    watch = watch_of_process_0(2, timeout_s=5)
    assert watch.silent_peers(0.0) == []
    assert watch.silent_peers(6.0) == [1]


def test_lost_peers_after_an_error(store, monkeypatch):
    watch = watch_of_process_0(3, timeout_s=5)
    store.values.update({"medclip_jax/alive/0": "7", "medclip_jax/alive/1": "4",
                         "medclip_jax/alive/2": "4"})
    monkeypatch.setattr(peer_watch.time, "sleep",
                        lambda _: store.values.update({"medclip_jax/alive/2": "5"}))
    assert watch.lost_peers(wait_s=0) == [1]
    store.values.clear()  # the coordinator's store is gone
    assert watch.lost_peers(wait_s=0) is None


def test_one_process_runs_no_watch_and_exits_normally():
    assert peer_watch._WATCH is None
    peer_watch.exit_on_error(RuntimeError("x"))  # returns: the caller re-raises
    with pytest.raises(SystemExit) as exited:
        peer_watch.exit_now(2)
    assert exited.value.code == 2
    assert peer_watch.jax_heartbeat_timeout(60) == 90
