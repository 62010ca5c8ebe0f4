"""Weight-sync bucket plan and flat layout (the protocol's pure half)."""

import pytest
import torch

from learner.weight_sync import entry_bytes, plan_buckets, split_flat

pytestmark = pytest.mark.unit

MANIFEST = [
    ("a", "float32", [4, 4]),  # 64 B
    ("b", "float32", [8]),  # 32 B
    ("c", "float32", [100]),  # 400 B: larger than the bucket, travels alone
    ("d", "float32", [2]),  # 8 B
    ("e", "bfloat16", [4]),  # 8 B: dtype change starts a bucket
    ("f", "bfloat16", [4]),  # 8 B
    ("g", "float32", [1]),
]


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
        assert [i for b in buckets for i in b] == list(range(len(MANIFEST)))  # consecutive, all, once
        for b in buckets:
            assert len({MANIFEST[i][1] for i in b}) == 1
            assert len(b) == 1 or sum(entry_bytes(MANIFEST[i]) for i in b) <= size


def test_flat_roundtrip():
    tensors = {name: torch.randn(shape).to(getattr(torch, dtype)) for name, dtype, shape in MANIFEST}
    for bucket in plan_buckets(MANIFEST, 100):
        flat = torch.cat([tensors[MANIFEST[i][0]].reshape(-1) for i in bucket])  # what rank 0 sends
        for name, t in split_flat(flat, MANIFEST, bucket):
            assert torch.equal(t, tensors[name])
    with pytest.raises(ValueError):
        split_flat(torch.zeros(3), MANIFEST, [0])
