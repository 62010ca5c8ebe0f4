"""learner/ds_ops.py: each virtual environment builds DeepSpeed's ops into its own directory."""
import os
import sys

import pytest

from learner.ds_ops import ENV, use_extensions_dir

pytestmark = pytest.mark.unit


def test_ops_are_built_in_this_environment_unless_the_user_chose_a_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV, raising=False)
    assert use_extensions_dir() == os.path.join(sys.prefix, "torch_extensions") == os.environ[ENV]
    monkeypatch.setenv(ENV, str(tmp_path))
    assert use_extensions_dir() == str(tmp_path) == os.environ[ENV]
