"""The code sandbox contains hostile programs: each attack below is stopped and scores 0 through
the `code_exec` reward; a correct solution scores 1. Small limits keep each test to seconds.

Needs full isolation (root + util-linux unshare); elsewhere the containment tests skip and the
test of the refusal path still runs.
"""

import os
import socket
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from actors.reward import sandbox
from actors.reward.sandbox import MAX_SLOTS, UID_BASE, SandboxLimits, SandboxUnavailable, run_python
from actors.reward.scorer import RewardScorer
from actors.types import Sample

pytestmark = pytest.mark.integration

ISOLATED, WHY = sandbox.isolation_support()
needs_isolation = pytest.mark.skipif(not ISOLATED, reason=f"no sandbox isolation here: {WHY}")
LIMITS = dict(wall_s=3.0, cpu_s=1, memory_mb=256, nproc=16)
SMALL = SandboxLimits(**LIMITS)


def score(code: str, tests=()) -> Sample:
    completion = f"Here is my solution.\n```python\n{textwrap.dedent(code)}\n```\n"
    s = Sample("q", "write code", [1], completion, [1], [-0.1], "stop", 0, meta={"tests": list(tests)})
    RewardScorer([{"name": "code_exec", "params": LIMITS}], timeout_s=30).score([s])
    assert s.reward_error is None, s.reward_error
    return s


