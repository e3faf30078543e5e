import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return tiny_checkpoint(d / "tiny-on", lora=True), tiny_checkpoint(d / "tiny-off", lora=False)
