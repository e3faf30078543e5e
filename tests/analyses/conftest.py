import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import tiny_checkpoint  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return tiny_checkpoint(d / "tiny-on", lora=True), tiny_checkpoint(d / "tiny-off", lora=False)
