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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core box: with 2 OpenMP threads a busy neighbour makes every parallel region
    spin (measured 3-5x slower wall time for the TalkLip steps); one thread is faster there and barely slower idle.

    Use per module with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def syncnet_checkpoint(tmp_path_factory) -> Path:
    """SyncNet v2 stand-in weights (tests/recipe.py, seed 0) saved in the official layout (plain name -> tensor)."""
    import torch

    from recipe import filled_state_dict

    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(filled_state_dict(FIXTURES / "syncnet" / "keys.json"), path)
    return path
