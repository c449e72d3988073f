"""Write CT, PET, localizer and fused secondary-capture series as a scanner would, with pydicom.

Explicit VR little endian, a full file meta header, deterministic UIDs (hashed from the seed, the
patient and the instance's role), and string-formatted DS/TM values so that what the tags say is
exactly what the pixel data were quantised with.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

F18_HALF_LIFE_S = 6586.2
IMPLEMENTATION_VERSION = "LUNGFUSION_01"


def make_uid(*parts: object) -> str:
    """A UID that depends only on ``parts`` (the seed, the patient, the role, the index)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def format_ds(value: float, max_significant: int = 10) -> str:
    """A DS string of at most 16 characters; parse it back to know the exact value written."""
    for digits in range(max_significant, 3, -1):
        text = f"{value:.{digits}g}"
        if "e" in text:
            text = f"{value:.{digits}E}"
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot write {value} as a DS")


def format_tm(seconds_of_day: float) -> str:
    """TM 'HHMMSS.FF' (hundredths of a second) for a time of day in seconds."""
    hundredths = int(round(seconds_of_day * 100))
    h, rest = divmod(hundredths, 360000)
    m, rest = divmod(rest, 6000)
    s, cs = divmod(rest, 100)
    return f"{h:02d}{m:02d}{s:02d}.{cs:02d}"


def parse_tm(text: str) -> float:
    return int(text[0:2]) * 3600 + int(text[2:4]) * 60 + float(text[4:])


@dataclass
class StudyInfo:
    """What every instance of one patient's study shares."""

    patient_id: str
    sex: str
    age: int
    weight_kg: float
    size_m: float
    study_uid: str
    frame_of_reference_uid: str
    study_date: str  # YYYYMMDD
    study_time: str  # TM
    study_description: str
    accession: str


@dataclass
class SeriesInfo:
    series_uid: str
    series_number: int
    description: str
    series_time: str  # TM
    uid_parts: tuple  # entropy for the instances' UIDs


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def _base_dataset(study: StudyInfo, series: SeriesInfo, sop_class: str, index: int) -> Dataset:
    ds = _series_dataset(study, series, sop_class)
    _set_instance(ds, series, index)
    ds.file_meta = _file_meta(sop_class, ds.SOPInstanceUID)
    return ds


def _set_instance(ds: Dataset, series: SeriesInfo, index: int) -> None:
    ds.SOPInstanceUID = make_uid(*series.uid_parts, "instance", index)
    ds.InstanceNumber = str(index)


