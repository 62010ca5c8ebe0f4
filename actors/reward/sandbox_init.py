"""PID 1 of one code sandbox: prepares the namespaces as root, runs the untrusted program as an
unprivileged uid, enforces the wall clock, and reports how the program ended.

Run by `sandbox.py` as `unshare --net --pid --fork --kill-child --mount --mount-proc --ipc --
python -I -S sandbox_init.py CONFIG_JSON`; stdlib only, never imported by the project.

Why an init of our own rather than exec'ing the program directly:
  - mounts (fresh /tmp, read-only everything, hidden home/work trees) must be made as root
    *inside* the new mount namespace, before privileges are dropped;
  - when PID 1 of a PID namespace exits the kernel kills every process left in it, so a program
    that forks, daemonises or calls setsid() cannot outlive this process: its exit is the
    sandbox's hard stop, and it comes at the wall-clock deadline even if the scorer that started
    us has died;
  - PID 1 ignores signals it has no handler for, so the program must not be PID 1 itself.

Without `isolate` (the explicitly unisolated fallback) it runs as a plain child process and
only applies rlimits and the scrubbed environment.
"""

import ctypes
import json
import os
import resource
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_NOATIME, MS_NODIRATIME, MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC = 1024, 2048, 32, 4096, 8192, 16384
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
PR_SET_NO_NEW_PRIVS = 38
WORKDIR = "/tmp"  # inside the namespace: a fresh, size-limited tmpfs owned by the sandbox uid

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source, target, fstype, flags, data=None):
    if _libc.mount(
        source.encode() if source else None, target.encode(), fstype.encode() if fstype else None,
        ctypes.c_ulong(flags), data.encode() if data else None,
    ) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount({source!r}, {target!r}, {fstype!r}): {os.strerror(err)}")


