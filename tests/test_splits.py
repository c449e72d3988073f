from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from training_helpers import write_cohort

from lungfusion.folds import fold_patients
from lungfusion.training.splits import cohort_table, make_folds


def _patients(n: int = 40, positive_every: int = 4) -> pd.DataFrame:
    labels = ["SQC" if i % positive_every == 0 else "ADC" for i in range(n)]
    return pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(n)], "label": labels})


def test_every_patient_tested_once_and_roles_disjoint():
    patients = _patients()
    folds = make_folds(patients, n_folds=5, validation_fraction=0.25, seed=3)
    assert list(folds.columns) == ["patient_id", "label", "fold", "role", "has_ct", "has_pet"]
    tested = folds[folds.role == "test"].patient_id
    assert sorted(tested) == sorted(patients.patient_id)  # each exactly once
    for fold in range(5):
        part = folds[folds.fold == fold]
        assert part.patient_id.is_unique  # one role per patient per fold
        assert len(part) == len(patients)
        roles = fold_patients(folds, fold)
        assert len(roles["val"]) == round(0.25 * (len(roles["train"]) + len(roles["val"])))


def test_folds_are_stratified():
    folds = make_folds(_patients(40), n_folds=5, validation_fraction=0.25, seed=3)
    test_positives = (
        folds[folds.role == "test"].groupby("fold").label.apply(lambda s: (s == "SQC").sum())
    )
    assert set(test_positives) == {2}  # 10 SQC over 5 folds
    val_positives = (
        folds[folds.role == "val"].groupby("fold").label.apply(lambda s: (s == "SQC").sum())
    )
    assert val_positives.min() >= 1


def test_patients_without_pet_are_spread_over_every_split():
    # 8 of 40 without PET, all of them ADC: by class alone a validation split of 6 can miss
    # the PET patients' share; crossed with PET availability each split holds its share
    patients = _patients(40)
    patients["has_pet"] = [i % 10 >= 3 or i % 4 == 0 for i in range(40)]
    folds = make_folds(patients, n_folds=4, validation_fraction=0.25, seed=3)
    by_role = folds.groupby(["fold", "role"])
    no_pet_tested = by_role.has_pet.apply(lambda s: int((~s).sum())).xs("test", level="role")
    assert set(no_pet_tested) == {2}  # 8 over 4 folds
    for (fold, role), part in by_role:
        pet_adc = int((part.has_pet & (part.label == "ADC")).sum())
        assert pet_adc >= 1, (fold, role)
        assert (part.label == "SQC").sum() >= 1, (fold, role)
    assert (folds.has_pet.groupby(folds.patient_id).nunique() == 1).all()


def test_an_all_pet_cohort_splits_as_by_class_alone():
    patients = _patients(40)
    with_flag = patients.assign(has_pet=True)
    by_class = make_folds(patients, n_folds=5, validation_fraction=0.25, seed=3)
    pd.testing.assert_frame_equal(
        make_folds(with_flag, n_folds=5, seed=3, validation_fraction=0.25), by_class
    )


def test_folds_are_seeded():
    a = make_folds(_patients(), n_folds=4, seed=1)
    b = make_folds(_patients(), n_folds=4, seed=1)
    c = make_folds(_patients(), n_folds=4, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_validation_comes_from_training_patients():
    patients = _patients()
    folds = make_folds(patients, n_folds=5, seed=0)
    for fold in range(5):
        roles = fold_patients(folds, fold)
        assert not set(roles["val"].patient_id) & set(roles["test"].patient_id)
        assert not set(roles["val"].patient_id) & set(roles["train"].patient_id)


def test_too_few_patients_per_class_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer patients than folds"):
        make_folds(_patients(12, positive_every=6), n_folds=5)


def test_cohort_table_names_why_a_patient_is_left_out(tmp_path):
    roi_dir, sheet_path = write_cohort(tmp_path, n=8, without_pet=(2,), failed=(5,))
    sheet = pd.read_csv(sheet_path, sep="\t")
    sheet.loc[sheet.patient_id == "P006", "label"] = "SCLC"
    table = cohort_table(sheet, roi_dir, classes=["ADC", "SQC"])
    by_id = table.set_index("patient_id")
    assert by_id.loc["P005", "included"] == "no"
    assert "ingest" in by_id.loc["P005", "reason"] and "no CT series" in by_id.loc["P005", "reason"]
    assert by_id.loc["P005", "excluded_at"] == "ingest"
    assert by_id.loc["P006", "excluded_at"] == "sample sheet"
    assert by_id.loc["P006", "included"] == "no" and "SCLC" in by_id.loc["P006", "reason"]
    assert by_id.loc["P002", "included"] == "yes" and not by_id.loc["P002", "has_pet"]
    assert (table.included == "yes").sum() == 6
    assert np.all(table.loc[table.included == "yes", "reason"] == "")


def test_splits_command(tmp_path):
    from lungfusion.cli import main

    roi_dir, sheet = write_cohort(tmp_path, n=12, failed=(0,))
    out = tmp_path / "splits" / "folds.tsv"
    params = '{"splits": {"n_folds": 3, "validation_fraction": 0.25, "seed": 1}}'
    argv = ["--params", params, "splits", "--sample-sheet", str(sheet), "--roi-dir", str(roi_dir)]
    assert main([*argv, "--out", str(out)]) == 0
    folds = pd.read_csv(out, sep="\t")
    cohort = pd.read_csv(tmp_path / "splits" / "cohort.tsv", sep="\t")
    assert len(cohort) == 12 and (cohort.included == "no").sum() == 1
    assert sorted(folds[folds.role == "test"].patient_id) == [f"P{i:03d}" for i in range(1, 12)]
