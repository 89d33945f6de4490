"""Prefect flows: retraining on a schedule and on demand, and the promotion gate.

Not built yet (the retraining issue follows). The pieces they will compose already exist:
`models.fit.fit_checkpoint` (train on a frame, write a checkpoint), `models.mlflow.tracking.log_training_run`
(MLflow run, registered version, @champion only when it beats the naive baselines) and the service's
`pipeline.model_source.ModelWatcher`, which picks up a moved alias without a restart.
"""
