"""The minimal header reader against pydicom, on real files and files derived from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from lungfusion.ingest.native import read_native_header
from lungfusion.ingest.series import load_slices

LUNG1 = "dicom/nsclc-radiomics-LUNG1-001/ct"
CT_SMALL = "dicom/pydicom-ct-small/CT_small.dcm"
KEYWORDS = (
    "SOPInstanceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
)


def _native(path: Path):
    with open(path, "rb") as fp:
        return read_native_header(fp)


def _assert_matches_pydicom(path: Path) -> None:
    header = _native(path)
    assert header is not None, path
    ds = pydicom.dcmread(path)
    for keyword in KEYWORDS:
        if keyword not in ds:
            assert keyword not in header.values
            continue
        expected, found = ds.data_element(keyword).value, header.values[keyword]
        if isinstance(found, tuple):
            expected = [float(v) for v in (expected if ds[keyword].VM > 1 else [expected])]
            assert list(found) == pytest.approx(expected, rel=0, abs=0), keyword
        else:
            assert found == expected, keyword
    with open(path, "rb") as fp:
        fp.seek(header.pixel_offset)
        assert fp.read(header.pixel_length) == ds.PixelData


@pytest.fixture(scope="module")
def lung1(fixtures_dir) -> list[Path]:
    return sorted((fixtures_dir / LUNG1).glob("*.dcm"))


def test_real_files_read_as_pydicom_reads_them(fixtures_dir, lung1):
    for path in [*lung1[:5], lung1[-1], fixtures_dir / CT_SMALL]:
        _assert_matches_pydicom(path)


def test_series_slices_equal_with_and_without_full_headers(lung1):
    full, full_datasets = load_slices(lung1, all_headers=True)
    fast, fast_datasets = load_slices(lung1, all_headers=False)
    assert len(full_datasets) == len(lung1) and len(fast_datasets) == 1  # only the first file
    assert len(full) == len(fast) == len(lung1)
    for a, b in zip(full, fast, strict=True):
        assert (a.file, a.sop_uid, a.pixel_spacing) == (b.file, b.sop_uid, b.pixel_spacing)
        assert (a.slope, a.intercept, a.value_range) == (b.slope, b.intercept, b.value_range)
        for name in ("position", "row_dir", "col_dir"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.pixels.dtype == b.pixels.dtype
        np.testing.assert_array_equal(a.pixels, b.pixels)


def test_implicit_vr_and_undefined_length_sequences(lung1, tmp_path):
    ds = pydicom.dcmread(lung1[0])
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    nested = Dataset()
    nested.CodeValue = "T-D3000"
    item.ConceptCodeSequence = Sequence([nested])
    ds.ReferencedImageSequence = Sequence([item, item])
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.ReferencedImageSequence[0].is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence[0]["ConceptCodeSequence"].is_undefined_length = True
    explicit = tmp_path / "explicit.dcm"
    ds.save_as(explicit, enforce_file_format=True)
    _assert_matches_pydicom(explicit)

    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit = tmp_path / "implicit.dcm"
    ds.save_as(implicit, enforce_file_format=True, implicit_vr=True, little_endian=True)
    assert pydicom.dcmread(implicit).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    _assert_matches_pydicom(implicit)


def test_unusual_files_are_left_to_pydicom(lung1, tmp_path):
    truncated = tmp_path / "truncated.dcm"
    data = lung1[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    header = _native(truncated)  # the header is whole; the caller checks the pixels' length
    assert header is not None and header.pixel_offset + header.pixel_length > len(data) // 2
    cut_header = tmp_path / "cut_header.dcm"
    cut_header.write_bytes(data[:600])
    assert _native(cut_header) is None

    no_preamble = tmp_path / "raw.dcm"
    no_preamble.write_bytes(data[132:])
    assert _native(no_preamble) is None

    ds = pydicom.dcmread(lung1[0])
    ds.compress(RLELossless)
    compressed = tmp_path / "rle.dcm"
    ds.save_as(compressed)
    assert _native(compressed) is None

    text = tmp_path / "notes.dcm"
    text.write_text("not a DICOM file")
    assert _native(text) is None
