from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_path(*parts):
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is not beside this checkout)")
    return path


@pytest.fixture(scope="session")
def priors():
    from ssd300.priors import load_priors

    return load_priors(ROOT / "prior_boxes_ssd300.pkl")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def random_boxes(rng, n, min_size=0.02, max_size=0.6):
    """``(n, 4)`` normalised boxes inside the unit square."""
    wh = rng.uniform(min_size, max_size, size=(n, 2))
    xy = rng.uniform(0, 1, size=(n, 2)) * (1 - wh)
    return np.concatenate([xy, xy + wh], axis=1)
