"""One training engine for every model: fit with model selection, early stopping and resume,
then score the fold's validation and test patients.

Repeatability: each epoch reseeds torch, the augmentation and the loader from (seed, epoch),
so a run resumed from ``last.pt`` after a kill follows exactly the path of an uninterrupted run
on the CPU. ``last.pt`` is written after every epoch and holds everything needed to go on.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from monai.data import DataLoader
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import WeightedRandomSampler
from tqdm.auto import tqdm

from lungfusion.artifacts import atomic_path, software_versions, write_json_atomic
from lungfusion.evaluation.metrics import auc_score, gmean_score
from lungfusion.evaluation.survival import harrell_c
from lungfusion.training.calibration import (
    CALIBRATION_METHODS,
    apply_calibration,
    fit_calibration,
)
from lungfusion.training.data import IMAGE_KEYS, roi_dataset, roi_shape
from lungfusion.training.device import (
    autocast,
    device_description,
    memory_format,
    resolve_device,
    seed_everything,
)

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_auc", "val_gmean", "lr", "seconds"]
BATCH_KEYS = ("ct", "pet", "has_pet", "tab", "aux")
OPTIMIZERS = ("adam", "adamw", "sgd")
IMBALANCE = ("class_weight", "oversample", "none")
SELECTION = ("gmean", "loss", "auc")
TASKS = ("classification", "survival")
LOSSES = ("cross_entropy", "focal")  # classification; survival always uses the Cox loss
CALIBRATION_FILE = "calibration.json"  # beside model.pt: the fold's calibration map


@dataclass(frozen=True)
class TrainSettings:
    """Everything that shapes a training run (the ``train`` config section plus the task)."""

    task: str = "classification"
    classes: tuple[str, ...] = ("ADC", "SQC")
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    lr_step_epochs: int = 25
    lr_gamma: float = 0.1
    sgd_momentum: float = 0.9
    optimizer: str = "adam"
    weight_decay: float = 0.0
    imbalance: str = "class_weight"
    loss: str = "cross_entropy"
    focal_gamma: float = 2.0
    selection_metric: str = "gmean"
    early_stopping_patience: int = 10
    augment: dict = field(
        default_factory=lambda: {
            "flip": True,
            "rotate_deg": 10.0,
            "ct_shift_hu": 20.0,
            "pet_scale": 0.1,
            "ct_window": [-1024.0, 1024.0],
        }
    )
    ema_decay: float | None = None  # select and score a moving average of the weights
    tta: bool = False  # score the mean logits of the eight in-plane symmetries of the ROI
    calibration: str = "platt"  # per fold, on its validation patients (training/calibration.py)
    # pretrained encoders (training/init.py): frozen for this many epochs (-1: always), and
    # trained at this share of lr; both apply only when the Trainer is given such encoders
    freeze_encoder_epochs: int = 0
    encoder_lr_factor: float = 0.1
    aux_weight: float = 0.1  # the auxiliary targets' loss weight, when records carry ``aux``
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        _check_choice("task", self.task, TASKS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("imbalance", self.imbalance, IMBALANCE)
        _check_choice("loss", self.loss, LOSSES)
        if self.focal_gamma < 0:
            raise ValueError(f"focal_gamma must not be negative, got {self.focal_gamma}")
        _check_choice("selection_metric", self.selection_metric, SELECTION)
        _check_choice("calibration", self.calibration, CALIBRATION_METHODS)
        for name in ("epochs", "batch_size", "lr_step_epochs", "early_stopping_patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.lr_gamma <= 0:
            raise ValueError("lr and lr_gamma must be positive")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or null, got {self.ema_decay}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must not be negative, got {self.weight_decay}")
        if self.freeze_encoder_epochs < -1:
            raise ValueError(
                f"freeze_encoder_epochs must be >= -1, got {self.freeze_encoder_epochs}"
            )
        if not 0.0 < self.encoder_lr_factor <= 1.0 or self.aux_weight < 0:
            raise ValueError("encoder_lr_factor must be in (0, 1] and aux_weight >= 0")
        if self.task == "classification" and len(self.classes) < 2:
            raise ValueError(f"classification needs at least two classes, got {self.classes}")
        object.__setattr__(self, "classes", tuple(self.classes))

    @property
    def n_outputs(self) -> int:
        return 1 if self.task == "survival" else len(self.classes)

    def identity(self) -> dict:
        """The settings that change the result (not the device, workers or progress bar)."""
        values = asdict(self)
        for name in ("device", "num_workers", "progress"):
            values.pop(name)
        return values


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def config_hash(payload: dict) -> str:
    """A short stable hash of a JSON-able dict, stored in checkpoints to decide on resuming."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class FitResult:
    best_state: dict
    best_epoch: int
    best_metric: float
    best_val_loss: float
    history: list[dict]
    epochs_run: int
    stopped_early: bool
    resumed_from_epoch: int
    device: str
    seconds: float


