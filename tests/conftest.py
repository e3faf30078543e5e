import pytest
import torch
from tiny_models import MODEL_CASES, make_model

# Tiny models: one thread avoids OpenMP spin-waits (10-100x slowdowns) when the cores are busy.
torch.set_num_threads(1)


@pytest.fixture(params=list(MODEL_CASES))
def model_case(request):
    return request.param, make_model(request.param)


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(123)
    return torch.randint(0, 64, (3, 10), generator=g)
