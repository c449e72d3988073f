"""RTSTRUCT -> mask: scanline fill on known polygons and the LUNG1-001 clinicians' contours."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from lungfusion.errors import PatientInputError
from lungfusion.ingest.rtstruct import _fill_polygon, rtstruct_roi_names, rtstruct_to_mask


def test_fill_square_counts_pixel_centres_inside():
    # square from 1.5 to 5.5 holds centres 2, 3, 4, 5 on each axis
    square = np.array([[1.5, 1.5], [5.5, 1.5], [5.5, 5.5], [1.5, 5.5]])
    mask = _fill_polygon(square, width=10, height=8)
    assert mask.sum() == 16
    assert mask[2:6, 2:6].all()
    assert mask.shape == (8, 10)


def test_fill_triangle_and_clipping_at_the_border():
    triangle = np.array([[-5.0, -5.0], [20.0, -5.0], [-5.0, 20.0]])  # covers the top-left half
    mask = _fill_polygon(triangle, width=10, height=10)
    assert mask[0, 0] and not mask[9, 9]
    assert mask.sum() == sum(1 for y in range(10) for x in range(10) if x + y < 15)


@pytest.fixture(scope="module")
def lung1(fixtures_dir):
    folder = fixtures_dir / "dicom" / "nsclc-radiomics-LUNG1-001"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder / "ct")))
    return reader.Execute(), folder / "rtstruct" / "1-1.dcm"


def test_lung1_rois_and_volumes(lung1):
    ct, rtstruct = lung1
    assert set(rtstruct_roi_names(rtstruct)) == {"GTV-1", "Spinal-Cord", "Lung-Left", "Lung-Right"}
    gtv = rtstruct_to_mask(rtstruct, ct, "GTV-1")
    assert gtv.GetSize() == ct.GetSize() and gtv.GetOrigin() == ct.GetOrigin()
    volume_ml = sitk.GetArrayViewFromImage(gtv).sum() * np.prod(ct.GetSpacing()) / 1000
    assert 150 < volume_ml < 162  # 156 mL measured independently (NOTES.md)
    left = sitk.GetArrayFromImage(rtstruct_to_mask(rtstruct, ct, "lung-left"))  # any case
    # the left lung lies at larger physical x (LPS: +x is the patient's left)
    x_centre = np.nonzero(left)[2].mean()
    assert ct.TransformContinuousIndexToPhysicalPoint((x_centre, 0, 0))[0] > 0


def test_unknown_roi_names_the_file_and_the_choices(lung1):
    ct, rtstruct = lung1
    with pytest.raises(PatientInputError, match="Lung-Left"):
        rtstruct_to_mask(rtstruct, ct, "Heart")
