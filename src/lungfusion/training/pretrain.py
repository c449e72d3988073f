"""Label-free pretraining of one modality's image encoder on ROI tensors (``pretrain`` stage).

Two objectives (``pretrain.objective``), both on ``build_trunk(spec, in_channels=1)``:

- ``masked``: masked-volume reconstruction in the style of Models Genesis (Zhou et al. 2021) and
  of masked autoencoders. Each ROI is corrupted by MONAI transforms (cubes in-painted with
  noise, :class:`~monai.transforms.RandCoarseDropoutd`; cubes whose voxels are shuffled in
  place, :class:`~monai.transforms.RandCoarseShuffled`), and the encoder, run as stem + four
  stages, feeds a light decoder that restores the uncorrupted volume.
- ``descriptors``: regression of lesion descriptors computed from the images alone (the
  radiomics stage's table: volume, solid share, SUVmax, ...), standardised on the pretraining
  patients, from the globally pooled encoder. The pretext teaches the encoder what a
  radiologist reads off the lesion, where reconstruction spends its capacity on background
  texture; no label is used, so unlabelled patients count as for ``masked``.

Flips are applied to the input and its target volume alike (descriptors do not change).

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
from lungfusion.training.aux import masked_mse, standardised_targets
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
OBJECTIVES = ("masked", "descriptors")
SOURCES = ("train", "val", "test", "unlabelled", "extra")
HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "seconds"]
INPUT_KEY = "image"  # the corrupted copy; the modality's own key keeps the target
TARGET_KEY = "descriptors"  # the standardised descriptor vector (objective descriptors)


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


class DescriptorNet(nn.Module):
    """An encoder trunk (:class:`TrunkBranch`), global average pooling and one linear layer
    that predicts ``n_targets`` standardised descriptors: linear, so what the descriptors need
    has to be in the encoder's pooled features, where the networks' heads will read it."""

    def __init__(self, spec, n_targets: int) -> None:
        super().__init__()
        from lungfusion.models.encoders import TrunkBranch

        self.encoder = TrunkBranch(spec, in_channels=1)
        self.head = nn.Linear(self.encoder.out_channels, n_targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=(2, 3, 4)))


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
    paths: Sequence[str | Path],
    *,
    modality: str,
    settings: dict,
    shape: Sequence[int],
    targets: np.ndarray | None = None,
) -> CacheDataset:
    """The ROIs of one modality in memory. ``masked``: ``modality`` is the target and ``image``
    its corrupted copy; ``descriptors``: ``modality`` is the input and ``descriptors`` (a row
    of ``targets`` per path) the target. Only the random transforms run again each epoch."""
    other = [key for key in (*MODALITIES, "has_pet") if key != modality]
    transforms = [LoadRoid(), DeleteItemsd(keys=other)]
    data = [{"path": str(p)} for p in paths]
    if settings["objective"] == "descriptors":
        for item, row in zip(data, targets, strict=True):
            item[TARGET_KEY] = row.astype(np.float32)
        if settings["flip"]:
            transforms += [RandFlipd(keys=[modality], prob=0.5, spatial_axis=a) for a in range(3)]
        keys = [modality, TARGET_KEY]
    else:
        transforms += corruption(settings, shape, modality)
        keys = [modality, INPUT_KEY]
    transforms.append(EnsureTyped(keys=keys, data_type="tensor", track_meta=False))
    return CacheDataset(
        data=data,
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


def default_descriptors(modality: str) -> list[str]:
    """The semantic model's descriptors one modality's images carry on their own: CT's without
    the PET-read ones, PET's without those that need the CT (``ctpet_*``)."""
    from lungfusion.estimators.radiomics import PET_PREFIXES, SEMANTIC_FEATURES

    if modality == "ct":
        return [c for c in SEMANTIC_FEATURES if not c.startswith(PET_PREFIXES)]
    return [c for c in SEMANTIC_FEATURES if c.startswith(PET_PREFIXES) and "ctpet_" not in c]


def descriptor_table(
    features_path: str | Path | None, modality: str, columns: dict | None
) -> pd.DataFrame:
    """The descriptors (patients x columns, NaN unknown) the ``descriptors`` objective
    regresses for ``modality``: ``pretrain.descriptors[modality]``, or
    :func:`default_descriptors`; columns with no value at all are dropped."""
    if features_path is None:
        raise ValueError(
            "pretrain.objective descriptors needs the radiomics table (--radiomics-features)"
        )
    wanted = list((columns or {}).get(modality) or default_descriptors(modality))
    table = pd.read_csv(features_path, sep="\t", dtype={"patient_id": str})
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise KeyError(
            f"pretrain.descriptors.{modality}: {missing} not in {features_path} (keep the "
            "radiomics stage's context features on, or name columns the table has)"
        )
    values = table.set_index("patient_id")[wanted].apply(pd.to_numeric, errors="coerce")
    values = values.astype(float).dropna(axis=1, how="all")
    if values.empty or values.shape[1] == 0:
        raise ValueError(f"{features_path}: no {modality} descriptor has a value for any patient")
    return values


