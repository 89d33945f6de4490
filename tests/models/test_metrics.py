from __future__ import annotations

import numpy as np

from models.data import Windows
from models.metrics import evaluate
from models.nets.baselines import Persistence


def test_metrics_per_step_and_overall() -> None:
    series = np.arange(20, dtype=np.float32)[:, None].repeat(2, axis=1)
    w = Windows([series], lookback=3, horizon=2)
    m = evaluate(Persistence(2), w)
    # a ramp: persistence is off by 1 at step 1 and by 2 at step 2
    assert np.allclose(m.mse_per_step, [1.0, 4.0]) and np.allclose(m.mae_per_step, [1.0, 2.0])
    assert np.isclose(m.mse, 2.5) and np.isclose(m.mae, 1.5)