# ----------------------------------------------------------------------------------- losses


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow ties), averaged over events.

    The risk set of patient i is every patient with time >= t_i in the batch.
    """
    risk = risk.reshape(-1).float()
    at_risk = time.reshape(1, -1) >= time.reshape(-1, 1)  # [i, j]: j at risk when i fails
    masked = risk.reshape(1, -1).expand_as(at_risk).masked_fill(~at_risk, float("-inf"))
    log_risk_set = torch.logsumexp(masked, dim=1)
    events = event.reshape(-1).float()
    if events.sum() == 0:
        return risk.sum() * 0.0  # no event in the batch: no information, keep the graph
    return -((risk - log_risk_set) * events).sum() / events.sum()


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, *, gamma: float, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma, averaged with
    the class weights as ``F.cross_entropy`` averages; gamma = 0 gives the cross-entropy."""
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, target.view(-1, 1)).view(-1)
    w = torch.ones_like(log_p) if weight is None else weight.to(log_p)[target]
    focus = (1.0 - log_p.exp()).clamp(min=0.0) ** gamma
    return -(w * focus * log_p).sum() / w.sum()


def class_weights(labels: Sequence[int], n_classes: int) -> torch.Tensor:
    """Balanced weights n / (K * n_k), as scikit-learn's ``class_weight='balanced'``."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes).astype(float)
    weights = len(labels) / (n_classes * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


# ---------------------------------------------------------------------------------- loaders


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _train_loader(dataset, records: list[dict], settings: TrainSettings, epoch: int) -> DataLoader:
    generator = torch.Generator().manual_seed(_epoch_seed(settings.seed, epoch))
    sampler = None
    if settings.task == "classification" and settings.imbalance == "oversample":
        labels = np.array([r["label"] for r in records])
        per_class = np.bincount(labels, minlength=len(settings.classes)).astype(float)
        weights = 1.0 / np.maximum(per_class[labels], 1.0)
        sampler = WeightedRandomSampler(
            torch.as_tensor(weights, dtype=torch.double), len(records), generator=generator
        )
    # a lone last sample would break batch norm after global pooling
    drop_last = len(records) % settings.batch_size == 1 and len(records) > 1
    return DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        drop_last=drop_last,
        num_workers=settings.num_workers,
    )


def _eval_loader(dataset, settings: TrainSettings) -> DataLoader:
    return DataLoader(
        dataset, batch_size=settings.batch_size, shuffle=False, num_workers=settings.num_workers
    )


def _to_device(batch: dict, device: torch.device) -> dict:
    layout = memory_format(device)
    out = {}
    for key in BATCH_KEYS:
        if key not in batch:
            continue
        value = torch.as_tensor(batch[key]).to(device, non_blocking=True)
        if value.ndim == 5:
            value = value.contiguous(memory_format=layout)
        out[key] = value
    out["has_pet"] = out["has_pet"].bool().reshape(-1)
    return out


def symmetric_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    """Test-time augmentation: the mean logits over the ROI turned by 0-270 degrees in-plane,
    each with and without the left-right mirror (the symmetries ``rotate90`` trains on)."""
    outputs = []
    for turns in range(4):
        for mirror in (False, True):
            view = dict(batch)
            for key in IMAGE_KEYS:
                image = torch.rot90(batch[key], turns, dims=(-2, -1))
                view[key] = image.flip(-1) if mirror else image
            outputs.append(model(view).float())
    return torch.stack(outputs).mean(0)


def forward_logits(model: nn.Module, batch: dict, *, tta: bool) -> torch.Tensor:
    """The model's logits, averaged over the in-plane symmetries when trained with ``tta``."""
    return symmetric_logits(model, batch) if tta else model(batch)


# ------------------------------------------------------------------------------------- core