def with_descriptors(inputs: PretrainInputs, descriptors: pd.DataFrame) -> PretrainInputs:
    """``inputs`` without the ROIs whose patient has no descriptor in the table."""
    known = descriptors.notna().any(axis=1)
    kept = PretrainInputs(skipped=dict(inputs.skipped))
    for path, patient, source in zip(inputs.paths, inputs.patients, inputs.sources, strict=True):
        if patient in known.index and known[patient]:
            kept.add(path, patient, source)
        else:
            kept.skip("no_descriptors")
    return kept


def standardised_descriptors(
    descriptors: pd.DataFrame, patients: list[str], fit_index: np.ndarray
) -> tuple[np.ndarray, dict]:
    """Each patient's descriptor row (in ``patients`` order), centred and scaled on the fit
    patients (the validation ROIs do not shape the scale); the scaling for the record."""
    columns = list(descriptors.columns)
    fit_patients = [patients[i] for i in fit_index]
    scaled, scaling = standardised_targets(descriptors, columns, fit_patients)
    return scaled.loc[patients].to_numpy(np.float32), {"columns": columns, **scaling}


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
    radiomics_features: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Pretrain fold ``fold``'s ``modality`` encoder; write ``encoder.pt``, ``history.tsv`` and
    ``summary.json`` in ``out_dir`` and return the summary.

    The loss is the MSE between the restored and the uncorrupted volume over every voxel, not
    only the corrupted ones: as in Models Genesis, restoring the untouched voxels keeps the
    encoder describing the whole lesion and its surroundings, the noise-filled and shuffled
    cubes (whose union MONAI does not report) add the in-painting and context tasks, and the
    loss needs no mask bookkeeping. With ``descriptors`` the loss is the MSE over the known
    standardised descriptors of the radiomics table ``radiomics_features``; ROIs without any
    (an extra folder's, a failed lesion) are left out. The encoder is ``train.encoder``'s trunk
    with the widths the networks will have under ``train.init: pretrain``.
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
    descriptors = None
    if settings["objective"] == "descriptors":
        descriptors = descriptor_table(radiomics_features, modality, settings["descriptors"])
        inputs = with_descriptors(inputs, descriptors)
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
    targets, scaling = None, None
    if descriptors is None:
        model = ReconstructionNet(spec)
    else:
        targets, scaling = standardised_descriptors(descriptors, inputs.patients, fit_index)
        model = DescriptorNet(spec, targets.shape[1])
    model = model.to(device, memory_format=memory_format(device))
    fit_set, val_set = (
        pretrain_dataset(
            [inputs.paths[i] for i in index],
            modality=modality,
            settings=settings,
            shape=shape,
            targets=None if targets is None else targets[index],
        )  # fmt: skip
        for index in (fit_index, val_index)
    )
    loss_of = _descriptor_loss if descriptors is not None else _reconstruction_loss
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
            loss_of, optimiser=optimiser,
        )  # fmt: skip
        scheduler.step()
        val_loss = math.nan
        if len(val_set):  # the same corruption every epoch, so the losses compare
            val_set.transform.set_random_state(seed=settings["seed"] % 2**32)
            val_loss = _run_epoch(
                model, _loader(val_set, settings["batch_size"], None), modality, device, loss_of
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
        "descriptors": scaling,
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
        "descriptors": scaling,
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


def _reconstruction_loss(model, batch, modality: str, device, layout) -> torch.Tensor:
    """MSE between the volume restored from the corrupted copy and the volume."""
    image = batch[INPUT_KEY].to(device).contiguous(memory_format=layout)
    with autocast(device):
        restored = model(image)
    return F.mse_loss(restored.float(), batch[modality].to(device).float())


def _descriptor_loss(model, batch, modality: str, device, layout) -> torch.Tensor:
    """MSE over the known (finite) standardised descriptors."""
    image = batch[modality].to(device).contiguous(memory_format=layout)
    with autocast(device):
        predicted = model(image).float()
    return masked_mse(predicted, batch[TARGET_KEY].to(device).float())


def _run_epoch(
    model: nn.Module,
    loader: DataLoader,
    modality: str,
    device: torch.device,
    loss_of=_reconstruction_loss,
    *,
    optimiser: torch.optim.Optimizer | None = None,
) -> float:
    """Mean per-volume loss over one pass; trains when ``optimiser`` is given."""
    model.train(optimiser is not None)
    layout = memory_format(device)
    total, count = 0.0, 0
    with torch.set_grad_enabled(optimiser is not None):
        for batch in loader:
            loss = loss_of(model, batch, modality, device, layout)
            if optimiser is not None:
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            total += float(loss.detach()) * len(batch[modality])
            count += len(batch[modality])
    return total / max(count, 1)