def _series_dataset(study: StudyInfo, series: SeriesInfo, sop_class: str) -> Dataset:
    """What every instance of the series says (all but SOPInstanceUID and InstanceNumber)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study.study_date
    ds.StudyTime = study.study_time
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = series.series_time
    ds.AccessionNumber = study.accession
    ds.Manufacturer = "LUNGFUSION"
    ds.ManufacturerModelName = "Synthetic PET/CT"
    ds.InstitutionName = "Synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.study_description
    ds.SeriesDescription = series.description
    ds.PatientName = study.patient_id
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = study.sex
    ds.PatientAge = f"{study.age:03d}Y"
    ds.PatientSize = format_ds(study.size_m)
    ds.PatientWeight = format_ds(study.weight_kg)
    ds.PatientIdentityRemoved = "YES"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = str(series.series_number)
    return ds


def _set_grey_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    _set_grey_format(ds, pixels.shape)
    _set_pixel_data(ds, pixels)


def _set_grey_format(ds: Dataset, shape: tuple[int, ...]) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1


def _set_pixel_data(ds: Dataset, pixels: np.ndarray) -> None:
    ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(pixels, dtype="<i2").tobytes())


# what differs between the slices of a series (SeriesEncoder encodes these per file)
_SLICE_VARYING = (
    "SOPInstanceUID",
    "InstanceNumber",
    "ImagePositionPatient",
    "SliceLocation",
    "PixelData",
)


def _set_slice_position(ds: Dataset, position) -> None:
    ds.ImagePositionPatient = [format_ds(v) for v in position]
    ds.SliceLocation = format_ds(position[2])


def _set_slice_geometry(ds: Dataset, position, spacing_xy, thickness: float) -> None:
    ds.PositionReferenceIndicator = ""
    _set_slice_position(ds, position)
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceThickness = format_ds(thickness)
    # PixelSpacing is row spacing (y) then column spacing (x)
    ds.PixelSpacing = [format_ds(spacing_xy[1]), format_ds(spacing_xy[0])]


def instance_file_name(index: int, count: int) -> str:
    return f"1-{index:0{max(2, len(str(count)))}d}.dcm"


def _save(ds: Dataset, folder: Path, index: int, count: int) -> None:
    ds.save_as(folder / instance_file_name(index, count), enforce_file_format=True)


def _encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


class SeriesEncoder:
    """Writes a series' files as ``save_as(..., enforce_file_format=True)`` would, byte for byte,
    several times faster: the elements every instance shares are encoded once, in the runs
    between the tags that vary; each instance then encodes only its own few elements.

    Explicit VR little endian elements encode independently of each other, and a dataset's
    encoding is its elements' encodings in tag order, so the joined runs are the whole file.
    """

    def __init__(self, shared: Dataset, varying: tuple[str, ...]):
        self._meta = _file_meta(shared.SOPClassUID, "")  # its instance UID is set per file
        self._varying = sorted(Tag(keyword) for keyword in varying)
        runs: list[Dataset] = [Dataset() for _ in range(len(self._varying) + 1)]
        for element in shared:
            if element.tag not in self._varying:
                runs[bisect.bisect(self._varying, element.tag)].add(element)
        self._runs = [_encode(run) for run in runs]

    def write(self, path: Path, instance: Dataset) -> None:
        """``instance``: the varying elements, SOPInstanceUID among them."""
        self._meta.MediaStorageSOPInstanceUID = instance.SOPInstanceUID
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, self._meta, enforce_standard=True)
        fp.write(self._runs[0])
        for tag, run in zip(self._varying, self._runs[1:], strict=True):
            if tag in instance:
                write_data_element(fp, instance[tag])
            fp.write(run)
        path.write_bytes(fp.getvalue())


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    *,
    study: StudyInfo,
    series: SeriesInfo,
    origin,
    spacing,
    kernel: str = "STANDARD",
) -> None:
    """CT slices (z-y-x array in HU, z ascending) as int16 with intercept -1024; instance 1 on top."""
    folder.mkdir(parents=True, exist_ok=True)
    stored = np.clip(np.rint(hu) + 1024, 0, 4095).astype(np.int16)
    nz = hu.shape[0]
    ds = _series_dataset(study, series, CTImageStorage)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Modality = "CT"
    ds.KVP = "120"
    ds.ConvolutionKernel = kernel
    ds.ReconstructionDiameter = format_ds(spacing[0] * hu.shape[2])
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    _set_slice_geometry(ds, origin, spacing, spacing[2])
    ds.AcquisitionNumber = "1"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    _set_grey_format(ds, stored.shape[1:])
    encoder = SeriesEncoder(ds, _SLICE_VARYING)
    for k in range(nz):
        index = nz - k  # scanners number from the head down
        instance = Dataset()
        _set_instance(instance, series, index)
        _set_slice_position(instance, (origin[0], origin[1], origin[2] + k * spacing[2]))
        _set_pixel_data(instance, stored[k])
        encoder.write(folder / instance_file_name(index, nz), instance)


def quantise_per_slice(values: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
    """int16 slices with one RescaleSlope each (intercept 0); returns stored, slope strings, floats."""
    stored = np.zeros(values.shape, dtype=np.int16)
    slopes_text, slopes = [], []
    for k, plane in enumerate(values):
        peak = float(plane.max())
        text = format_ds(peak / 32000.0 if peak > 0 else 1.0, max_significant=8)
        slope = float(text)
        stored[k] = np.clip(np.rint(plane / slope), 0, 32767).astype(np.int16)
        slopes_text.append(text)
        slopes.append(slope)
    return stored, slopes_text, np.array(slopes)


@dataclass
class PetDose:
    injection_time: str  # TM
    injection_datetime: str  # DT
    total_dose_bq: float
    half_life_s: float = F18_HALF_LIFE_S


def suv_to_bqml_factor(*, weight_kg: float, dose: PetDose, series_time: str) -> float:
    """Bq/mL per unit SUVbw, decaying the dose from injection to the series time (DECY START)."""
    elapsed = parse_tm(series_time) - parse_tm(dose.injection_time)
    decayed = dose.total_dose_bq * math.exp(-math.log(2) * elapsed / dose.half_life_s)
    return decayed / (weight_kg * 1000.0)


def write_pet_series(
    folder: Path,
    bqml: np.ndarray,
    *,
    study: StudyInfo,
    series: SeriesInfo,
    origin,
    spacing,
    dose: PetDose,
    attenuation_corrected: bool = True,
) -> np.ndarray:
    """PET slices in Bq/mL (z-y-x, z ascending), int16 with a slope per slice; returns the slopes."""
    folder.mkdir(parents=True, exist_ok=True)
    stored, slope_texts, slopes = quantise_per_slice(bqml)
    nz = bqml.shape[0]
    corrected = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
    if not attenuation_corrected:
        corrected = ["DECY", "DTIM", "RAN", "NORM"]
    radiopharmaceutical = Dataset()
    radiopharmaceutical.Radiopharmaceutical = "Fluorodeoxyglucose"
    radiopharmaceutical.RadiopharmaceuticalStartTime = dose.injection_time
    radiopharmaceutical.RadiopharmaceuticalStartDateTime = dose.injection_datetime
    radiopharmaceutical.RadionuclideTotalDose = format_ds(dose.total_dose_bq)
    radiopharmaceutical.RadionuclideHalfLife = format_ds(dose.half_life_s)
    radiopharmaceutical.RadionuclidePositronFraction = "0.9673"
    nuclide = Dataset()
    nuclide.CodeValue = "C-111A1"
    nuclide.CodingSchemeDesignator = "SRT"
    nuclide.CodeMeaning = "^18^Fluorine"
    radiopharmaceutical.RadionuclideCodeSequence = Sequence([nuclide])
    sop_class = PositronEmissionTomographyImageStorage
    ds = _series_dataset(study, series, sop_class)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Modality = "PT"
    ds.SeriesType = ["STATIC", "IMAGE"]
    ds.Units = "BQML"
    ds.CountsSource = "EMISSION"
    ds.DecayCorrection = "START"
    ds.CorrectedImage = corrected
    ds.AttenuationCorrectionMethod = "CT" if attenuation_corrected else "NONE"
    ds.ReconstructionMethod = "OSEM 3i21s"
    ds.RandomsCorrectionMethod = "DLYD"
    ds.DecayFactor = "1"
    ds.FrameReferenceTime = "0"
    ds.ActualFrameDuration = "180000"
    ds.NumberOfSlices = nz
    ds.RadiopharmaceuticalInformationSequence = Sequence([radiopharmaceutical])
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    _set_slice_geometry(ds, origin, spacing, spacing[2])
    ds.AcquisitionNumber = "1"
    ds.RescaleIntercept = "0"
    _set_grey_format(ds, stored.shape[1:])
    varying = (
        *_SLICE_VARYING,
        "ImageIndex",
        "RescaleSlope",
        "SmallestImagePixelValue",
        "LargestImagePixelValue",
    )
    encoder = SeriesEncoder(ds, varying)
    for k in range(nz):
        index = nz - k
        instance = Dataset()
        _set_instance(instance, series, index)
        instance.ImageIndex = index
        _set_slice_position(instance, (origin[0], origin[1], origin[2] + k * spacing[2]))
        instance.RescaleSlope = slope_texts[k]
        _set_pixel_data(instance, stored[k])
        instance.add_new("SmallestImagePixelValue", "SS", int(stored[k].min()))
        instance.add_new("LargestImagePixelValue", "SS", int(stored[k].max()))
        encoder.write(folder / instance_file_name(index, nz), instance)
    return slopes


def write_localizer(
    folder: Path,
    hu_projection: np.ndarray,
    *,
    study: StudyInfo,
    series: SeriesInfo,
    origin,
    spacing,
) -> None:
    """One coronal topogram (rows go down the patient, columns to the left)."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = _base_dataset(study, series, CTImageStorage, 1)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.Modality = "CT"
    ds.KVP = "120"
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [format_ds(v) for v in origin]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    ds.SliceThickness = "1"
    ds.PixelSpacing = [format_ds(spacing[1]), format_ds(spacing[0])]
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    _set_grey_pixels(ds, np.clip(np.rint(hu_projection) + 1024, 0, 4095).astype(np.int16))
    _save(ds, folder, 1, 1)


def write_fused_capture(
    folder: Path, rgb_slices: np.ndarray, *, study: StudyInfo, series: SeriesInfo
) -> None:
    """A fused PET/CT screen capture: RGB secondary capture without any geometry tags."""
    folder.mkdir(parents=True, exist_ok=True)
    n = rgb_slices.shape[0]
    for k in range(n):
        ds = _base_dataset(study, series, SecondaryCaptureImageStorage, k + 1)
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.Modality = "PT"
        ds.ConversionType = "WSD"
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.Rows, ds.Columns = (int(v) for v in rgb_slices.shape[1:3])
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.add_new(0x7FE00010, "OB", np.ascontiguousarray(rgb_slices[k], dtype=np.uint8).tobytes())
        _save(ds, folder, k + 1, n)