class Trainer:
    """Fits one model on one fold's training patients, selecting on its validation patients."""

    def __init__(
        self,
        model: nn.Module,
        *,
        settings: TrainSettings,
        out_dir: str | Path,
        run_hash: str,
        model_meta: dict | None = None,
        pretrained_encoders: Sequence[nn.Module] = (),
        aux_head: nn.Module | None = None,
    ) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.model = model.to(self.device, memory_format=memory_format(self.device))
        self.out_dir = Path(out_dir)
        self.run_hash = run_hash
        self.model_meta = model_meta or {}
        self.weights: torch.Tensor | None = None
        self.ema: AveragedModel | None = None  # while fitting with ema_decay
        self.pretrained_encoders = list(pretrained_encoders)
        # auxiliary targets (training/aux.py): trained beside the model, never saved in model.pt
        self.aux_head = None if aux_head is None else aux_head.to(self.device)

    # -- loss and scoring
    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        outputs = outputs.float()
        if self.settings.task == "survival":
            return cox_loss(outputs, batch["time"].to(self.device), batch["event"].to(self.device))
        weight = None if self.weights is None else self.weights.to(self.device)
        if self.settings.loss == "focal":
            return focal_loss(
                outputs, batch["label"].to(self.device), gamma=self.settings.focal_gamma,
                weight=weight,
            )  # fmt: skip
        return F.cross_entropy(outputs, batch["label"].to(self.device), weight=weight)

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> tuple[float, np.ndarray, list[dict]]:
        """Mean loss over the set, the outputs (probabilities or risks) and the raw targets."""
        model = self.scored_model
        model.eval()
        outputs, targets, ids = [], [], []
        for batch in loader:
            with autocast(self.device):
                raw = forward_logits(model, _to_device(batch, self.device), tta=self.settings.tta)
            raw = raw.float()
            outputs.append(raw.cpu())
            ids += list(batch["patient_id"])
            targets.append({k: batch[k] for k in ("label", "time", "event") if k in batch})
        raw_all = torch.cat(outputs)
        merged = {k: torch.cat([t[k] for t in targets]) for k in targets[0]}
        loss = float(self.loss(raw_all.to(self.device), merged))
        if self.settings.task == "survival":
            values = raw_all.reshape(-1).numpy()
        else:
            values = torch.softmax(raw_all, dim=1).numpy()
        rows = [
            {"patient_id": pid, **{k: v[i].item() for k, v in merged.items()}}
            for i, pid in enumerate(ids)
        ]
        return loss, values, rows

    @property
    def scored_model(self) -> nn.Module:
        """The weights validation scores and checkpoints hold: the moving average, if any."""
        return self.model if self.ema is None else self.ema.module

    def metrics(self, values: np.ndarray, rows: list[dict]) -> dict:
        if self.settings.task == "survival":
            time_ = np.array([r["time"] for r in rows])
            event = np.array([r["event"] for r in rows])
            return {"val_cindex": harrell_c(time_, event, values)}
        labels = np.array([r["label"] for r in rows], dtype=int)
        return {"val_auc": auc_score(labels, values), "val_gmean": gmean_score(labels, values)}

    def selection_score(self, row: dict) -> tuple[float, float]:
        """Larger is better: (chosen metric, minus validation loss as the tie-break)."""
        metric = self.settings.selection_metric
        if metric == "loss":
            return (-row["val_loss"], 0.0)
        if self.settings.task == "survival":
            value = row["val_cindex"]
        else:
            value = row["val_auc"] if metric == "auc" else row["val_gmean"]
        value = value if np.isfinite(value) else -math.inf
        return (value, -row["val_loss"])

    # -- optimisation
    def _parameter_groups(self) -> list[dict]:
        """New layers at ``lr`` (first group: the history's lr column), pretrained encoders at
        ``lr * encoder_lr_factor``: a smaller step keeps what pretraining learned."""
        encoder_ids = {id(p) for e in self.pretrained_encoders for p in e.parameters()}
        new = [p for p in self.model.parameters() if id(p) not in encoder_ids]
        if self.aux_head is not None:
            new += list(self.aux_head.parameters())
        groups = [{"params": new, "lr": self.settings.lr}]
        if encoder_ids:
            pretrained = [p for p in self.model.parameters() if id(p) in encoder_ids]
            lr = self.settings.lr * self.settings.encoder_lr_factor
            groups.append({"params": pretrained, "lr": lr})
        return groups

    def encoders_frozen(self, epoch: int) -> bool:
        """Whether the pretrained encoders stay fixed in ``epoch`` (0-based)."""
        freeze = self.settings.freeze_encoder_epochs
        return bool(self.pretrained_encoders) and (freeze == -1 or epoch < freeze)

    def _set_encoders_frozen(self, frozen: bool) -> None:
        """Frozen: no gradients, and batch norm keeps its pretrained statistics (eval mode)."""
        for encoder in self.pretrained_encoders:
            for parameter in encoder.parameters():
                parameter.requires_grad_(not frozen)
            if frozen:
                encoder.eval()

    def _optimiser(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR]:
        params, lr, decay = self._parameter_groups(), self.settings.lr, self.settings.weight_decay
        if self.settings.optimizer == "adam":  # weight decay as an L2 term of the gradient
            optimiser = torch.optim.Adam(params, lr=lr, weight_decay=decay)
        elif self.settings.optimizer == "adamw":  # decoupled weight decay
            optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=decay)
        else:
            optimiser = torch.optim.SGD(
                params, lr=lr, momentum=self.settings.sgd_momentum, weight_decay=decay
            )
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimiser, step_size=self.settings.lr_step_epochs, gamma=self.settings.lr_gamma
        )
        return optimiser, scheduler

    def _train_epoch(
        self, loader: DataLoader, optimiser: torch.optim.Optimizer, *, frozen: bool = False
    ) -> float:
        self.model.train()
        self._set_encoders_frozen(frozen)
        if self.aux_head is not None:
            self.aux_head.train()
        total, count, aux_total = 0.0, 0, 0.0
        for batch in loader:
            optimiser.zero_grad(set_to_none=True)
            on_device = _to_device(batch, self.device)
            with autocast(self.device):
                outputs = self.model(on_device)
            loss = self.loss(outputs, batch)
            if self.aux_head is not None:
                aux_loss = self.aux_head.loss(on_device["aux"])
                aux_total += float(aux_loss.detach()) * len(batch["patient_id"])
                loss = loss + self.settings.aux_weight * aux_loss
            loss.backward()
            optimiser.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            size = len(batch["patient_id"])
            total += float(loss.detach()) * size
            count += size
        self.last_aux_loss = aux_total / max(count, 1) if self.aux_head is not None else None
        return total / max(count, 1)

    def fit(
        self,
        train_records: list[dict],
        val_records: list[dict],
        *,
        on_epoch_end: Callable[[int, dict], None] | None = None,
    ) -> FitResult:
        """Train with selection on ``val_records``; resume from ``last.pt`` when it matches."""
        started = time.perf_counter()
        settings = self.settings
        if settings.tta or settings.augment.get("rotate90"):
            _check_square_slices(train_records[0])
        seed_everything(settings.seed)
        if settings.task == "classification" and settings.imbalance == "class_weight":
            self.weights = class_weights([r["label"] for r in train_records], len(settings.classes))
        train_set = roi_dataset(train_records, augment=dict(settings.augment))
        val_loader = _eval_loader(roi_dataset(val_records), settings)
        optimiser, scheduler = self._optimiser()
        if settings.ema_decay is not None:  # buffers too: BN statistics of the averaged weights
            self.ema = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay), use_buffers=True
            )
        state = self._resume(optimiser, scheduler)
        history, best = state["history"], state["best"]
        resumed_from = state["epoch"]
        bar = tqdm(
            range(state["epoch"], settings.epochs),
            initial=state["epoch"],
            total=settings.epochs,
            desc=self.model_meta.get("name", "train"),
            disable=not settings.progress,
            leave=False,
        )
        for epoch in bar:
            if state["finished"]:
                break
            epoch_start = time.perf_counter()
            torch.manual_seed(_epoch_seed(settings.seed, epoch))
            lr = optimiser.param_groups[0]["lr"]
            train_loss = self._train_epoch(
                _train_loader(train_set, train_records, settings, epoch),
                optimiser,
                frozen=self.encoders_frozen(epoch),
            )
            scheduler.step()
            val_loss, values, rows = self.evaluate(val_loader)
            row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss}
            row.update({"val_auc": math.nan, "val_gmean": math.nan})
            row.update(self.metrics(values, rows))
            row.update({"lr": lr, "seconds": round(time.perf_counter() - epoch_start, 3)})
            if self.aux_head is not None:  # train_loss includes it, weighted
                row["train_aux_loss"] = self.last_aux_loss
            history.append(row)
            score = self.selection_score(row)
            if best is None or score > tuple(best["score"]):
                best = {"epoch": epoch + 1, "score": list(score), "val_loss": val_loss}
                self._save_best(best)
                state["bad_epochs"] = 0
            else:
                state["bad_epochs"] += 1
            stop = state["bad_epochs"] >= settings.early_stopping_patience
            state.update(epoch=epoch + 1, history=history, best=best)
            state["finished"] = stop or epoch + 1 == settings.epochs
            state["stopped_early"] = stop and epoch + 1 < settings.epochs
            self._save_last(state, optimiser, scheduler)
            self._write_history(history)
            bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, row)
            if stop:
                log.info("early stop after epoch %d (best %d)", epoch + 1, best["epoch"])
                break
        bar.close()
        self._set_encoders_frozen(False)
        best_state = torch.load(self.out_dir / "model.pt", map_location="cpu", weights_only=False)
        self.model.load_state_dict(best_state["state_dict"])
        self.ema = None  # the selected weights are now the model's
        return FitResult(
            best_state=best_state["state_dict"],
            best_epoch=best["epoch"],
            best_metric=float(best["score"][0]),
            best_val_loss=float(best["val_loss"]),
            history=history,
            epochs_run=state["epoch"],
            stopped_early=bool(state.get("stopped_early", False)),
            resumed_from_epoch=resumed_from,
            device=device_description(self.device),
            seconds=round(time.perf_counter() - started, 3),
        )

    # -- checkpoints
    def _resume(self, optimiser, scheduler) -> dict:
        fresh = {"epoch": 0, "history": [], "best": None, "bad_epochs": 0, "finished": False}
        path = self.out_dir / "last.pt"
        if not path.exists():
            return fresh
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("config_hash") != self.run_hash:
            log.info("ignoring %s: it was written under another configuration", path)
            return fresh
        self.model.load_state_dict(saved["model_state"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema_state"])
        if self.aux_head is not None:
            self.aux_head.load_state_dict(saved["aux_state"])
        optimiser.load_state_dict(saved["optimizer_state"])
        scheduler.load_state_dict(saved["scheduler_state"])
        _set_rng_states(saved["rng"])
        log.info("resuming from %s after epoch %d", path, saved["epoch"])
        return {k: saved[k] for k in (*fresh, "stopped_early") if k in saved}

    def _save_best(self, best: dict) -> None:
        payload = {
            "state_dict": _cpu_state(self.scored_model),
            "epoch": best["epoch"],
            "selection_metric": self.settings.selection_metric,
            "tta": self.settings.tta,  # predict scores the checkpoint as it was selected
            "score": best["score"],
            "val_loss": best["val_loss"],
            "config_hash": self.run_hash,
            "task": self.settings.task,
            "classes": list(self.settings.classes),
            "model": self.model_meta,
        }
        with atomic_path(self.out_dir / "model.pt") as tmp:
            torch.save(payload, tmp)

    def _save_last(self, state: dict, optimiser, scheduler) -> None:
        payload = {
            **state,
            "config_hash": self.run_hash,
            "model_state": _cpu_state(self.model),
            "ema_state": None if self.ema is None else _cpu_state(self.ema),
            "aux_state": None if self.aux_head is None else _cpu_state(self.aux_head),
            "optimizer_state": optimiser.state_dict(),
            "scheduler_state": scheduler.state_dict(),
            "rng": _rng_states(),
            "model": self.model_meta,
        }
        with atomic_path(self.out_dir / "last.pt") as tmp:
            torch.save(payload, tmp)

    def _write_history(self, history: list[dict]) -> None:
        table = pd.DataFrame(history)
        columns = HISTORY_COLUMNS + [c for c in table.columns if c not in HISTORY_COLUMNS]
        with atomic_path(self.out_dir / "history.tsv") as tmp:
            table[columns].to_csv(tmp, sep="\t", index=False, float_format="%.6g")

    # -- scoring
    def predict(self, records: list[dict], *, fold: int | str) -> pd.DataFrame:
        """The prediction table for ``records`` with the current weights."""
        if not records:
            return _empty_predictions(self.settings)
        _, values, rows = self.evaluate(_eval_loader(roi_dataset(records), self.settings))
        table = pd.DataFrame({"patient_id": [r["patient_id"] for r in rows], "fold": fold})
        if self.settings.task == "survival":
            table["risk"] = values
            table["survival_days"] = [r["time"] for r in rows]
            table["event"] = [int(r["event"]) for r in rows]
        else:
            table["label"] = [self.settings.classes[int(r["label"])] for r in rows]
            for k, name in enumerate(self.settings.classes):
                table[f"prob_{name}"] = values[:, k]
        return table


def _check_square_slices(record: dict) -> None:
    z, y, x = roi_shape(record)
    if y != x:
        raise ValueError(
            f"train.augment.rotate90 and train.tta turn the ROI in-plane, which needs square "
            f"slices; roi.shape gives {x} x {y} (x, y) in {record['path']}"
        )


def _empty_predictions(settings: TrainSettings) -> pd.DataFrame:
    if settings.task == "survival":
        columns = ["patient_id", "fold", "risk", "survival_days", "event"]
    else:
        columns = ["patient_id", "fold", "label"] + [f"prob_{c}" for c in settings.classes]
    return pd.DataFrame(columns=columns)


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _rng_states() -> dict:
    states = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (third-party code draws from it)
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])  # noqa: NPY002
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def write_table(table: pd.DataFrame, path: Path, *, float_format: str | None = "%.6g") -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format=float_format)


