import os
import tempfile

import pytest
import torch

# A private kernel cache per test session: the suite exercises cold compiles and never touches ~/.cache.
os.environ.setdefault("INFERNB_CHECK_PLANS", "1")  # every plan built in the tests is validated
os.environ.setdefault("INFERNB_CACHE_DIR", tempfile.mkdtemp(prefix="infernb-test-cache-"))

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu tests` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def gen():
    """A seeded generator so failures reproduce; each test draws fresh random inputs from it."""
    return torch.Generator().manual_seed(1234)
