"""The code sandbox contains hostile programs: each attack below is stopped and scores 0 through
the `code_exec` reward; a correct solution scores 1. Small limits keep each test to seconds.

The second half attacks the scoring itself (actors/reward/code_harness.py): programs that exit
early, hook exits or exceptions, patch builtins, return objects equal to anything, or print fake
results. Each scores 0 and is counted under the diagnostic that says why.

Needs full isolation (root + util-linux unshare); elsewhere the containment tests skip and the
test of the refusal path still runs.
"""

import base64
import marshal
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


def score(code: str, tests=("assert True",)) -> Sample:
    completion = f"Here is my solution.\n```python\n{textwrap.dedent(code)}\n```\n"
    s = Sample("q", "write code", [1], completion, [1], [-0.1], "stop", 0, meta={"tests": tests})
    RewardScorer([{"name": "code_exec", "params": LIMITS}], timeout_s=30).score([s])
    assert s.reward_error is None, s.reward_error
    return s


def outcome(s: Sample) -> str:
    """"passed" or the one code_exec diagnostic that is 1 (exactly one is)."""
    on = [k.split("/", 1)[1] for k, v in s.reward_components.items() if k.startswith("code_exec/") and v == 1.0]
    assert len(on) + (s.reward == 1.0) == 1, s.reward_components
    return on[0] if on else "passed"


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
    assert good.reward == 1.0 and outcome(good) == "passed"
    bad = score("def add(a, b):\n    return a - b", tests)
    assert bad.reward == 0.0 and outcome(bad) == "failed"
    assert outcome(score("def add(a, b):\n    raise ValueError('no')", tests)) == "failed"
    assert outcome(score("def add(a, b) return a + b", tests)) == "failed"  # a syntax error


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
    s = Sample("q", "p", [1], "```python\nprint(1)\n```", [1], [0.0], "stop", 0, meta={"tests": ["assert True"]})
    RewardScorer([{"name": "code_exec"}]).score([s])
    assert s.reward == 0.0 and s.reward_error.startswith("error:code_exec:SandboxUnavailable")
    # allowed, the harness judges the same way without isolation
    unisolated = RewardScorer([{"name": "code_exec", "params": {**LIMITS, "allow_unisolated": True}}], timeout_s=30)
    good, cheat = (Sample("q", "p", [1], f"```python\n{code}\n```", [1], [0.0], "stop", 0,
                          meta={"tests": ["assert add(2, 3) == 5"]})
                   for code in ("def add(a, b):\n    return a + b", "import sys\nsys.exit(0)"))
    unisolated.score([good, cheat])
    assert good.reward == 1.0 and cheat.reward == 0.0 and cheat.reward_components["code_exec/early_exit"] == 1.0


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


# ---- attacks on the scoring: success is decided by the scorer from the harness's frames ---------
ADD_TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]
WRONG_ADD = "def add(a, b):\n    return a - b\n"


@needs_isolation
def test_exiting_before_the_tests_is_an_early_exit():
    for cheat in ("import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit(0)",
                  "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)"):
        s = score(f"def add(a, b):\n    return a + b\n{cheat}\n", ADD_TESTS)
        assert s.reward == 0.0, cheat
        assert outcome(s) == ("killed" if "SIGTERM" in cheat else "early_exit"), cheat


@needs_isolation
def test_exiting_from_inside_the_function_under_test_is_an_early_exit():
    for cheat in ("raise SystemExit(0)", "import sys; sys.exit(0)", "import os; os._exit(0)"):
        s = score(f"def add(a, b):\n    {cheat}\n", ADD_TESTS)
        assert s.reward == 0.0 and outcome(s) == "early_exit", cheat


@needs_isolation
def test_exit_and_exception_hooks_do_not_turn_a_failure_into_a_pass():
    hooks = textwrap.dedent("""
        import atexit, os, sys, threading
        atexit.register(lambda: os._exit(0))
        sys.excepthook = lambda *args: os._exit(0)
        threading.excepthook = lambda *args: os._exit(0)
        sys.unraisablehook = lambda *args: os._exit(0)
    """)
    assert outcome(score(hooks + "\n" + WRONG_ADD, ADD_TESTS)) == "failed"
    assert outcome(score(hooks + "\ndef add(a, b):\n    raise AssertionError", ADD_TESTS)) == "failed"
    assert outcome(score(hooks + "\ndef add(a, b):\n    return a + b", ADD_TESTS)) == "passed"


PATCHES = textwrap.dedent("""
    import builtins, marshal, os, sys
    builtins.AssertionError = type("NeverRaised", (Exception,), {})
    builtins.__build_class__ = lambda *args, **kwargs: None
    builtins.print = builtins.repr = lambda *args, **kwargs: "ok"
    builtins.isinstance = lambda *args: True
    builtins.len = lambda *args: 0
    builtins.Exception = KeyboardInterrupt
    marshal.dumps = lambda *args: b"forged"
    os.write = lambda fd, data: len(data)
    sys.settrace(lambda *args: None)
""")


