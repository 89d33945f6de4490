from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def multi_sine() -> np.ndarray:
    """A small synthetic multivariate set: 4 sines of different periods and phases, (600, 4)."""
    t = np.arange(600, dtype=np.float64)[:, None]
    periods = np.array([12.0, 24.0, 7.0, 40.0])
    return np.sin(2 * np.pi * t / periods + np.arange(4)) * np.array([1.0, 2.0, 0.5, 3.0]) + np.array(
        [0.0, 5.0, -1.0, 10.0]
    )
