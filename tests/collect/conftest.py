import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
for p in (HERE, HERE.parent, HERE.parent / "adapters"):
    sys.path.insert(0, str(p))

from tiny_models import tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A random tiny OpenMythos checkpoint with a pointer task (LoRA on)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("collect") / "tiny-on", lora=True)
