"""Run untrusted, model-written Python in a contained subprocess.

What contains the program (full isolation: needs root and util-linux `unshare`, both checked once
by `isolation_support()`):

  process count   RLIMIT_NPROC, enforced because the program runs as a uid of its own (root is
                  exempt from RLIMIT_NPROC); each concurrent sandbox takes a distinct uid from
                  UID_BASE.. (a slot held by a file lock, across processes), so a fork bomb
                  neither escapes the limit nor eats another sandbox's share
  lifetime        a new PID namespace whose init (sandbox_init.py) exits at the wall-clock deadline;
                  the kernel then kills everything left in it (setsid/daemonising does not escape).
                  The host side also kills the whole process group if init itself is late.
  CPU, memory     RLIMIT_CPU (SIGXCPU, then SIGKILL one second later), RLIMIT_AS per process
  files           RLIMIT_FSIZE, RLIMIT_NOFILE; in a private mount namespace every mount is
                  read-only, except a fresh size-limited tmpfs at /tmp (the working directory,
                  owned by the sandbox uid, gone with the namespace) and a fresh /dev/shm;
                  every top-level directory but the system ones in VISIBLE_TOP (so /root, /home,
                  /work, /var, /opt, a cluster's /data ...) is covered by an empty read-only
                  tmpfs, keeping only the interpreter's own installation visible
  network         a new network namespace: only a loopback device that is down
  environment     a scrubbed environment (PATH, LANG, HOME); `python -I -S` ignores PYTHON* vars,
                  the user site and site-packages; other processes' /proc/<pid>/environ are
                  neither visible (own /proc of the PID namespace) nor readable (other uid)
  privileges      uid/gid dropped with supplementary groups cleared (no capabilities left),
                  PR_SET_NO_NEW_PRIVS (setuid binaries grant nothing)
  output          stdout/stderr are read up to `max_output_bytes` each; more kills the program

Not contained: aggregate memory is bounded only by nproc x memory_mb (+ the two tmpfs sizes), not
by a cgroup; world-readable files under /etc, /usr, /lib, /sys can be read; CPU time is per
process (at most nproc x cpu_s, and the wall clock bounds it anyway); the kernel's full syscall
surface is reachable (no seccomp filter).

Without root or `unshare` the sandbox refuses to run (SandboxUnavailable) unless the caller
passes `allow_unisolated=True`, which keeps only the rlimits, the scrubbed environment and the
process-group kill — not safe for untrusted code, meant for trusted tests on a laptop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

INIT = str(Path(__file__).with_name("sandbox_init.py"))
NAMESPACES = ("--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--ipc")
UID_BASE = 2_000_000_000  # far above distribution and container (subuid) ranges
MAX_SLOTS = 256
# Top-level entries left visible; every other top-level directory (home, /root, /work, /opt,
# /var, /run, a cluster's /data ...) is hidden behind an empty read-only tmpfs, and other
# top-level files read as empty. The interpreter's installation stays visible wherever it lives.
VISIBLE_TOP = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc", "sys", "tmp")
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
START_GRACE_S = 3.0  # host-side deadline = wall_s + this (interpreter start-up, namespace teardown)
MAX_STDIN_BYTES = 4096  # the smallest pipe buffer Linux gives, so writing stdin never blocks


class SandboxUnavailable(RuntimeError):
    """Full isolation is not possible here and the caller did not allow running without it."""


class SandboxError(RuntimeError):
    """The sandbox itself failed to set up (not the program): an infrastructure error, not a score."""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 10.0  # wall clock for the program
    cpu_s: int = 5  # RLIMIT_CPU per process
    memory_mb: int = 512  # RLIMIT_AS per process
    nproc: int = 32  # RLIMIT_NPROC for the sandbox uid (processes + threads)
    fsize_mb: int = 16  # RLIMIT_FSIZE: largest file it may write
    nofile: int = 64  # RLIMIT_NOFILE
    tmpfs_mb: int = 64  # size of its /tmp (the working directory) and of /dev/shm
    max_output_bytes: int = 64 * 1024  # per stream; more kills the program

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"sandbox limit {f.name} must be > 0, got {getattr(self, f.name)}")


@dataclasses.dataclass
class SandboxResult:
    exit_code: Optional[int]  # None when the program was killed by a signal or timed out
    signal: Optional[int]
    stdout: str
    stderr: str
    timed_out: bool
    killed_reason: Optional[str]  # "timeout" | "cpu_limit" | "output_limit" | "signal:SIGKILL" | ...
    duration_s: float
    cpu_s: Optional[float]
    isolation: str  # "full" | "none"

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed_reason is None


@functools.lru_cache(maxsize=None)
def isolation_support() -> tuple[bool, str]:
    """(available, why): whether full isolation works on this machine, checked once per process."""
    if os.geteuid() != 0:
        return False, "not root: cannot run the program as a private uid nor mount a private file system"
    unshare = shutil.which("unshare")
    if unshare is None:
        return False, "util-linux 'unshare' not found on PATH"
    try:
        r = subprocess.run([unshare, *NAMESPACES, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"'unshare {' '.join(NAMESPACES)} true' failed: {e}"
    if r.returncode != 0:
        return False, f"'unshare {' '.join(NAMESPACES)} true' failed: {r.stderr.decode(errors='replace').strip()}"
    return True, "root + unshare (net, pid, mount, ipc namespaces) + private uid"


def _slot_dir() -> Path:
    # /run is writable by root only (no symlink games by other users); tempdir as a fallback.
    base = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
    d = base / "relayrl-sandbox-slots"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


@contextlib.contextmanager
def _uid_slot() -> Iterator[int]:
    """A uid no other live sandbox on this machine uses, held for the duration of the block."""
    d = _slot_dir()
    for i in range(MAX_SLOTS):
        fd = os.open(d / f"{i}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield UID_BASE + i
        finally:
            os.close(fd)  # releases the lock
        return
    raise SandboxError(f"all {MAX_SLOTS} sandbox uids are in use")


def _interpreter(python: Optional[str]) -> tuple[str, str]:
    """(real path of the interpreter, its installation prefix kept visible inside the sandbox)."""
    if python is None:
        return os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)
    exe = os.path.realpath(shutil.which(python) or python)
    return exe, os.path.dirname(os.path.dirname(exe))


def run_python(
    code: str,
    limits: SandboxLimits = SandboxLimits(),
    *,
    allow_unisolated: bool = False,
    python: Optional[str] = None,
    visible: Sequence[str] = VISIBLE_TOP,
    stdin: bytes = b"",
) -> SandboxResult:
    """Run `code` as `python -I -S main.py` in the sandbox and report how it ended.

    `stdin` (at most MAX_STDIN_BYTES) is written to the program's stdin, which is then closed; without
    it stdin is /dev/null. code_exec passes its per-call nonce this way: the program text (main.py)
    and the environment stay readable to the code the program runs, a drained pipe does not.

    Raises SandboxUnavailable (no isolation and not allowed to run without) or SandboxError (the
    sandbox failed to start); everything the program itself does ends in a SandboxResult.
    """
    if len(stdin) > MAX_STDIN_BYTES:
        raise ValueError(f"run_python stdin is for a few bytes (at most {MAX_STDIN_BYTES}), got {len(stdin)}; "
                         f"put larger inputs in the program text")
    isolated, why = isolation_support()
    if not isolated and not allow_unisolated:
        raise SandboxUnavailable(f"code sandbox unavailable: {why} (allow_unisolated=True runs without isolation)")
    exe, prefix = _interpreter(python)
    slot = _uid_slot() if isolated else contextlib.nullcontext(None)
    with slot as uid, tempfile.TemporaryDirectory(prefix="relayrl-sbx-") as host_dir:
        code_path = os.path.join(host_dir, "main.py")
        Path(code_path).write_text(code, encoding="utf-8")
        status_r, status_w = os.pipe()
        cfg = {
            "code_path": code_path, "python": exe, "uid": uid, "isolate": isolated,
            "visible": list(visible), "keep": [prefix], "tmpfs_mb": limits.tmpfs_mb, "wall_s": limits.wall_s,
            "status_fd": status_w,
            "limits": {k: getattr(limits, k) for k in ("cpu_s", "memory_mb", "nproc", "fsize_mb", "nofile")},
            "env": {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": "/tmp" if isolated else host_dir},
        }
        argv = [sys.executable, "-I", "-S", INIT, json.dumps(cfg)]
        if isolated:
            argv = [shutil.which("unshare"), *NAMESPACES, "--", *argv]
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"}, cwd="/",
                pass_fds=(status_w,), start_new_session=True,  # one process group to kill, away from ours
            )
        finally:
            os.close(status_w)
        if stdin:
            with contextlib.suppress(BrokenPipeError):  # the program is gone already: its result says how
                os.write(proc.stdin.fileno(), stdin)  # fits in any pipe buffer, so it never blocks
            proc.stdin.close()
        with os.fdopen(status_r, "rb") as status_pipe:
            out, err, host_reason = _collect(proc, start + limits.wall_s + START_GRACE_S, limits.max_output_bytes)
            status = _parse_status(status_pipe.read())
        duration = time.monotonic() - start
    return _result(status, host_reason, proc.returncode, out, err, duration, limits, isolated)


def _result(status: dict, host_reason: Optional[str], returncode: Optional[int], out: bytes, err: bytes,
            duration: float, limits: SandboxLimits, isolated: bool) -> SandboxResult:
    """How the program ended, from the status the sandbox's init wrote and what the host saw."""
    if "setup_error" in status:
        raise SandboxError(f"sandbox set-up failed: {status['setup_error']}")
    if not status and host_reason is None:
        raise SandboxError(f"sandbox exited without a status (exit {returncode}): {err[-500:]!r}")
    timed_out = bool(status.get("timed_out")) or host_reason == "timeout"
    sig = status.get("signal")
    reason = host_reason or ("timeout" if timed_out else None)
    if reason is None and sig is not None:
        cpu_out = sig == signal.SIGXCPU or (sig == signal.SIGKILL and (status.get("cpu_s") or 0) >= limits.cpu_s)
        reason = "cpu_limit" if cpu_out else f"signal:{signal.Signals(sig).name}"
    return SandboxResult(
        exit_code=None if reason else status.get("exit_code"),
        signal=sig,
        stdout=out.decode("utf-8", errors="replace"),
        stderr=err.decode("utf-8", errors="replace"),
        timed_out=timed_out,
        killed_reason=reason,
        duration_s=duration,
        cpu_s=status.get("cpu_s"),
        isolation="full" if isolated else "none",
    )


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, Optional[str]]:
    """Read stdout/stderr until both close; past `deadline` or `cap` bytes on a stream, kill the
    process group. Returns (stdout, stderr, reason the host killed it or None)."""
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    reason = None
    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() and reason is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = "timeout"
                break
            for key, _ in sel.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                buf += chunk[: cap - len(buf)]
                if len(buf) >= cap:
                    reason = "output_limit"
    if reason is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # unshare and our init: the PID namespace goes with them
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), reason


def _parse_status(raw: bytes) -> dict:
    status: dict = {}
    for line in raw.decode(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            status.update(json.loads(line))
    return status
