"""The MLflow pyfunc face of a sensorcast checkpoint (logged as "models from code", no pickles).

`mlflow.pyfunc.load_model("models:/sensorcast-itransformer@champion").predict(frame)` takes the last
L readings of one entity (a DataFrame with one column per channel) and returns the next H steps, and
for a version with intervals each level's bounds (columns "temp_lower_0.8", "temp_upper_0.8", ...:
the version's split-conformal ones, scaled by this window as the service scales them, without the
monitor's online multipliers). A model with a cycle also needs a `ts` column (epoch ms): the last
reading's time gives the phase.
The service does not go through pyfunc: it downloads the checkpoint folder and loads it directly.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class SensorcastModel(PythonModel):
    def load_context(self, context) -> None:
        from models.forecaster import Forecaster

        self.forecaster = Forecaster.from_checkpoint(context.artifacts["checkpoint"], device="cpu")

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return forecast_frame(self.forecaster, model_input)


def forecast_frame(f, model_input: pd.DataFrame) -> pd.DataFrame:
    """The next H steps after `model_input`'s last L rows, one column per channel, then each level's
    lower and upper bound per channel."""
    x = model_input[f.channels].to_numpy(dtype=np.float32)[-f.lookback :][None]
    if f.cycle:
        if "ts" not in model_input.columns:
            raise ValueError("this model has a cycle: add a `ts` column (epoch ms) with each reading's time")
        pred = f.predict(x, np.asarray([int(model_input["ts"].iloc[-1])], dtype=np.int64))[0]
    else:
        pred = f.predict(x)[0]  # (H, N)
    columns = {c: pred[:, i] for i, c in enumerate(f.channels)}
    scale = f.interval_scale(x)  # (1, N): this window's scale, or None (one width for every window)
    for level, width in f.interval_widths.items():  # (N, H)
        half = width.T * (scale if scale is not None else 1.0)  # (H, N)
        for i, c in enumerate(f.channels):
            columns[f"{c}_lower_{level}"] = pred[:, i] - half[:, i]
            columns[f"{c}_upper_{level}"] = pred[:, i] + half[:, i]
    return pd.DataFrame(columns)


mlflow.models.set_model(SensorcastModel())
