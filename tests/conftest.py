from pathlib import Path

import pytest
import torch

# The tests use tiny tensors: a second intra-op thread only adds OpenMP overhead, and
# results must not depend on the thread count anyway.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA
