"""Shared test setup: point Minari at the project's shared datasets (``../shared/minari``) unless
``MINARI_DATASETS_PATH`` is already set. Tests that need them skip when the directory is missing."""

import os
import pathlib

SHARED_MINARI = pathlib.Path(__file__).resolve().parents[2] / "shared" / "minari"

# Only when it exists: minari creates MINARI_DATASETS_PATH on first use.
if "MINARI_DATASETS_PATH" not in os.environ and SHARED_MINARI.is_dir():
    os.environ["MINARI_DATASETS_PATH"] = str(SHARED_MINARI)

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread per pytest-xdist worker: two workers share the 2 cores without oversubscription.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def embedded():
    """The small Hopper dataset committed under data/ (the README quickstart's default)."""
    from decision_rnn.data import EMBEDDED_DATASET, load_dataset

    return load_dataset(str(EMBEDDED_DATASET))