@needs_isolation
def test_patched_builtins_and_modules_change_nothing_the_scorer_relies_on():
    tests = [*ADD_TESTS, "assert isinstance(add(1, 1), int)", "assert len([add(0, 0)]) == 1"]
    assert outcome(score(PATCHES + "\n" + WRONG_ADD, tests)) == "failed"
    assert outcome(score(PATCHES + "\ndef add(a, b):\n    return a + b", tests)) == "passed"


ALWAYS_EQUAL = textwrap.dedent("""
    class AlwaysEqual:
        def __eq__(self, other): return True
        def __ne__(self, other): return False
        def __lt__(self, other): return True
        def __gt__(self, other): return True
        def __bool__(self): return True
        def __float__(self): return 0.3
        def __hash__(self): return 0
    class EqualInt(int):
        def __eq__(self, other): return True
        def __ne__(self, other): return False
""")


@needs_isolation
def test_objects_equal_to_anything_fail():
    tests = ["import math", *ADD_TESTS, "assert add(1, 1) == len('ab')", "assert 0 < add(1, 2) < 9",
             "assert add(4, 5) in [9, 10]", "assert math.isclose(add(0.1, 0.2), 0.3)"]
    for returned in ("AlwaysEqual()", "EqualInt(0)", "[AlwaysEqual()]"):
        s = score(f"{ALWAYS_EQUAL}\ndef add(a, b):\n    return {returned}\n", tests)
        assert s.reward == 0.0 and outcome(s) == "failed", returned
    assert outcome(score("def add(a, b):\n    return a + b", tests)) == "passed"


@needs_isolation
def test_fake_pass_markers_on_every_fd_are_tampering():
    """Plain markers and well-formed frames under a guessed nonce, written to every fd the program
    might reach (the result channel is one of them), then a clean exit."""
    forged = [b"ALL TESTS PASSED\n", b"OK\n"]
    guessed_nonce = b"0" * 32
    for message in [("check", 0, (5,)), ("check", 1, (0,)), ("done", 2)]:
        forged.append(guessed_nonce + b" " + base64.b64encode(marshal.dumps(message)) + b"\n")
    s = score(f"""
        import os
        for fd in range(21):
            for line in {forged!r}:
                try:
                    os.write(fd, line)
                except OSError:
                    pass
        print("all tests passed")
        os._exit(0)
    """, ADD_TESTS)
    assert s.reward == 0.0 and outcome(s) == "tampered"


@needs_isolation
def test_prints_of_a_correct_solution_do_not_disturb_the_result():
    s = score("import sys\ndef add(a, b):\n    print('all tests passed', a, b)\n    sys.stdout.flush()\n"
              "    print('x', file=sys.stderr)\n    return a + b", ADD_TESTS)
    assert outcome(s) == "passed"


@needs_isolation
def test_humaneval_style_checks_nested_asserts_and_plain_data_results():
    tests = """
import math
def check(candidate):
    assert candidate("aab") == {"a": 2, "b": 1}
    for word, n in [("x", 1), ("", 0)]:
        assert sum(candidate(word).values()) == n
    assert not candidate("")
check(count)
"""
    assert outcome(score("import collections\ndef count(s):\n    return collections.Counter(s)", tests)) == "passed"
    assert outcome(score("def count(s):\n    return {c: s.count(c) for c in set(s)}", tests)) == "passed"
    assert outcome(score("def count(s):\n    return {'a': 2}", tests)) == "failed"
    assert outcome(score(f"{ALWAYS_EQUAL}\ndef count(s):\n    return AlwaysEqual()", tests)) == "failed"


@needs_isolation
def test_a_solution_that_reads_the_harness_frame_still_cannot_forge_hidden_literals():
    """The documented limit (docs/sandbox.md): code that introspects the harness finds its reporter
    and nonce. It can then claim any values, which passes checks with no hidden answer (`assert
    f(x)`), but not `assert f(x) == <literal>`: the literal never leaves the scorer."""
    forger = """
        import os, sys
        emit = sys._getframe(1).f_locals["emit"]
        for site, value in enumerate(CLAIMED):
            emit(("check", site, (value,)))
        emit(("done", len(CLAIMED)))
        os._exit(0)
    """
    forger = textwrap.dedent(forger)
    assert outcome(score("CLAIMED = [1, 1]\n" + forger, ADD_TESTS)) == "failed"
    assert outcome(score("CLAIMED = [True]\n" + forger, ["assert is_prime(7)"])) == "passed"


def test_tests_without_an_assert_are_a_data_error():
    s = Sample("q", "p", [1], "```python\nx = 1\n```", [1], [0.0], "stop", 0, meta={"tests": ["print(x)"]})
    RewardScorer([{"name": "code_exec", "params": LIMITS}], timeout_s=30).score([s])
    assert s.reward == 0.0 and s.reward_error.startswith("error:code_exec:ValueError: code_exec tests hold no assert")