def _mounts():
    """(mount point, per-mount flags) from this namespace's mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            target = fields[4].encode().decode("unicode_escape")  # octal escapes such as \040
            opts = set(fields[5].split(","))
            flags = 0
            for name, bit in (("nosuid", MS_NOSUID), ("nodev", MS_NODEV), ("noexec", MS_NOEXEC),
                              ("noatime", MS_NOATIME), ("nodiratime", MS_NODIRATIME), ("relatime", MS_RELATIME)):
                if name in opts:
                    flags |= bit
            if not flags & (MS_NOATIME | MS_RELATIME):
                flags |= MS_STRICTATIME
            out.append((target, flags))
    return out


def _under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def _report(fd, status):
    """One JSON object per line on the status pipe (the program has no access to it)."""
    os.write(fd, (json.dumps(status) + "\n").encode())


def hidden_trees(visible):
    """Every top-level directory except the system ones the interpreter needs (an allow-list, so an
    unknown machine's /data, /scratch or job directories are hidden by default)."""
    return sorted(f"/{name}" for name in os.listdir("/")
                  if name not in visible and os.path.isdir(f"/{name}") and not os.path.islink(f"/{name}"))


def isolate_filesystem(cfg, code):
    """Make the namespace's file system read-only except a fresh /tmp (the workdir) and /dev/shm,
    and hide whole trees (home, work, data directories) behind empty read-only tmpfs mounts,
    keeping only the interpreter's installation visible inside them."""
    uid = cfg["uid"]
    _mount("tmpfs", WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmpfs_mb']}m,mode=700,uid={uid},gid={uid}")
    hide = hidden_trees(cfg["visible"])
    staged = []  # interpreter trees under a hidden tree: bind them aside first, move them back after
    for i, keep in enumerate(cfg["keep"]):
        if any(_under(keep, h) for h in hide):
            stage = f"{WORKDIR}/.stage{i}"
            os.mkdir(stage)
            _mount(keep, stage, None, MS_BIND | MS_REC)
            staged.append((stage, keep))
    for target, flags in reversed(_mounts()):  # everything already mounted becomes read-only
        if target == WORKDIR or target.startswith(f"{WORKDIR}/"):
            continue
        try:
            _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | flags)
        except OSError:
            pass  # a mount stacked under another one: unreachable anyway
    for h in hide:
        _mount("tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
        for stage, keep in staged:
            if _under(keep, h):
                os.makedirs(keep, mode=0o755, exist_ok=True)
                _mount(stage, keep, None, MS_MOVE)
                _mount(None, keep, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
        _mount(None, h, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=64k,mode=755")
    for stage, _ in staged:
        os.rmdir(stage)
    for name in os.listdir("/"):  # top-level files (machine descriptions and the like) read as empty
        path = f"/{name}"
        if os.path.isfile(path) and not os.path.islink(path) and name not in cfg["visible"]:
            _mount("/dev/null", path, None, MS_BIND)
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
    if os.path.isdir("/dev/shm"):  # POSIX semaphores (multiprocessing) need it; fresh and small
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmpfs_mb']}m,mode=1777")
    with open(f"{WORKDIR}/main.py", "wb") as f:
        f.write(code)
    os.chmod(f"{WORKDIR}/main.py", 0o444)


def run_program(cfg, workdir):
    """In the forked child: limits, privilege drop, exec. Never returns."""
    status_fd = cfg["status_fd"]
    try:
        os.setsid()
        os.chdir(workdir)
        lim = cfg["limits"]
        mb = 1 << 20
        for res, value in ((resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1)),
                           (resource.RLIMIT_AS, lim["memory_mb"] * mb),
                           (resource.RLIMIT_NPROC, lim["nproc"]),
                           (resource.RLIMIT_FSIZE, lim["fsize_mb"] * mb),
                           (resource.RLIMIT_NOFILE, lim["nofile"]),
                           (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(res, value if isinstance(value, tuple) else (value, value))
        if cfg["uid"] is not None:
            uid = cfg["uid"]
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)  # also clears every capability
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        os.set_inheritable(status_fd, False)  # closed by exec; open only if exec fails
        os.closerange(3, status_fd)
        os.closerange(status_fd + 1, 1 << 16)
        py = cfg["python"]
        os.execve(py, [py, "-I", "-S", "main.py"], cfg["env"])
    except BaseException as e:  # noqa: BLE001 - report any set-up failure, then die
        try:
            _report(status_fd, {"setup_error": f"{type(e).__name__}: {e}"})
        finally:
            os._exit(126)


class _WallClock(Exception):
    pass


def _on_alarm(signum, frame):
    raise _WallClock()


def main():
    cfg = json.loads(sys.argv[1])
    status_fd = cfg["status_fd"]
    with open(cfg["code_path"], "rb") as f:
        code = f.read()
    status = {}
    try:
        if cfg["isolate"]:
            isolate_filesystem(cfg, code)
            workdir = WORKDIR
        else:
            workdir = os.path.dirname(cfg["code_path"])
    except OSError as e:
        _report(status_fd, {"setup_error": f"filesystem: {e}"})
        os._exit(126)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, cfg["wall_s"])
    child = os.fork()
    if child == 0:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        run_program(cfg, workdir)
    try:
        while True:  # as PID 1 we also reap the orphans the program leaves behind
            pid, wstatus, rusage = os.wait4(-1, 0)
            if pid == child:
                signal.setitimer(signal.ITIMER_REAL, 0)
                status["cpu_s"] = rusage.ru_utime + rusage.ru_stime
                status["maxrss_kb"] = rusage.ru_maxrss
                if os.WIFSIGNALED(wstatus):
                    status["signal"] = os.WTERMSIG(wstatus)
                else:
                    status["exit_code"] = os.WEXITSTATUS(wstatus)
                break
    except _WallClock:
        status["timed_out"] = True
        try:  # isolated: our exit below kills the whole PID namespace; unisolated: the program's session
            os.killpg(child, signal.SIGKILL)
            os.waitpid(child, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    except ChildProcessError:
        status["setup_error"] = "lost the program process"
    _report(status_fd, status)
    os._exit(0)


if __name__ == "__main__":
    main()
