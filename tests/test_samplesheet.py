"""Sample sheet reading: column mapping (incl. the collections' own spellings) and ID checks."""

from __future__ import annotations

import pandas as pd
import pytest

from lungfusion.samplesheet import SampleSheetError, read_sample_sheet


def write_tsv(path, rows, header=("patient_id", "label", "age")):
    lines = ["\t".join(header)] + ["\t".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_tsv_and_keeps_known_columns(tmp_path):
    sheet = write_tsv(tmp_path / "s.tsv", [("P1", "ADC", 61), ("P2", "SQC", 70)])
    table = read_sample_sheet(sheet, classes=["ADC", "SQC"])
    assert list(table["patient_id"]) == ["P1", "P2"]
    assert list(table["label"]) == ["ADC", "SQC"]
    assert list(table["age"]) == ["61", "70"]


def test_lung_pet_ct_dx_xlsx_with_full_width_header(tmp_path):
    # The collection's own sheet: NewPatientID, "weight (kg)" and a full-width "Ｍ-Stage" header.
    frame = pd.DataFrame(
        {
            "NewPatientID": ["Lung_Dx-A0001", "Lung_Dx-G0011", "Lung_Dx-B0004"],
            "Sex": ["M", "F", "M"],
            "Age": [68, 55, 71],
            "weight (kg)": [70.5, None, 80],
            "T-Stage": ["1c", "2b", "is"],
            "N-Stage": ["0", "2", "1"],
            "Ｍ-Stage": ["0", "1a", ""],
        }
    )
    path = tmp_path / "statistics-clinical-20201221.xlsx"
    frame.to_excel(path, index=False)
    table = read_sample_sheet(
        path,
        columns={
            "patient_id": "NewPatientID",
            "sex": "Sex",
            "age": "Age",
            "weight_kg": "weight (kg)",
            "t_stage": "T-Stage",
            "n_stage": "N-Stage",
            "m_stage": "M-Stage",  # ASCII M in the config still finds the full-width header
        },
        label_from_id={
            "pattern": r"Lung_Dx-([ABEG])\d+",
            "map": {"A": "ADC", "G": "SQC", "B": "SCLC"},
        },
        classes=["ADC", "SQC"],
    )
    assert list(table["patient_id"]) == ["Lung_Dx-A0001", "Lung_Dx-G0011"]  # small cell left out
    assert list(table["label"]) == ["ADC", "SQC"]
    assert list(table["m_stage"]) == ["0", "1a"]
    assert table["weight_kg"].iloc[0] == 70.5


def test_csv_by_extension(tmp_path):
    path = tmp_path / "clinical.csv"
    path.write_text(
        "PatientID,Histology\nLUNG1-001,large cell\nLUNG1-002,squamous cell carcinoma\n"
    )
    table = read_sample_sheet(path, columns={"patient_id": "PatientID", "label": "Histology"})
    assert list(table["label"]) == ["large cell", "squamous cell carcinoma"]


def test_missing_column_is_named(tmp_path):
    sheet = write_tsv(tmp_path / "s.tsv", [("P1", 61)], header=("patient_id", "age"))
    with pytest.raises(SampleSheetError, match=r"missing column 'label' \(cohort.columns.label\)"):
        read_sample_sheet(sheet)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (["P1", ""], r"row 3: empty patient ID"),
        (["P1", "P2", "P1"], r"row 4: patient ID 'P1' duplicates row 2"),
        (["P1", "a/b"], r"row 3: patient ID 'a/b' is not a safe folder name"),
        (["..", "P1"], r"row 2: patient ID '\.\.' is not a safe folder name"),
    ],
)
def test_bad_ids_are_rejected_with_their_row(tmp_path, ids, message):
    sheet = write_tsv(tmp_path / "s.tsv", [(pid, "ADC", 60) for pid in ids])
    with pytest.raises(SampleSheetError, match=message):
        read_sample_sheet(sheet)