def sandbox_processes() -> list[int]:
    """Host pids still running as a sandbox uid (there must be none after a run)."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uid = int(next(line for line in status.read_text().splitlines() if line.startswith("Uid:")).split()[1])
        except (OSError, StopIteration, ValueError):
            continue
        if UID_BASE <= uid < UID_BASE + MAX_SLOTS:
            pids.append(int(status.parent.name))
    return pids


@needs_isolation
def test_correct_solution_scores_one_and_wrong_one_zero():
    tests = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]
    good = score("def add(a, b):\n    return a + b", tests)
    assert good.reward == 1.0 and good.reward_components["code_exec/failed"] == 0.0
    bad = score("def add(a, b):\n    return a - b", tests)
    assert bad.reward == 0.0 and bad.reward_components["code_exec/failed"] == 1.0


@needs_isolation
def test_infinite_loop_is_stopped_by_the_cpu_limit():
    start = time.monotonic()
    s = score("while True:\n    pass")
    assert s.reward == 0.0 and s.reward_components["code_exec/killed"] == 1.0
    assert time.monotonic() - start < LIMITS["wall_s"] + 2
    r = run_python("while True:\n    pass", SMALL)
    assert r.killed_reason == "cpu_limit" and r.cpu_s >= 0.9


@needs_isolation
def test_sleeping_program_is_stopped_by_the_wall_clock():
    start = time.monotonic()
    s = score("import time\ntime.sleep(60)")
    assert s.reward == 0.0 and s.reward_components["code_exec/timeout"] == 1.0
    assert time.monotonic() - start < LIMITS["wall_s"] + 2


@needs_isolation
def test_memory_bomb_is_contained():
    s = score("blob = bytearray(4 << 30)")
    assert s.reward == 0.0
    r = run_python("chunks = []\nwhile True:\n    chunks.append(b'x' * (16 << 20))", SMALL)
    assert not r.ok and "MemoryError" in r.stderr


@needs_isolation
def test_fork_bomb_is_contained_and_leaves_no_process():
    start = time.monotonic()
    s = score("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    assert s.reward == 0.0
    assert time.monotonic() - start < LIMITS["wall_s"] + 3
    # the process limit really applies (we run as root, which RLIMIT_NPROC would not stop):
    r = run_python("import os\nwhile True:\n    os.fork()", SMALL)
    assert not r.ok and "BlockingIOError" in r.stderr
    assert sandbox_processes() == []


@needs_isolation
def test_daemonised_child_does_not_outlive_the_sandbox():
    r = run_python("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent exits')", SMALL)
    assert r.ok and r.stdout.strip() == "parent exits"
    assert sandbox_processes() == []


@needs_isolation
def test_writing_outside_its_directory_fails():
    tag = f"relayrl_escape_{uuid.uuid4().hex}"
    targets = [f"/tmp/{tag}", f"/var/tmp/{tag}", f"/dev/shm/{tag}", f"/work/{tag}",
               str(Path(__file__).resolve().parent / tag), f"{Path.home()}/{tag}", f"/{tag}"]
    s = score(f"""
        failed = 0
        for path in {targets!r}:
            try:
                with open(path, "w") as f:
                    f.write("escaped")
            except OSError:
                failed += 1
        open("inside.txt", "w").write("its own directory is writable")
        raise SystemExit(1 if failed else 0)
    """)
    assert s.reward == 0.0
    for path in targets:
        assert not os.path.exists(path), f"sandboxed code wrote {path}"
    r = run_python(f"open('/tmp/{tag}', 'w').write('x'); print(open('/tmp/{tag}').read())", SMALL)
    assert r.ok and r.stdout.strip() == "x"  # its private /tmp ...
    assert not os.path.exists(f"/tmp/{tag}")  # ... is not the host's


@needs_isolation
def test_parent_environment_is_not_readable(monkeypatch):
    secret = f"relayrl-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("RELAYRL_TEST_SECRET", secret)
    code = f"""
        import os
        seen = [repr(dict(os.environ))]
        for pid in sorted({{os.getppid(), 1, {os.getpid()}}}):
            try:
                seen.append(open(f"/proc/{{pid}}/environ", "rb").read().decode(errors="replace"))
            except OSError as e:
                seen.append(f"/proc/{{pid}}/environ: {{e}}")
        print("\\n".join(seen))
        assert any("RELAYRL_TEST_SECRET" in text for text in seen), "no secret found"
    """
    s = score(code)
    assert s.reward == 0.0
    r = run_python(textwrap.dedent(code), SMALL)
    assert secret not in r.stdout + r.stderr
    assert "Permission denied" in r.stdout or "No such file" in r.stdout
    assert set(eval(r.stdout.splitlines()[0])) <= {"PATH", "LANG", "HOME"}


@needs_isolation
def test_no_network_even_to_loopback():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        s = score(f"""
            import socket
            conn = socket.create_connection(("127.0.0.1", {port}), timeout=2)
            conn.sendall(b"exfiltrated")
        """)
        assert s.reward == 0.0
        listener.settimeout(0.5)
        with pytest.raises(socket.timeout):
            listener.accept()


@needs_isolation
def test_output_flood_is_cut():
    r = run_python("while True:\n    print('x' * 1000)", SMALL)
    assert r.killed_reason == "output_limit" and len(r.stdout) <= SMALL.max_output_bytes


def test_refuses_to_run_without_isolation_unless_allowed(monkeypatch):
    monkeypatch.setattr(sandbox, "isolation_support", lambda: (False, "not root"))
    with pytest.raises(SandboxUnavailable, match="not root"):
        run_python("print(1)", SMALL)
    r = run_python("import os\nprint(sorted(os.environ))", SMALL, allow_unisolated=True)
    assert r.ok and r.isolation == "none" and r.stdout.strip() == "['HOME', 'LANG', 'PATH']"
    s = Sample("q", "p", [1], "```python\nprint(1)\n```", [1], [0.0], "stop", 0, meta={"tests": []})
    RewardScorer([{"name": "code_exec"}]).score([s])
    assert s.reward == 0.0 and s.reward_error.startswith("error:code_exec:SandboxUnavailable")


@needs_isolation
def test_concurrent_sandboxes_get_distinct_uids():
    """Each live sandbox has a uid of its own, so one program's fork bomb cannot use up another's
    process limit, and no two sandboxes can see or signal each other's processes."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run_python("import os, time\ntime.sleep(0.3)\nprint(os.getuid())", SMALL), range(4)))
    assert all(r.ok for r in results)
    uids = {int(r.stdout) for r in results}
    assert len(uids) == 4 and all(UID_BASE <= u < UID_BASE + MAX_SLOTS for u in uids)
