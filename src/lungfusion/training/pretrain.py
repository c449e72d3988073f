"""Self-supervised pretraining of one modality's image encoder on ROI tensors (``pretrain`` stage).

The objective (``pretrain.objective: masked``) is masked-volume reconstruction in the style of
Models Genesis (Zhou et al. 2021) and of masked autoencoders: each ROI is corrupted by MONAI
transforms (cubes in-painted with noise, :class:`~monai.transforms.RandCoarseDropoutd`; cubes
whose voxels are shuffled in place, :class:`~monai.transforms.RandCoarseShuffled`), and the
encoder, ``build_trunk(spec, in_channels=1)`` run as stem + four stages, feeds a light decoder
that restores the uncorrupted volume. Flips are applied to the input and its target alike.

Which ROI files a fold's pretraining reads (:func:`pretrain_patients`): its training and
validation patients, the cohort's patients without a usable label, and every file of the
folders in ``pretrain.extra_roi_dirs``; never the fold's test patients unless
``pretrain.transductive`` (the images carry no label, but a test patient seen in pretraining is
no longer unseen). A share of these ROIs is held out for a validation loss, and the weights of
the epoch with the lowest one are kept.

Outputs in ``out_dir``: ``encoder.pt`` (the trunk's state dict, keys as :func:`build_trunk`
names them, with the spec, modality, fold, objective and patients), ``history.tsv`` and
``summary.json``. Repeatable like the training engine: every epoch reseeds the corruption and
the loader from (seed, epoch).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from monai.data import CacheDataset, DataLoader
from monai.networks.blocks import Convolution
from monai.transforms import (
    Compose,
    CopyItemsd,
    DeleteItemsd,
    EnsureTyped,
    RandCoarseDropoutd,
    RandCoarseShuffled,
    RandFlipd,
)
from torch import nn
from tqdm.auto import tqdm

from lungfusion.artifacts import atomic_path, software_versions, write_json_atomic
from lungfusion.config import section_with_defaults
from lungfusion.folds import fold_patients, read_folds
from lungfusion.training.data import IMAGE_KEYS, LoadRoid, roi_shape
from lungfusion.training.device import (
    autocast,
    device_description,
    memory_format,
    resolve_device,
    seed_everything,
)
from lungfusion.training.engine import _cpu_state, _epoch_seed, write_table

log = logging.getLogger(__name__)

MODALITIES = IMAGE_KEYS
OBJECTIVES = ("masked",)
SOURCES = ("train", "val", "test", "unlabelled", "extra")
HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "seconds"]
INPUT_KEY = "image"  # the corrupted copy; the modality's own key keeps the target


# ----------------------------------------------------------------------------- which ROIs


@dataclass
class PretrainInputs:
    """The ROI files of one fold's pretraining: ``paths`` and ``patients`` (IDs; a file of an
    extra folder is named ``folder/stem``) in the same order, the ``source`` of each, and what
    was left out (``skipped``: reason -> count)."""

    paths: list[Path] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """ROI files per source (train, val, test, unlabelled, extra)."""
        return {source: self.sources.count(source) for source in SOURCES}

    def add(self, path: Path, patient: str, source: str) -> None:
        self.paths.append(path)
        self.patients.append(patient)
        self.sources.append(source)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def roi_has_pet(path: str | Path) -> bool:
    """Whether an ROI file holds a PET, read as :class:`LoadRoid` reads it."""
    with np.load(path) as roi:
        if "has_pet" in roi:
            return bool(roi["has_pet"])
        return "pet" in roi and bool(roi["pet"].any())


def pretrain_patients(
    *,
    folds_path: str | Path,
    fold: int,
    roi_dir: str | Path,
    modality: str,
    cohort_path: str | Path | None = None,
    include_unlabelled: bool = True,
    extra_roi_dirs: Sequence[str | Path] = (),
    transductive: bool = False,
) -> PretrainInputs:
    """The ROI files fold ``fold``'s pretraining of ``modality`` may read.

    The fold's training and validation patients; its test patients only when ``transductive``;
    with ``include_unlabelled`` the patients with an ROI but not in the folds table (no usable
    label: those of ``cohort.tsv`` whose ROI is ok, or every ``roi_dir/*.npz`` when no cohort
    table is given); every ``*.npz`` of ``extra_roi_dirs``, except (unless ``transductive``)
    a file named like one of the fold's test patients, so pointing an extra folder at the
    cohort's own ROIs cannot leak them. For ``pet`` only ROIs with a PET. A file reached twice
    is read once.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    roi_dir = Path(roi_dir)
    folds = read_folds(folds_path)
    roles = fold_patients(folds, fold)
    test_ids = set(roles["test"].patient_id)
    chosen = PretrainInputs()
    seen: set[Path] = set()

    def offer(path: Path, patient: str, source: str) -> None:
        resolved = path.resolve()
        if resolved in seen:
            return
        if not path.exists():
            raise FileNotFoundError(f"ROI file missing for patient {patient}: {path}")
        if modality == "pet" and not roi_has_pet(path):
            chosen.skip("no_pet")
            return
        seen.add(resolved)
        chosen.add(path, patient, source)

    for role in ("train", "val", "test"):
        for pid in roles[role].patient_id:
            if role == "test" and not transductive:
                chosen.skip("test")
                continue
            offer(roi_dir / f"{pid}.npz", pid, role)
    if include_unlabelled:
        labelled = set(folds.patient_id)
        for pid in _cohort_patients(cohort_path, roi_dir):
            if pid not in labelled:
                offer(roi_dir / f"{pid}.npz", pid, "unlabelled")
    for folder in extra_roi_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"pretrain.extra_roi_dirs: no such folder {folder}")
        for path in sorted(folder.glob("*.npz")):
            if path.stem in test_ids and not transductive:
                chosen.skip("test")
                continue
            offer(path, f"{folder.name}/{path.stem}", "extra")
    return chosen


def _cohort_patients(cohort_path: str | Path | None, roi_dir: Path) -> list[str]:
    """The cohort's patients whose ROI stage succeeded (``cohort.tsv``), else every ROI file's."""
    if cohort_path is None:
        return sorted(path.stem for path in roi_dir.glob("*.npz"))
    cohort = pd.read_csv(cohort_path, sep="\t", dtype={"patient_id": str})
    ok = cohort.roi_status == "ok" if "roi_status" in cohort.columns else True
    return [pid for pid in cohort[ok].patient_id if (roi_dir / f"{pid}.npz").exists()]


# ------------------------------------------------------------------------------- the model


class ReconstructionNet(nn.Module):
    """An encoder trunk (:class:`TrunkBranch`) and a light decoder that restores its input.

    The decoder climbs back through the stages' resolutions: at each level the deeper features
    are interpolated to that stage's size, joined with the stage's own output (U-Net skips, as
    Models Genesis), and mixed by one MONAI convolution block; a last upsampling to the input
    size and a 1x1x1 convolution give the restored volume. Each level has the stage's base
    width (before a bottleneck's expansion), so the decoder stays small beside the encoder, and
    its last 3x3x3 block works at the first stage's resolution: at the input's full resolution
    it would cost more than the whole encoder.
    """

    def __init__(self, spec) -> None:
        super().__init__()
        from lungfusion.models.encoders import TrunkBranch

        self.encoder = TrunkBranch(spec, in_channels=1)
        channels = list(spec.stage_channels)
        base = [max(1, int(w * spec.widen_factor)) for w in spec.widths]
        self.up = nn.ModuleList()
        deeper = channels[-1]
        for level in (2, 1, 0):
            self.up.append(
                Convolution(3, deeper + channels[level], base[level], kernel_size=3, norm="batch")
            )
            deeper = base[level]
        self.refine = Convolution(3, deeper, base[0], kernel_size=3, norm="batch")
        self.head = Convolution(3, base[0], 1, kernel_size=1, conv_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        features = [self.encoder.stem(x)]
        for stage in self.encoder.stages:
            features.append(stage(features[-1]))
        y = features[-1]
        for block, skip in zip(self.up, reversed(features[1:-1]), strict=True):
            y = F.interpolate(y, size=skip.shape[2:], mode="trilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        y = F.interpolate(self.refine(y), size=size, mode="trilinear", align_corners=False)
        return self.head(y)


# ------------------------------------------------------------------------------- the data


def corruption(settings: dict, shape: Sequence[int], modality: str) -> list:
    """The random transforms: flips of input and target together, then the input's copy
    (``image``) corrupted by shuffled and noise-filled cubes sized as shares of ``shape``."""

    transforms: list = []
    if settings["flip"]:
        transforms += [RandFlipd(keys=[modality], prob=0.5, spatial_axis=axis) for axis in range(3)]
    transforms.append(CopyItemsd(keys=[modality], times=1, names=[INPUT_KEY]))
    shuffle, mask = settings["shuffle"], settings["mask"]
    if shuffle["prob"] > 0:
        transforms.append(_cubes(RandCoarseShuffled, shuffle, shape))
    if mask["prob"] > 0:
        fill = (0.0, 1.0) if mask["fill"] == "noise" else 0.0
        transforms.append(_cubes(RandCoarseDropoutd, mask, shape, fill_value=fill))
    return transforms


def _cubes(transform, section: dict, shape: Sequence[int], **extra):
    """A MONAI coarse transform on the input copy, its cubes' sides the section's
    ``size_fraction`` shares of ``shape``."""
    fractions = section["size_fraction"]
    low, high = ([max(1, round(f * n)) for n in shape] for f in (min(fractions), max(fractions)))
    return transform(
        keys=[INPUT_KEY],
        holes=section["holes"],
        max_holes=max(section["holes"], section["max_holes"]),
        spatial_size=low,
        max_spatial_size=high,
        prob=section["prob"],
        **extra,
    )


def pretrain_dataset(
    paths: Sequence[str | Path], *, modality: str, settings: dict, shape: Sequence[int]
) -> CacheDataset:
    """The ROIs of one modality in memory (``modality`` the target, ``image`` its corrupted
    copy); only the random corruption runs again each epoch."""
    other = [key for key in (*MODALITIES, "has_pet") if key != modality]
    transforms = [LoadRoid(), DeleteItemsd(keys=other)]
    transforms += corruption(settings, shape, modality)
    transforms.append(EnsureTyped(keys=[modality, INPUT_KEY], data_type="tensor", track_meta=False))
    return CacheDataset(
        data=[{"path": str(p)} for p in paths],
        transform=Compose(transforms),
        cache_rate=1.0,
        progress=False,
    )


def holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) indices: a seeded ``fraction`` of ``n`` held out, at least one when
    the fraction is not 0, and never all."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = 0 if fraction == 0 else min(n - 1, max(1, round(fraction * n)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# ------------------------------------------------------------------------------- training


def pretrain_encoder(
    *,
    modality: str,
    fold: int,
    folds_path: str | Path,
    roi_dir: str | Path,
    out_dir: str | Path,
    config: dict,
    cohort_path: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Pretrain fold ``fold``'s ``modality`` encoder; write ``encoder.pt``, ``history.tsv`` and
    ``summary.json`` in ``out_dir`` and return the summary.

    The loss is the MSE between the restored and the uncorrupted volume over every voxel, not
    only the corrupted ones: as in Models Genesis, restoring the untouched voxels keeps the
    encoder describing the whole lesion and its surroundings, the noise-filled and shuffled
    cubes (whose union MONAI does not report) add the in-painting and context tasks, and the
    loss needs no mask bookkeeping. The encoder is ``train.encoder``'s trunk with the widths
    the networks will have under ``train.init: pretrain``.
    """
    from lungfusion.training.init import encoder_spec_from_config

    started = time.perf_counter()
    settings = section_with_defaults(config, "pretrain")
    if settings["objective"] not in OBJECTIVES:
        raise ValueError(f"pretrain.objective must be one of {OBJECTIVES}")
    train = section_with_defaults(config, "train")
    spec = encoder_spec_from_config({**config, "train": {**train, "init": "pretrain"}})
    out_dir = Path(out_dir)
    inputs = pretrain_patients(
        folds_path=folds_path, fold=fold, roi_dir=roi_dir, modality=modality,
        cohort_path=cohort_path, include_unlabelled=settings["include_unlabelled"],
        extra_roi_dirs=settings["extra_roi_dirs"], transductive=settings["transductive"],
    )  # fmt: skip
    if len(inputs.paths) < 2:
        raise ValueError(
            f"fold {fold}: {len(inputs.paths)} ROI file(s) with {modality} to pretrain on; "
            "need at least 2"
        )
    fit_index, val_index = holdout(
        len(inputs.paths), settings["validation_fraction"], settings["seed"]
    )
    shape = roi_shape({"path": str(inputs.paths[0])})
    device = resolve_device(train["device"])
    seed_everything(settings["seed"])
    model = ReconstructionNet(spec).to(device, memory_format=memory_format(device))
    fit_set, val_set = (
        pretrain_dataset(
            [inputs.paths[i] for i in index], modality=modality, settings=settings, shape=shape
        )
        for index in (fit_index, val_index)
    )
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"]
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=settings["epochs"])
    history, best = [], None
    loading = time.perf_counter() - started
    for epoch in tqdm(range(settings["epochs"]), desc=f"pretrain {modality}", disable=not progress):
        epoch_start = time.perf_counter()
        epoch_seed = _epoch_seed(settings["seed"], epoch)
        torch.manual_seed(epoch_seed)
        fit_set.transform.set_random_state(seed=epoch_seed % 2**32)
        train_loss = _run_epoch(
            model, _loader(fit_set, settings["batch_size"], epoch_seed), modality, device,
            optimiser=optimiser,
        )  # fmt: skip
        scheduler.step()
        val_loss = math.nan
        if len(val_set):  # the same corruption every epoch, so the losses compare
            val_set.transform.set_random_state(seed=settings["seed"] % 2**32)
            val_loss = _run_epoch(
                model, _loader(val_set, settings["batch_size"], None), modality, device
            )
        history.append(
            {
                "epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                "seconds": round(time.perf_counter() - epoch_start, 3),
            }
        )  # fmt: skip
        log.info("epoch %d: train %.5f, val %.5f", epoch + 1, train_loss, val_loss)
        if math.isnan(val_loss) or best is None or val_loss < best["val_loss"]:
            best = {
                "epoch": epoch + 1,
                "val_loss": val_loss,
                "state": _cpu_state(model.encoder.trunk),
            }
    checkpoint = {
        "state_dict": best["state"],
        "spec": spec.as_dict(),
        "modality": modality,
        "fold": int(fold),
        "objective": settings["objective"],
        "patients": list(inputs.patients),
    }
    with atomic_path(out_dir / "encoder.pt") as tmp:
        torch.save(checkpoint, tmp)
    write_table(pd.DataFrame(history, columns=HISTORY_COLUMNS), out_dir / "history.tsv")
    summary = {
        "stage": "pretrain",
        "modality": modality,
        "fold": int(fold),
        "objective": settings["objective"],
        "transductive": bool(settings["transductive"]),
        "counts": inputs.counts,
        "skipped": inputs.skipped,
        "n_fit": len(fit_index),
        "n_validation": len(val_index),
        "validation_patients": [inputs.patients[i] for i in val_index],
        "roi_shape": list(shape),
        "spec": spec.as_dict(),
        "settings": settings,
        "best_epoch": best["epoch"],
        "best_val_loss": _finite_or_none(best["val_loss"]),
        "final_train_loss": history[-1]["train_loss"],
        "final_val_loss": _finite_or_none(history[-1]["val_loss"]),
        "device": device_description(device),
        "timings": {
            "loading_seconds": round(loading, 3),
            "training_seconds": round(sum(row["seconds"] for row in history), 3),
            "total_seconds": round(time.perf_counter() - started, 3),
        },
        "software": software_versions(),
    }
    write_json_atomic(out_dir / "summary.json", summary)
    return summary


def _finite_or_none(value: float) -> float | None:
    """A loss for JSON: null where there was none (no validation ROIs)."""
    return None if math.isnan(value) else value


def _loader(dataset, batch_size: int, seed: int | None) -> DataLoader:
    """Shuffled and seeded for training (``seed``), in order for validation; a lone last
    training sample is dropped (batch norm needs two)."""
    if seed is None:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False)
    drop_last = len(dataset) % batch_size == 1 and len(dataset) > 1
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=generator, drop_last=drop_last
    )


def _run_epoch(
    model: nn.Module,
    loader: DataLoader,
    modality: str,
    device: torch.device,
    *,
    optimiser: torch.optim.Optimizer | None = None,
) -> float:
    """Mean per-volume MSE over one pass; trains when ``optimiser`` is given."""
    model.train(optimiser is not None)
    layout = memory_format(device)
    total, count = 0.0, 0
    with torch.set_grad_enabled(optimiser is not None):
        for batch in loader:
            image = batch[INPUT_KEY].to(device).contiguous(memory_format=layout)
            target = batch[modality].to(device)
            with autocast(device):
                restored = model(image)
            loss = F.mse_loss(restored.float(), target.float())
            if optimiser is not None:
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            total += float(loss.detach()) * len(image)
            count += len(image)
    return total / max(count, 1)
