"""Logs are for people: the console shows relayrl's own lines; library output goes to RUN_DIR/logs/.

- Every Ray worker process of the job (rollout workers, reward scorers, learner ranks) sends its
  stdout and stderr — vLLM's and DeepSpeed's start-up chatter, deprecation warnings, progress bars —
  to RUN_DIR/logs/actors.log (`redirect_worker_output`, Ray's worker_process_setup_hook), so no
  actor prefix or library warning lands between the step lines. Errors still reach the driver: an
  actor's exception travels back with the call that failed.
- The driver's own library loggers and Python warnings go to RUN_DIR/logs/driver.log.

`RELAYRL_LOG_TO_CONSOLE=1` keeps everything on the console instead (debugging).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import warnings
from pathlib import Path

LOG_DIR_ENV = "RELAYRL_LOG_DIR"


def to_console() -> bool:
    return os.environ.get("RELAYRL_LOG_TO_CONSOLE", "") not in ("", "0")


def worker_runtime_env(run_dir: Path) -> dict:
    """The job-wide runtime_env that routes every worker's output to RUN_DIR/logs/actors.log."""
    if to_console():
        return {}
    log_dir = Path(run_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    return {"env_vars": {LOG_DIR_ENV: str(log_dir.resolve())},
            "worker_process_setup_hook": "cluster.logs.redirect_worker_output"}


def redirect_worker_output() -> None:
    """Runs in each Ray worker process at start: point fds 1 and 2 at RUN_DIR/logs/actors.log."""
    log_dir = os.environ.get(LOG_DIR_ENV)
    if not log_dir:
        return
    fd = os.open(os.path.join(log_dir, "actors.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def quiet_driver(run_dir: Path) -> Path:
    """Library loggers and warnings of the driver process to RUN_DIR/logs/driver.log; returns the log dir."""
    log_dir = Path(run_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    if to_console():
        return log_dir
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    handler = logging.FileHandler(log_dir / "driver.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):  # a previous run's file in this process (tests run several)
        root.removeHandler(h)
        h.close()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    ours = logging.getLogger("relayrl")  # relayrl's own warnings (a replaced actor ...): console and file
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in ours.handlers):
        console = logging.StreamHandler()
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter("relayrl: %(message)s"))
        ours.addHandler(console)
    warnings.simplefilter("default")
    for name in ("ray", "transformers", "deepspeed", "vllm", "torch"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
    if importlib.util.find_spec("accelerate") is not None:
        # With accelerate installed (the parity extra), transformers imports it and it imports DeepSpeed,
        # whose logger prints its accelerator choice to stdout: import it now, quietly, into the log file.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import deepspeed  # noqa: F401
        ds = logging.getLogger("DeepSpeed")
        ds.handlers.clear()
        ds.propagate = True
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
    except ImportError:
        pass
    return log_dir
