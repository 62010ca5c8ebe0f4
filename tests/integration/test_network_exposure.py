"""A local run listens on loopback only, keeps its run directory to its owner, and a topology the
cluster cannot hold is refused before any actor starts (cluster/network.py, cluster/resources.py).

The run is real: a local Ray cluster, two DeepSpeed learner ranks (their rendezvous), a vLLM rollout
worker, a reward scorer and the weight-sync group, all started by `start_run` on the tiny model; then
every listening socket of this process and of every process below it is listed.
"""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def listening_sockets() -> list[tuple[str, str, int]]:
    """(process, address, port) of every LISTEN socket of this process and its descendants."""
    import psutil

    me = psutil.Process()
    out = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            name = " ".join(proc.cmdline()[:1]) or proc.name()
            out += [(name, c.laddr.ip, c.laddr.port) for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # "::ffff:127.0.0.1": a dual-stack socket bound to 127.0.0.1
    return (mapped or addr).is_loopback


def run_config(tmp_path, *extra):
    from cluster.config import load_config
    from cluster.validate import validate

    over = [f"model.path={tmp_path}/model", f"logging.run_dir={tmp_path}/run", "logging.progress=false",
            "logging.tensorboard=false", "trainer.total_steps=1", "trainer.prompts_per_step=4", "rollout.n=4",
            "trainer.warm_start.steps=0", *extra]
    return validate(load_config(ROOT / "configs/demo_grpo.yaml", over))


def test_local_run_listens_on_loopback_only_and_keeps_its_directory_private(tmp_path, monkeypatch):
    from cluster.checkpoint import Checkpointer
    from cluster.run_setup import start_run

    monkeypatch.chdir(ROOT)  # the demo config names its data files relative to the repository
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    run = start_run(run_config(tmp_path, "learner.num_ranks=2"))
    try:
        ckpt = Checkpointer(run.dir, keep_last=1).save(0, {"step": 0}, run.learner.save_checkpoint)
        sockets = listening_sockets()
    finally:
        run.shutdown()

    # Ray (GCS, raylet, workers, agents), the learner's DeepSpeed group, the weight-sync group, vLLM
    assert len(sockets) >= 5, sockets
    exposed = [s for s in sockets if not is_loopback(s[1])]
    assert not exposed, f"listening beyond loopback: {exposed}"

    assert stat.S_IMODE(run.dir.stat().st_mode) == 0o700  # other users cannot enter the run directory
    assert ckpt.is_relative_to(run.dir) and any(ckpt.rglob("*"))
    writable = [p for p in run.dir.rglob("*") if p.stat().st_mode & stat.S_IWOTH]
    assert not writable, writable


def test_gpus_asked_on_a_machine_without_them_are_refused_before_any_actor(tmp_path, monkeypatch):
    import ray

    from cluster.config import ConfigError, load_config
    from cluster.run_setup import start_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU for Ray to find, on any machine
    cfg = load_config(None, ["cluster.device=cuda", "learner.gpus_per_rank=1", "learner.num_ranks=2"])
    with pytest.raises(ConfigError) as e:
        start_ray(cfg, tmp_path)
    assert "need 3 GPUs" in str(e.value) and "has 0" in str(e.value) and "cluster.device=cpu" in str(e.value)
    assert not ray.is_initialized()  # refused and shut down: no actor was placed
