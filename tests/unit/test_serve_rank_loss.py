"""The pieces that keep an MPI serve rank alive when a peer dies (llmctl.serve.rankloss),
each against real processes: zombie detection, the rank supervisor that turns a
death by signal into an ordinary exit status, and the output relay that stops
writing to the launcher's pipes once a peer is lost. Plus the serve config's
`mpi_mode` key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from llmctl.errors import ConfigError
from llmctl.serve.rankloss import pid_gone


def test_pid_gone_sees_a_killed_child_before_it_is_reaped():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not pid_gone(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not pid_gone(child.pid):  # a zombie: os.kill(pid, 0) alone still succeeds
            assert time.monotonic() < deadline, "a killed, unreaped child still looks alive"
            time.sleep(0.01)
        os.kill(child.pid, 0)  # still there as a zombie: the check above did not wait for reaping
    finally:
        child.kill()
        child.wait()
    assert pid_gone(child.pid)


SUPERVISED = textwrap.dedent("""
    import os, signal, sys
    from llmctl.serve.rankloss import supervise_rank
    code = supervise_rank()
    if code is not None:          # the supervisor: report what the child did
        print("supervisor saw", code, flush=True)
        sys.exit(code)
    print("child", os.environ.get("LLMCTL_RANK_CHILD"), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_rank_killed_by_a_signal_ends_its_supervisor_with_an_ordinary_exit_status():
    r, w = os.pipe()  # stands in for hydra's PMI socket: it must reach the child
    env = dict(os.environ, PMI_FD=str(w), PMI_SIZE="2", PMI_RANK="1")
    env.pop("LLMCTL_RANK_CHILD", None)
    try:
        p = subprocess.run([sys.executable, "-c", SUPERVISED], env=env, pass_fds=(w,),
                           capture_output=True, text=True, timeout=60)
    finally:
        os.close(r)
        os.close(w)
    assert "child 1" in p.stdout, p.stdout + p.stderr
    assert "supervisor saw 137" in p.stdout
    assert p.returncode == 137  # exited, not signalled: hydra's proxy kills no one for it


def test_no_supervisor_outside_hydra_or_on_one_rank():
    env = dict(os.environ, PMI_SIZE="1", PMI_FD="0")
    env.pop("LLMCTL_RANK_CHILD", None)
    p = subprocess.run([sys.executable, "-c", SUPERVISED], env=env, capture_output=True, text=True,
                       timeout=60)
    assert "child None" in p.stdout and "supervisor" not in p.stdout
    assert p.returncode == -signal.SIGKILL


GUARDED = textwrap.dedent("""
    import os, sys, time
    from llmctl.serve import rankloss
    rankloss.OutputGuard(3).install()
    print("before the loss", flush=True)
    time.sleep(0.3)
    rankloss.PEER_LOST.set()
    print("after the loss", flush=True)
    print("on stderr too", file=sys.stderr, flush=True)
    time.sleep(0.5)
""")


def test_output_goes_to_a_log_file_once_a_peer_is_lost(tmp_path):
    env = dict(os.environ, LLMCTL_RUN_DIR=str(tmp_path))
    p = subprocess.run([sys.executable, "-c", GUARDED], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "before the loss" in p.stdout
    assert "after the loss" not in p.stdout and "on stderr too" not in p.stderr
    logs = list((tmp_path / "logs").glob("llmctl-serve-rank3-*.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert "after the loss" in text and "on stderr too" in text and "before" not in text


def test_serve_config_mpi_mode_is_validated(tmp_path):
    from llmctl.config.base import load_config
    from llmctl.config.serve import ServeConfig

    good = tmp_path / "serve.toml"
    good.write_text('mpi_mode = "dp"\n')
    assert load_config(good, ServeConfig).mpi_mode == "dp"
    bad = tmp_path / "bad.toml"
    bad.write_text('mpi_mode = "pp"\n')
    with pytest.raises(ConfigError) as e:
        load_config(bad, ServeConfig)
    assert "bad.toml" in str(e.value) and "mpi_mode" in str(e.value)


def test_waits_spin_only_when_the_nodes_ranks_fit_its_cpus(monkeypatch):
    from llmctl.errors import LlmctlError
    from llmctl.serve import rankloss

    monkeypatch.setattr(rankloss, "SPIN_S", 0.0)
    monkeypatch.delenv("LLMCTL_MPI_SPIN_US", raising=False)
    cpus = len(os.sched_getaffinity(0))
    assert rankloss.set_spin(cpus) > 0
    assert rankloss.set_spin(cpus + 1) == 0.0  # oversubscribed: sleep between polls
    monkeypatch.setenv("LLMCTL_MPI_SPIN_US", "50")
    assert rankloss.set_spin(cpus + 1) == pytest.approx(50e-6)
    for bad in ("fast", "-1", "2e6"):
        monkeypatch.setenv("LLMCTL_MPI_SPIN_US", bad)
        with pytest.raises(LlmctlError) as e:
            rankloss.set_spin(1)
        assert "LLMCTL_MPI_SPIN_US" in str(e.value)


def test_a_rank_lost_on_another_host_is_named_as_far_as_can_be_known():
    from llmctl.serve.rankloss import remote_loss

    ranks = [("node1", 10), ("node2", 20)]
    assert remote_loss(ranks, "node1", [1]).startswith("rank 1 on node2 (pid 20) is lost")
    ranks = [("node1", 10), ("node1", 11), ("node2", 20), ("node3", 30)]
    msg = remote_loss(ranks, "node1", [1, 2, 3])  # rank 1 is on this host, and running
    assert msg.startswith("one of ranks 2, 3 on node2, node3 is lost") and "every rank on node1" in msg
