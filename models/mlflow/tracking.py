"""What a training run leaves in MLflow: parameters, per-epoch losses, test metrics beside the
naive baselines, a forecast plot, and the checkpoint as a registered model version."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow
import numpy as np

from models.fit import FitResult
from models.mlflow.registry import log_checkpoint, use_experiment
from models.search import SearchResult


def forecast_plot(sample: dict[str, np.ndarray], channels: list[str], path: Path) -> Path:
    """History, actual future and forecast, one panel per channel: easier to judge than a table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist, actual, pred = sample["history"], sample["actual"], sample["forecast"]
    L, H = hist.shape[0], actual.shape[0]
    fig, axes = plt.subplots(len(channels), 1, figsize=(10, 1.8 * len(channels)), sharex=True)
    for i, (ax, ch) in enumerate(zip(np.atleast_1d(axes), channels, strict=True)):
        ax.plot(range(L), hist[:, i], color="0.4", lw=1, label="history")
        ax.plot(range(L, L + H), actual[:, i], color="tab:blue", lw=1.5, label="actual")
        ax.plot(range(L, L + H), pred[:, i], color="tab:orange", lw=1.5, ls="--", label="forecast")
        ax.set_ylabel(ch, rotation=0, ha="right")
    np.atleast_1d(axes)[0].legend(loc="upper left", ncol=3, fontsize=8)
    np.atleast_1d(axes)[-1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_plot(history: list[dict], path: Path) -> Path:
    """Training and validation loss per epoch: where early stopping chose is plain to see."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (scaled)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def search_plot(found: SearchResult, path: Path) -> Path:
    """Each trial's best validation loss in the order they ran, the chosen one marked: how the search
    moved, and how far the choice is from the preset (trial 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    colors = {"complete": "tab:blue", "pruned": "0.6", "diverged": "tab:red"}
    for state, color in colors.items():
        ran = [t for t in found.trials if t.state == state and t.val_loss is not None]
        if not ran:
            continue
        ax.scatter([t.number for t in ran], [t.val_loss for t in ran], color=color, label=state, s=24)
    ax.scatter([found.best.number], [found.best.val_loss], marker="*", s=160, color="tab:orange", label="chosen")
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation MSE (scaled)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_search_trials(found: SearchResult) -> None:
    """Under the active run: each trial as a child run (its parameters, per-epoch losses, how it
    ended), and on the run itself the choice, its validation loss, the budget and a plot."""
    for t in found.trials:
        with mlflow.start_run(run_name=f"trial-{t.number}", nested=True):
            mlflow.log_params(t.params)
            mlflow.set_tags({"trial_state": t.state, "forward_ms_batch_256": f"{t.forward_ms:.3f}"})
            for fold in range(t.folds):  # the real split's epochs as train_loss..., an earlier origin's suffixed
                suffix = "" if fold == t.folds - 1 else f"_origin{fold}"
                for rec in t.epochs_on(fold):
                    metrics = {f"{k}{suffix}": rec[k] for k in ("train_loss", "val_loss", "lr")}
                    mlflow.log_metrics(metrics, step=rec["epoch"])
            for fold, loss in enumerate(t.fold_val_losses if t.folds > 1 else []):
                mlflow.log_metric("fold_best_val_loss", loss, step=fold)
            if t.val_loss is not None:
                mlflow.log_metric("best_val_loss", t.val_loss)
            mlflow.log_metric("train_seconds", t.seconds)
    summary = found.to_dict()
    mlflow.set_tags(
        {
            "search_chosen_trial": str(found.best.number),
            "search_states": str(summary["states"]),
            "search_select": found.select,
            "search_selection": found.selection[:500],  # why this trial (the one-SE rule's finding)
        }
    )
    mlflow.log_metrics({"search_wall_seconds": found.wall_seconds, "search_chosen_val_loss": found.best.val_loss})
    mlflow.log_params({f"search_budget_{k}": summary[k] for k in ("budget_trials", "budget_seconds", "max_forward_ms")})
    mlflow.log_param("search_folds", summary["folds"])
    mlflow.log_dict(summary | {"trial_log": [t.to_dict() for t in found.trials]}, "search.json")
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(search_plot(found, Path(tmp) / "search.png")))


def beats_baselines(metrics: dict[str, dict[str, float]], model: str = "itransformer") -> bool:
    return all(metrics[model]["mse"] < m["mse"] for name, m in metrics.items() if name != model)


def log_training_run(
    result: FitResult, *, name: str, params: dict, experiment: str = "sensorcast", alias: str | None = "champion"
) -> dict:
    """Log one fit_checkpoint result as an MLflow run and register its checkpoint. The alias moves
    only when the model beats every naive baseline on the held-out split."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    use_experiment(experiment)
    with mlflow.start_run(run_name=f"train-{name}") as run:
        mlflow.log_params(params)
        for rec in result.train.history:
            mlflow.log_metrics(
                {"train_loss": rec["train_loss"], "val_loss": rec["val_loss"], "lr": rec["lr"]}, step=rec["epoch"]
            )
        for model, m in result.metrics.items():
            mlflow.log_metrics({f"test_mse_{model}": m["mse"], f"test_mae_{model}": m["mae"]})
        mlflow.log_metric("train_seconds", result.train.seconds)
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(forecast_plot(result.sample, result.channels, Path(tmp) / "forecast.png")))
        promote = beats_baselines(result.metrics)
        version = log_checkpoint(result.checkpoint, name, alias=alias if promote else None)
        mlflow.set_tag("promoted", str(promote))
    return {"run_id": run.info.run_id, "version": version, "promoted": promote}
