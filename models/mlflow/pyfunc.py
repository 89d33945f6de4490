"""The MLflow pyfunc face of a sensorcast checkpoint (logged as "models from code", no pickles).

`mlflow.pyfunc.load_model("models:/sensorcast-itransformer@champion").predict(frame)` takes the last
L readings of one entity (a DataFrame with one column per channel) and returns the next H steps. A
model with a cycle also needs a `ts` column (epoch ms): the last reading's time gives the phase.
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
        f = self.forecaster
        x = model_input[f.channels].to_numpy(dtype=np.float32)[-f.lookback :][None]
        if not f.cycle:
            return pd.DataFrame(f.predict(x)[0], columns=f.channels)
        if "ts" not in model_input.columns:
            raise ValueError("this model has a cycle: add a `ts` column (epoch ms) with each reading's time")
        last = np.asarray([int(model_input["ts"].iloc[-1])], dtype=np.int64)
        return pd.DataFrame(f.predict(x, last)[0], columns=f.channels)


mlflow.models.set_model(SensorcastModel())