# -------------------------------------------------------------------------------- top level


def write_fold_predictions(
    trainer: Trainer, val_records: list[dict], test_records: list[dict], fold: int, out_dir: Path
) -> dict | None:
    """Score the fold's validation and test patients, calibrated on the validation ones when
    ``settings.calibration`` asks (then ``calibration.json``, read by ``lungfusion predict``);
    writes ``val_predictions.tsv`` and ``predictions.tsv``. Returns the calibration, if any."""
    settings = trainer.settings
    val, test = trainer.predict(val_records, fold=fold), trainer.predict(test_records, fold=fold)
    calibration = None
    if settings.task == "classification" and settings.calibration != "none":
        calibration = fit_calibration(val, settings.classes)
        val = apply_calibration(val, calibration, settings.classes)
        test = apply_calibration(test, calibration, settings.classes)
        write_json_atomic(out_dir / CALIBRATION_FILE, calibration)
    else:
        (out_dir / CALIBRATION_FILE).unlink(missing_ok=True)
    write_table(val, out_dir / "val_predictions.tsv")
    write_table(test, out_dir / "predictions.tsv")
    return calibration


def train_model(
    model: nn.Module,
    *,
    fold: int,
    train_records: list[dict],
    val_records: list[dict],
    test_records: list[dict],
    settings: TrainSettings,
    out_dir: str | Path,
    run_hash: str,
    model_meta: dict | None = None,
    summary_extra: dict | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    pretrained_encoders: Sequence[nn.Module] = (),
    aux_head: nn.Module | None = None,
) -> dict:
    """Fit, then write ``val_predictions.tsv``, ``predictions.tsv`` and, last, ``summary.json``.

    Returns the summary. ``model.pt`` (best), ``last.pt`` (resumable) and ``history.tsv`` are
    written while training.
    """
    if not train_records or not val_records:
        raise ValueError(
            f"fold {fold}: need training and validation patients, got "
            f"{len(train_records)} and {len(val_records)}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").unlink(missing_ok=True)  # the run is not complete until rewritten
    trainer = Trainer(
        model, settings=settings, out_dir=out_dir, run_hash=run_hash, model_meta=model_meta,
        pretrained_encoders=pretrained_encoders, aux_head=aux_head,
    )  # fmt: skip
    result = trainer.fit(train_records, val_records, on_epoch_end=on_epoch_end)
    started = time.perf_counter()
    calibration = write_fold_predictions(trainer, val_records, test_records, fold, out_dir)
    summary = {
        "status": "ok",
        "model": (model_meta or {}).get("name"),
        "fold": fold,
        "task": settings.task,
        "n_patients": {
            "train": len(train_records),
            "val": len(val_records),
            "test": len(test_records),
        },
        "best_epoch": result.best_epoch,
        "selection_metric": settings.selection_metric,
        "best_metric": result.best_metric,
        "best_val_loss": result.best_val_loss,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "resumed_from_epoch": result.resumed_from_epoch,
        "device": result.device,
        "config_hash": run_hash,
        "settings": settings.identity(),
        "model_options": (model_meta or {}).get("options", {}),
        "calibration": calibration,
        "timings_s": {"fit": result.seconds, "predict": round(time.perf_counter() - started, 3)},
        "software": software_versions(),
    }
    summary.update(copy.deepcopy(summary_extra or {}))
    write_json_atomic(out_dir / "summary.json", summary)
    return summary
