"""The program `code_exec` runs in the sandbox: the model's solution, then the tests, with every
assert turned into a report of values for the scorer to judge (actors/reward/registry.py decides
pass or fail; nothing here does).

Run as `python -I -S main.py` where main.py is this file's text followed by `main(SOLUTION, TESTS)`
(registry.harness_program); stdlib only. The scorer imports it only for the constants below and
its file's text, the unit tests for `plain`; importing it runs nothing.

Why it looks like this:
  - an exit code proves nothing: the solution can call sys.exit(0) or os._exit(0), raise
    SystemExit inside the function under test, or register hooks that turn a failure into exit 0.
    So the scorer counts a pass only from frames, and only once the closing "done" frame arrived,
    which this program writes after the last test statement.
  - a frame is one line on the scorer's stdout pipe: `<nonce> <base64(marshal(message))>`. The nonce
    is a per-call secret read from stdin before the solution runs (stdin is then /dev/null), so a
    solution that prints, or writes to every fd, a fake "all passed" makes no frame the scorer
    accepts, only a counted `tampered`.
  - the solution's own stdout is moved to stderr, so its prints never mix with frames.
  - a reported value is first copied into plain builtin data (`plain`): an object whose __eq__
    always says True cannot be copied and fails the check, while Counter, defaultdict,
    OrderedDict, namedtuple or IntEnum results count as the dict, tuple or int they hold. The
    expected side of `assert f(x) == <literal>` is never sent here; the scorer compares.
  - everything used after the solution has started is bound below, before it runs: patching
    builtins, os, sys or marshal from the solution changes nothing this file calls, and the tests
    run with their own copy of the builtins and their own globals (the solution's top-level names
    are copied in, except names that shadow a builtin).
What it cannot stop (see docs/sandbox.md): code that reads this program's frames or memory
(sys._getframe, gc, /proc/self/mem, ctypes) can find the nonce and forge frames; that forges only
checks whose passing value is not hidden, i.e. not `expr == <literal>`.
"""

import binascii
import builtins
import marshal
import os
import sys

NONCE_CHARS = 32  # hex characters of the per-call secret the scorer writes to stdin
CHECK_NAME = "__relayrl_check__"  # the reporter, a parameter of the tests function
TESTS_NAME = "__relayrl_tests__"  # the tests, rewritten by the scorer into one function
MAX_DEPTH = 100  # nesting of a reported value
MAX_ITEMS = 1_000_000  # objects in a reported value

# Bound before the solution runs; the solution may rebind builtins and module attributes later.
_bool, _bytes, _bytearray, _complex, _dict, _float = bool, bytes, bytearray, complex, dict, float
_frozenset, _int, _list, _set, _str, _tuple, _slice = frozenset, int, list, set, str, tuple, slice
_type, _id, _len, _issubclass, _Exception = type, id, len, issubclass, Exception
_compile, _exec = compile, exec
_dumps, _b2a = marshal.dumps, binascii.b2a_base64
_read, _write, _open, _dup, _dup2, _close, _exit = os.read, os.write, os.open, os.dup, os.dup2, os.close, os._exit
_devnull, _O_RDONLY = os.devnull, os.O_RDONLY
_settrace, _setprofile, _modules = sys.settrace, sys.setprofile, sys.modules
_ModuleType = _type(sys)
_builtins_dict = builtins.__dict__

# Exact builtin types by id (not by ==, which a metaclass could answer), and for their
# subclasses a C-level copy into the base type that ignores overridden methods.
_ATOMS = (_type(None), _bool, _int, _float, _complex, _str, _bytes, _type(...))
_KIND = {_id(t): "atom" for t in _ATOMS}
_KIND.update({_id(_list): "list", _id(_tuple): "tuple", _id(_dict): "dict", _id(_set): "set",
              _id(_frozenset): "frozenset"})
_TO_BASE = (  # checked in order: bool cannot be subclassed, so int is safe before float
    (_int, _int.__int__),
    (_float, _float.__float__),
    (_complex, _complex.__complex__),
    (_str, _str.__str__),
    (_bytes, lambda v: _bytes.__getitem__(v, _slice(None))),
    (_bytearray, _bytes),  # a bytearray is reported as the bytes it holds
    (_list, _list.copy),
    (_tuple, lambda v: _tuple.__getitem__(v, _slice(None))),
    (_dict, _dict.copy),
    (_set, _set.copy),
    (_frozenset, _frozenset.copy),
)


