"""The weight-sync wire protocol (learner/weight_protocol.py): byte sizes, bucket plan, plan checks,
flat layout. Both the learner's sender and the rollout worker's receiver run exactly this code."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learner.weight_protocol import (
    DTYPE_BYTES, check_plan, check_rendezvous_host, dtype_name, empty_flat, entry_bytes, flatten, manifest_bytes, numel,
    plan_buckets, split_flat, torch_dtype,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

MANIFEST = [
    ("a", "float32", [4, 4]),  # 64 B
    ("b", "float32", [8]),  # 32 B
    ("c", "float32", [100]),  # 400 B: larger than the bucket, travels alone
    ("d", "float32", [2]),  # 8 B
    ("e", "bfloat16", [4]),  # 8 B: dtype change starts a bucket
    ("f", "bfloat16", [4]),  # 8 B
    ("g", "float32", [1]),  # 4 B
]


# ---- sizes ---------------------------------------------------------------------------------------

def test_byte_sizes_by_hand():
    assert entry_bytes(("w", "float32", [4, 4])) == 64
    assert entry_bytes(("w", "bfloat16", [3, 5])) == 30
    assert entry_bytes(("w", "float16", [3, 5])) == 30
    assert entry_bytes(("w", "int8", [7])) == 7  # not 28: unknown-to-the-table used to mean 4 bytes
    assert entry_bytes(("w", "float8_e4m3fn", [2, 8])) == 16
    assert entry_bytes(("w", "float8_e5m2", [3])) == 3
    assert entry_bytes(("w", "float64", [])) == 8  # a scalar has one element
    assert entry_bytes(("w", "float32", [0, 5])) == 0
    assert numel([2, 3, 4]) == 24 and numel([]) == 1
    assert manifest_bytes(MANIFEST) == 64 + 32 + 400 + 8 + 8 + 8 + 4
    assert manifest_bytes([]) == 0


def test_table_matches_torch():
    for name, size in DTYPE_BYTES.items():
        dt = torch_dtype(name)
        assert dt.itemsize == size and dtype_name(dt) == name


def test_dtype_names():
    assert dtype_name(torch.bfloat16) == "bfloat16"
    assert torch_dtype("bfloat16") is torch.bfloat16
    assert torch_dtype("torch.float32") is torch.float32  # the prefix is tolerated
    for bad in ("float128", "Tensor", "nn"):
        with pytest.raises(ValueError, match=f"'{bad}' is not a torch dtype name"):
            torch_dtype(bad)


def test_unknown_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match=r"dtype 'float128' is not one the protocol carries"):
        entry_bytes(("w", "float128", [2]))
    with pytest.raises(ValueError, match="complex64"):
        plan_buckets([("a", "float32", [2]), ("z", "complex64", [2])], 100)
    with pytest.raises(ValueError, match="float128"):
        manifest_bytes([("w", "float128", [2])])


# ---- bucket plan ---------------------------------------------------------------------------------

def test_plan_closed_form():
    assert plan_buckets(MANIFEST, 100) == [[0, 1], [2], [3], [4, 5], [6]]
    assert plan_buckets(MANIFEST, 96) == [[0, 1], [2], [3], [4, 5], [6]]  # exactly full is allowed
    assert plan_buckets(MANIFEST, 95) == [[0], [1], [2], [3], [4, 5], [6]]
    assert plan_buckets(MANIFEST, 10**9) == [[0, 1, 2, 3], [4, 5], [6]]
    assert plan_buckets([], 10) == []
    with pytest.raises(ValueError):
        plan_buckets(MANIFEST, 0)


def test_plan_invariants():
    for size in (1, 7, 50, 64, 100, 500, 10**6):
        buckets = plan_buckets(MANIFEST, size)
        assert check_plan(MANIFEST, buckets) == []
        assert [i for b in buckets for i in b] == list(range(len(MANIFEST)))  # consecutive, all, once
        for b in buckets:
            assert len(b) == 1 or sum(entry_bytes(MANIFEST[i]) for i in b) <= size


def test_check_plan_catches_bad_plans():
    good = [[0, 1], [2], [3], [4, 5], [6]]
    assert check_plan(MANIFEST, good) == []
    assert check_plan(MANIFEST, [[2], [0, 1], [3], [5, 4], [6]]) == []  # any order the sender keeps too

    (missing,) = check_plan(MANIFEST, [[0, 1], [2], [3], [4, 5]])  # 6 never sent
    assert "exactly once" in missing and "got 6 indices, 6 distinct" in missing
    (dup,) = check_plan(MANIFEST, [[0, 1], [1, 2], [3], [4, 5], [6]])  # 1 sent twice
    assert "exactly once" in dup and "got 8 indices, 7 distinct" in dup
    (mixed,) = check_plan(MANIFEST, [[0, 1], [2], [3, 4], [5], [6]])  # float32 + bfloat16
    assert "buckets [2]" in mixed and "mix dtypes" in mixed

    out_of_range = check_plan(MANIFEST, [*good, [7]])
    assert len(out_of_range) == 2 and "0..6 exactly once" in out_of_range[0] and "buckets [5]" in out_of_range[1]
    (empty,) = check_plan(MANIFEST, [*good, []])
    assert "buckets [5] are empty" in empty
    (unknown,) = check_plan([("w", "float128", [2])], [[0]])
    assert "dtypes the protocol does not carry: ['float128']" in unknown


# ---- flat layout ---------------------------------------------------------------------------------

def test_flat_roundtrip():
    tensors = {name: torch.randn(shape).to(torch_dtype(dtype)) for name, dtype, shape in MANIFEST}
    for bucket in plan_buckets(MANIFEST, 100):
        flat = flatten([tensors[MANIFEST[i][0]] for i in bucket])  # what rank 0 sends
        assert flat.dim() == 1 and flat.dtype == torch_dtype(MANIFEST[bucket[0]][1])
        assert flat.numel() * flat.element_size() == sum(entry_bytes(MANIFEST[i]) for i in bucket)
        got = split_flat(flat, MANIFEST, bucket)
        assert [name for name, _ in got] == [MANIFEST[i][0] for i in bucket]
        for name, t in got:
            assert torch.equal(t, tensors[name])
    with pytest.raises(ValueError, match="flat bucket has 3 elements, manifest says 16"):
        split_flat(torch.zeros(3), MANIFEST, [0])


def test_flatten_by_hand():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert flatten([a.t()]).tolist() == [1.0, 3.0, 2.0, 4.0]  # row-major order of the tensor as shaped
    assert flatten([a, torch.tensor([5.0])]).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    manifest = [("a", "float32", [2, 2]), ("b", "float32", [1])]
    (_, ta), (_, tb) = split_flat(torch.arange(5.0), manifest, [0, 1])
    assert ta.tolist() == [[0.0, 1.0], [2.0, 3.0]] and tb.tolist() == [4.0]


def test_empty_flat_is_the_receivers_buffer():
    buf = empty_flat(MANIFEST, [4, 5])
    assert buf.dtype == torch.bfloat16 and buf.shape == (8,) and buf.device.type == "cpu"


def test_import_is_light():
    code = ("import learner.weight_protocol, sys; "
            "print(sorted(m for m in ('torch','vllm','ray','deepspeed','transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_receivers_check_includes_the_plan_check():
    from actors.vllm_ext import check_manifest

    expected = {name: shape for name, _, shape in MANIFEST}
    with pytest.raises(ValueError) as err:
        check_manifest(MANIFEST, [[0, 1], [2], [3, 4], [5], [6]], {**expected, "h": [1]})
    msg = str(err.value)
    assert "does not send: h" in msg and "buckets [2] are empty or mix dtypes" in msg
    check_manifest(MANIFEST, plan_buckets(MANIFEST, 100), expected)  # a good plan passes


def test_a_receiver_joining_a_rendezvous_whose_host_is_gone_fails_at_once():
    from learner.weight_sync import listen_socket

    sock = listen_socket("127.0.0.1")  # as rank 0 opens it before any receiver is asked to join
    host, port = sock.getsockname()[:2]
    check_rendezvous_host(host, port, timeout_s=5.0)  # listening: the receiver goes on to join
    sock.close()  # rank 0 died: its port closed with it
    with pytest.raises(ConnectionError, match=f"rendezvous 127.0.0.1:{port} refused .* rank 0 that opened it is gone") as err:
        check_rendezvous_host(host, port, timeout_s=60.0)
    assert isinstance(err.value.__cause__, ConnectionRefusedError)  # refused at once, not a wait that timed out
