import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
FIXTURES = TESTS_DIR / "fixtures"
sys.path.insert(0, str(TESTS_DIR))  # tests/recipe.py and other test helpers

os.environ.setdefault("TALKBENCH_HOME", str(TESTS_DIR / ".talkbench-home-unused"))


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