class Unconvertible(Exception):
    """The value is not plain data (or too big or deep to send)."""


def plain(value):
    """`value` as plain builtin data (None, bool, int, float, complex, str, bytes, Ellipsis, and
    lists, tuples, dicts, sets, frozensets of those); subclasses of these become their base type.
    Raises Unconvertible for anything else: such a value fails its check."""
    return _plain(value, 0, [MAX_ITEMS])


def _plain(value, depth, budget):
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise Unconvertible("value too large or too deeply nested")
    kind = _KIND.get(_id(_type(value)))
    if kind is None:
        value = _to_base(value)
        kind = _KIND[_id(_type(value))]
    if kind == "atom":
        return value
    depth += 1
    if kind == "list":
        return [_plain(item, depth, budget) for item in value]
    if kind == "tuple":
        return _tuple([_plain(item, depth, budget) for item in value])
    if kind == "dict":
        return {_plain(k, depth, budget): _plain(v, depth, budget) for k, v in _dict.items(value)}
    items = [_plain(item, depth, budget) for item in value]
    return _set(items) if kind == "set" else _frozenset(items)


def _to_base(value):
    t = _type(value)
    for base, copy in _TO_BASE:
        if _issubclass(t, base):
            copied = copy(value)
            if _id(_type(copied)) in _KIND:
                return copied
            break
    raise Unconvertible("not plain data")


def _emitter(fd, nonce):
    prefix = nonce + b" "

    def emit(message):
        data = prefix + _b2a(_dumps(message))  # b2a_base64 ends the line
        while data:
            data = data[_write(fd, data):]

    return emit


def _read_nonce():
    """The secret from stdin (the scorer writes it and closes the pipe); stdin is then /dev/null."""
    data = b""
    while _len(data) < NONCE_CHARS:
        chunk = _read(0, NONCE_CHARS - _len(data))
        if not chunk:
            break
        data += chunk
    null = _open(_devnull, _O_RDONLY)
    _dup2(null, 0)
    _close(null)
    if _len(data) != NONCE_CHARS:
        raise RuntimeError(f"code harness: expected a {NONCE_CHARS}-character nonce on stdin, got {_len(data)}")
    return data


def main(solution, tests):
    """Run `solution` as the __main__ module, then the tests function defined by `tests`; frames:
    ("check", site, values or None), ("error", "solution" | "tests"), ("done", number of checks)."""
    emit = _emitter(_dup(1), _read_nonce())  # the only fd on the scorer's stdout pipe from here on
    _dup2(2, 1)  # the program's own prints go to stderr
    reported = [0]

    def check(site, *values):
        try:
            values = _tuple([plain(v) for v in values])
        except _Exception:  # Unconvertible, RecursionError, MemoryError, or the value's own code raised
            values = None
        reported[0] += 1
        emit(("check", site, values))

    test_builtins = _dict(_builtins_dict)
    test_globals = {"__builtins__": test_builtins, "__name__": "__main__"}
    scope = {}
    _exec(_compile(tests, "<tests>", "exec"), test_globals, scope)  # defines the function, runs nothing
    run_tests = scope[TESTS_NAME]

    module = _ModuleType("__main__")
    _modules["__main__"] = module  # `import __main__` finds the solution, not this program
    try:
        _exec(_compile(solution, "<solution>", "exec"), module.__dict__)
    except _Exception:
        emit(("error", "solution"))
        _exit(1)
    _settrace(None)
    _setprofile(None)
    for name, value in _list(_dict.items(module.__dict__)):
        if _type(name) is _str and not _str.startswith(name, "__") and name not in test_builtins:
            test_globals[name] = value
    try:
        run_tests(check)
    except _Exception:
        emit(("error", "tests"))
        _exit(1)
    emit(("done", reported[0]))
    _exit(0)  # no atexit handlers, no interpreter shutdown that the solution could hook
