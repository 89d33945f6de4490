"""Prefect flows: retraining from the stream, gated promotion.

`window` pulls and aligns a training window from Kafka, `gate` splits, scores and decides (pure),
`retrain` is the flow that composes them with the training loop, MLflow and the announcement the
running service follows. Importable from tools; never imported by the service.
"""
