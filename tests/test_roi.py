"""ROI tensors: shapes, ranges, hotspot placement, padding, CT-only, annotations, QC picture."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from lungfusion.commands import roi as roi_command
from lungfusion.imaging import roi as roi_lib

SHAPE = (16, 12, 8)  # x, y, z


def _image(array: np.ndarray, spacing=(2.0, 2.0, 3.0), origin=(-50.0, -40.0, -30.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def scene(hot=(30, 20, 10)):
    """CT ramp, PET with one hot voxel at ``hot`` (x, y, z), region = a central block."""
    z, y, x = np.mgrid[0:20, 0:40, 0:50]
    ct = _image((x * 40.0 - 1000.0).astype(np.float32))  # -1000 .. 960 HU along x
    suv = np.full(z.shape, 1.0, dtype=np.float32)
    suv[hot[2], hot[1], hot[0]] = 15.0
    suv[2, 2, 2] = 30.0  # hotter, but far outside the region: must be ignored
    region = np.zeros(z.shape, dtype=np.uint8)
    region[5:15, 10:30, 15:35] = 1
    return ct, _image(suv), _image(region)


def test_hotspot_box_shapes_ranges_and_centre():
    ct, pet, region = scene()
    grid, info = roi_lib.hotspot_grid(ct, pet, region, shape=SHAPE)
    assert info["hotspot_index"] == [30, 20, 10] and info["suv_max"] == 15.0
    arrays = roi_lib.extract_roi(ct, pet, region, grid, ct_window=(-1024, 1024), suv_window=(0, 20))
    assert set(arrays) == set(roi_lib.NPZ_KEYS)
    for key in ("ct", "pet", "lungs"):
        assert arrays[key].shape == (SHAPE[2], SHAPE[1], SHAPE[0])
    assert arrays["ct"].dtype == np.float32 and arrays["pet"].dtype == np.float32
    assert arrays["lungs"].dtype == np.uint8 and arrays["has_pet"].dtype == bool
    assert arrays["ct"].min() >= 0 and arrays["ct"].max() <= 1
    # the hotspot lies inside the box, at SUV 15 -> 0.75
    first, last = grid.corner_index(ct)
    assert all(a <= h <= b for a, h, b in zip(first, (30, 20, 10), last, strict=True))
    assert arrays["pet"].max() == pytest.approx(0.75)
    k, j, i = np.unravel_index(arrays["pet"].argmax(), arrays["pet"].shape)
    assert (i + first[0], j + first[1], k + first[2]) == (30, 20, 10)
    # exact copy of the CT on its own grid: voxel (i, j, k) of the ROI is CT x index i + first
    assert arrays["ct"][0, 0, 0] == pytest.approx(((first[0] * 40 - 1000) + 1024) / 2048)
    np.testing.assert_allclose(arrays["spacing"], ct.GetSpacing())
    np.testing.assert_allclose(
        arrays["origin"], ct.TransformIndexToPhysicalPoint([int(v) for v in first])
    )


def test_box_leaving_the_image_is_padded_with_the_window_minimum():
    ct, pet, region = scene(hot=(16, 11, 6))  # hotspot at the region's corner
    region_array = sitk.GetArrayFromImage(region)
    region_array[0:8, 0:14, 0:18] = 1  # extend the region to the image corner
    region2 = _image(region_array)
    pet_array = sitk.GetArrayFromImage(pet)
    pet_array[1, 1, 1] = 40.0  # now inside the region, at the corner
    grid, _ = roi_lib.hotspot_grid(ct, _image(pet_array), region2, shape=SHAPE)
    first, _ = grid.corner_index(ct)
    assert first[0] < 0 and first[1] < 0 and first[2] < 0
    arrays = roi_lib.extract_roi(
        ct, _image(pet_array), region2, grid, ct_window=(-500, 500), suv_window=(0, 20)
    )
    assert np.all(arrays["ct"][:, :, 0] == 0.0)  # outside in x: window minimum -> 0
    assert np.all(arrays["pet"][0] == 0.0) and np.all(arrays["lungs"][0] == 0)
    assert arrays["pet"].max() == 1.0  # SUV 40 clipped to the window


def test_ct_only_falls_back_to_the_region_centre():
    ct, _, region = scene()
    grid, info = roi_lib.hotspot_grid(ct, None, region, shape=SHAPE)
    assert info["fallback"] is True
    arrays = roi_lib.extract_roi(
        ct, None, region, grid, ct_window=(-1024, 1024), suv_window=(0, 20)
    )
    assert not arrays["has_pet"] and not arrays["pet"].any()
    assert arrays["lungs"].all()  # the box sits inside the central region block
    first, last = grid.corner_index(ct)
    assert (first[0] + last[0]) / 2 == pytest.approx(24.5, abs=0.5)


def chest(spacing=(2.0, 2.0, 3.0)):
    """Two lung blocks (labels 1, 2) in soft tissue, a 'heart' between them, a 'tumour' of
    radius 8 mm inside the right lung; returns CT, PET, region, lungs and the tumour centre."""
    z, y, x = np.mgrid[0:20, 0:40, 0:60]
    mm = [z * spacing[2], y * spacing[1], x * spacing[0]]
    lungs = np.zeros(z.shape, dtype=np.uint8)
    lungs[2:18, 8:32, 4:24] = 1  # right lung, x 8..46 mm
    lungs[2:18, 8:32, 36:56] = 2  # left lung, x 72..110 mm
    tumour_mm = (30.0, 40.0, 24.0)  # z, y, x: inside the right lung
    tumour = sum((m - c) ** 2 for m, c in zip(mm, tumour_mm, strict=True)) <= 8.0**2
    heart = ((mm[0] - 27) / 20) ** 2 + ((mm[1] - 40) / 22) ** 2 + ((mm[2] - 59) / 14) ** 2 <= 1
    lungs[tumour] = 0  # a threshold lung mask leaves the solid tumour out
    hu = np.where(lungs > 0, -850.0, 40.0).astype(np.float32)
    hu[:, 20, 40:54] = 40.0  # a thin vessel across the left lung
    suv = np.where(lungs > 0, 0.5, 1.5).astype(np.float32)
    suv[heart] = 8.0  # the heart: larger and hotter than the tumour
    suv[tumour] = 5.0
    # tumour-inclusive, like segment.tumour_inclusive_region: the lungs closed, not the heart
    region = (ndimage.binary_dilation(lungs > 0, iterations=3) | tumour) & ~heart
    region = region.astype(np.uint8)
    images = [_image(a, spacing=spacing) for a in (hu, suv, region, lungs)]
    centre_index = [c / s for c, s in zip(tumour_mm[::-1], spacing, strict=True)]
    return (*images, centre_index)


def _contains(grid, ct, index) -> bool:
    first, last = grid.corner_index(ct)
    return all(a <= v <= b for a, v, b in zip(first, index, last, strict=True))


def test_hotspot_prefers_a_tumour_by_the_lung_over_a_larger_hotter_heart():
    ct, pet, region, lungs, tumour_index = chest()
    suv = sitk.GetArrayViewFromImage(pet)
    z, y, x = np.unravel_index(suv.argmax(), suv.shape)
    assert suv[z, y, x] == 8.0  # the plain maximum would be the heart
    grid, info = roi_lib.hotspot_grid(ct, pet, region, shape=(8, 8, 4), lungs=lungs)
    assert info["placement"] == "pet_hotspot" and info["fallback"] is False
    assert info["suv_max"] == 5.0 and info["hot_volume_ml"] < 5.0
    assert np.linalg.norm(np.subtract(info["hotspot_index"], tumour_index)) <= 2.0
    assert _contains(grid, ct, tumour_index)


def test_hotspot_prefers_a_large_tumour_over_a_hotter_node_outside_the_lungs():
    # A large tumour's hottest fifth lies inside it, so the hot spot's shell is tumour, which
    # a threshold lung mask leaves out; the tumour-inclusive region still holds it. A focal
    # node in the mediastinum, hotter and smaller, touches the lungs on one side only.
    ct, pet, region, lungs, tumour_index = chest()
    suv = sitk.GetArrayFromImage(pet)
    spacing = np.array(pet.GetSpacing()[::-1])
    grids = np.indices(suv.shape) * spacing[:, None, None, None]
    centre_mm = np.array(tumour_index[::-1]) * spacing
    radius = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre_mm, strict=True)))
    tumour = suv == 5.0
    suv[tumour] = 6.0 - 3.0 * radius[tumour] / 8.0  # 6 at the centre, 3 at the edge
    suv[suv == 8.0] = 2.0  # a quiet heart
    suv[8:11, 19:22, 25:28] = 7.0  # the node: between the right lung and the heart
    assert region.GetPixel(26, 20, 9) == 0 and lungs.GetPixel(23, 20, 9) > 0
    pet = _image(suv, spacing=pet.GetSpacing())
    grid, info = roi_lib.hotspot_grid(ct, pet, region, shape=(8, 8, 4), lungs=lungs)
    assert np.linalg.norm(np.subtract(info["hotspot_index"], tumour_index)) <= 1.5
    assert _contains(grid, ct, tumour_index)


def test_hotspot_prefers_a_low_uptake_tumour_wrapped_in_lung_over_a_hotter_node():
    # SUV alone picks the node, focal and five times hotter; the CT shows a blob wrapped in
    # aerated lung at the tumour's hot spot and none at the node's.
    ct, pet, region, lungs, tumour_index = chest()
    suv = sitk.GetArrayFromImage(pet)
    suv[suv == 5.0] = 3.0  # a low-uptake tumour
    suv[suv == 8.0] = 2.0  # a quiet heart
    suv[8:11, 19:22, 25:28] = 15.0  # the node: between the right lung and the heart
    pet = _image(suv, spacing=pet.GetSpacing())
    node_index = [26, 20, 9]

    without_ct = dataclasses.replace(roi_lib.PLACEMENT, hotspot_ct_weight=0.0)
    _, info = roi_lib.hotspot_grid(ct, pet, region, shape=(8, 8, 4), lungs=lungs, params=without_ct)
    assert np.linalg.norm(np.subtract(info["hotspot_index"], node_index)) <= 1.5
    grid, info = roi_lib.hotspot_grid(ct, pet, region, shape=(8, 8, 4), lungs=lungs)
    assert np.linalg.norm(np.subtract(info["hotspot_index"], tumour_index)) <= 2.0
    assert info["ct_lesion_likeness"] > 0.5
    assert _contains(grid, ct, tumour_index)


def _hot_side(pet, tumour_index, offset_mm):
    """PET whose tumour uptake peaks in a small cube ``offset_mm`` (x, y, z) from its centre."""
    suv = sitk.GetArrayFromImage(pet)
    suv[suv == 5.0] = 2.0
    spacing = pet.GetSpacing()
    x, y, z = (round(c + o / s) for c, o, s in zip(tumour_index, offset_mm, spacing, strict=True))
    suv[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2] = 9.0
    return _image(suv, spacing=spacing), [x, y, z]


def test_hotspot_box_centres_on_the_ct_lesion_not_on_its_hot_side():
    ct, pet, region, lungs, tumour_index = chest()
    hot_pet, hot_index = _hot_side(pet, tumour_index, (6.0, 0.0, 0.0))
    grid, info = roi_lib.hotspot_grid(ct, hot_pet, region, shape=(16, 16, 6), lungs=lungs)
    assert info["hotspot_index"] == hot_index
    assert info["box_centre"].startswith("CT lesion")
    # the lesion centre is the tumour's, 3 voxels from the peak; the box is centred on it
    assert np.linalg.norm(np.subtract(info["lesion_centre_index"], tumour_index)) <= 0.5
    first, last = grid.corner_index(ct)
    centre = [(a + b) / 2 for a, b in zip(first, last, strict=True)]
    assert np.abs(np.subtract(centre, tumour_index)).max() <= 0.5
    # without the lung mask there is no lesion to find: the box sits on the peak
    grid, info = roi_lib.hotspot_grid(ct, hot_pet, region, shape=(16, 16, 6))
    assert info["box_centre"] == "PET hot spot"
    first, last = grid.corner_index(ct)
    assert [(a + b) / 2 for a, b in zip(first, last, strict=True)] == pytest.approx(
        hot_index, abs=0.5
    )


def test_hotspot_box_moves_at_most_a_quarter_box_into_a_joined_mediastinum():
    ct, pet, region, lungs, tumour_index = chest()
    hu = sitk.GetArrayFromImage(ct)
    hu[:, :, 0:8] = 40.0  # a tumour grown into a large block of soft tissue on its right
    region_array = sitk.GetArrayFromImage(region)
    region_array[:, :, 0:8] = 1
    lung_array = sitk.GetArrayFromImage(lungs)
    lung_array[:, 14:26, 4:12] = 0
    hu[:, 14:26, 4:12] = 40.0
    images = [_image(a) for a in (hu, region_array, lung_array)]
    ct2, region2, lungs2 = images
    shape = (16, 16, 6)
    grid, info = roi_lib.hotspot_grid(ct2, pet, region2, shape=shape, lungs=lungs2)
    shift = np.subtract(info["lesion_centre_index"], info["hotspot_index"])
    assert np.sqrt(((shift / (np.array(shape) / 4)) ** 2).sum()) <= 1.0 + 1e-6
    assert shift[0] < -0.5  # pulled towards the joined tissue, but bounded
    assert _contains(grid, ct2, info["hotspot_index"])


def test_ct_only_centres_on_the_blob_wrapped_in_lung(tmp_path):
    ct, _, region, lungs, tumour_index = chest()
    grid, info = roi_lib.hotspot_grid(ct, None, region, shape=(8, 8, 4), lungs=lungs)
    assert info["placement"] == "ct_lesion" and info["fallback"] is False
    assert np.linalg.norm(np.subtract(info["blob_centre_index"], tumour_index)) <= 1.5
    assert info["blob_aerated_share"] > 0.5
    assert _contains(grid, ct, tumour_index)
    # the command records the placement and a warning
    args = _stage_dirs(tmp_path, ct, None, region)
    sitk.WriteImage(lungs, str(args.segment_dir / "lungs.nii.gz"))
    assert roi_command.run(args, {"roi": {"shape": [8, 8, 4]}}) == 0
    record = json.loads(args.out.with_suffix(".json").read_text())
    assert record["placement"]["placement"] == "ct_lesion"
    assert any("lesion-like CT blob" in w for w in record["warnings"])


def test_ct_only_finds_a_ground_glass_tumour_inside_the_lung_mask():
    """After partial volume most of a small tumour lies between -650 and -300 HU and the
    threshold lung mask holds it; a block of soft tissue at the lung's medial edge (hilum,
    mediastinum) is outside the mask. The old rule (soft tissue outside the mask) took the
    block; the tumour is the blob wrapped in aerated lung."""
    ct, _, region, lungs, tumour_index = chest()
    hu, lung = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(lungs)
    tumour = (hu > -850) & (lung == 0) & (sitk.GetArrayFromImage(region) > 0)
    tumour[:, :, 30:] = False  # the right lung's tumour only
    hu[tumour] = -500.0  # ground glass: below the soft-tissue range
    lung[tumour] = 1  # and inside the threshold mask
    hu[6:14, 14:26, 20:24] = 40.0  # hilar soft tissue on the right lung's medial edge
    lung[6:14, 14:26, 20:24] = 0
    images = [_image(a, spacing=(2.0, 2.0, 3.0)) for a in (hu, lung)]
    grid, info = roi_lib.hotspot_grid(images[0], None, region, shape=(8, 8, 4), lungs=images[1])
    assert info["placement"] == "ct_lesion"
    assert np.linalg.norm(np.subtract(info["blob_centre_index"], tumour_index)) <= 1.5
    assert _contains(grid, images[0], tumour_index)


def test_lungs_strategy_resamples_the_region_bounding_box():
    ct, pet, region = scene()
    grid, info = roi_lib.lungs_grid(ct, region, shape=SHAPE)
    assert info["lungs_mode"] == "resampled"
    np.testing.assert_allclose(grid.spacing, (20 * 2 / 16, 20 * 2 / 12, 10 * 3 / 8))
    arrays = roi_lib.extract_roi(ct, pet, region, grid, ct_window=(-1024, 1024), suv_window=(0, 20))
    assert arrays["lungs"].all()  # the box is the region's bounding box
    assert arrays["ct"].shape == (8, 12, 16)


def test_voc_boxes_and_bad_xml(tmp_path):
    good = tmp_path / "a.xml"
    good.write_text(VOC.format(name="A", xmin=10, ymin=20, xmax=30, ymax=44))
    assert roi_lib.read_voc_boxes(good) == [
        {"name": "A", "xmin": 10.0, "ymin": 20.0, "xmax": 30.0, "ymax": 44.0}
    ]
    bad = tmp_path / "b.xml"
    bad.write_text("<annotation><object>")
    with pytest.raises(roi_lib.PatientInputError, match="XML"):
        roi_lib.read_voc_boxes(bad)


VOC = """<annotation><folder>A0001</folder><size><width>512</width><height>512</height></size>
<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>
<ymax>{ymax}</ymax></bndbox></object></annotation>"""


# --- the command, end to end ------------------------------------------------------------------


def _stage_dirs(tmp_path, ct, pet, region, *, segment_status="ok"):
    register, segment = tmp_path / "register" / "P1", tmp_path / "segment" / "P1"
    register.mkdir(parents=True)
    segment.mkdir(parents=True)
    sitk.WriteImage(ct, str(register / "ct.nii.gz"))
    if pet is not None:
        sitk.WriteImage(pet, str(register / "pet.nii.gz"))
    sitk.WriteImage(region, str(segment / "region.nii.gz"))
    sitk.WriteImage(region, str(segment / "lungs.nii.gz"))
    (register / "register.json").write_text(json.dumps({"status": "ok"}))
    (segment / "segment.json").write_text(json.dumps({"status": segment_status, "reason": "x"}))
    return argparse.Namespace(
        patient="P1", register_dir=register, segment_dir=segment,
        out=tmp_path / "roi" / "P1.npz", ingest_dir=None,
    )  # fmt: skip


@pytest.mark.parametrize("with_pet", [True, False])
def test_command_writes_npz_png_and_json(tmp_path, with_pet):
    ct, pet, region = scene()
    args = _stage_dirs(tmp_path, ct, pet if with_pet else None, region)
    config = {"roi": {"shape": list(SHAPE)}}
    assert roi_command.run(args, config) == 0
    with np.load(args.out) as npz:
        assert sorted(npz.files) == sorted(roi_lib.NPZ_KEYS)
        assert npz["ct"].shape == (8, 12, 16) and bool(npz["has_pet"]) is with_pet
        assert npz["spacing"].dtype == np.float64 and npz["origin"].shape == (3,)
    png = args.out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(args.out.with_suffix(".json").read_text())
    assert record["status"] == "ok" and record["has_pet"] is with_pet
    assert record["crop_used"] == "pet_hotspot" and record["box"]["size_voxels"] == list(SHAPE)
    assert bool(record["warnings"]) is (not with_pet)


def test_command_skips_after_a_failed_segmentation(tmp_path):
    ct, pet, region = scene()
    args = _stage_dirs(tmp_path, ct, pet, region, segment_status="skipped")
    assert roi_command.run(args, {}) == 0
    record = json.loads(args.out.with_suffix(".json").read_text())
    assert record["status"] == "skipped" and record["upstream"]["stage"] == "segment"
    assert not args.out.exists()


def test_annotation_strategy_on_the_lung_pet_ct_dx_slice(tmp_path, fixtures_dir):
    """A synthetic VOC box on the real A0001 slice, placed via the ingest slice list."""
    dicom = next((fixtures_dir / "dicom" / "lung-pet-ct-dx-A0001").glob("*.dcm"))
    sop_uid = dicom.stem
    ct = sitk.ReadImage(str(dicom))  # one 512x512 slice = the ingested and registered CT
    ingest = tmp_path / "ingest" / "P1"
    ingest.mkdir(parents=True)
    sitk.WriteImage(ct, str(ingest / "ct.nii.gz"))
    slices = [{"sop_instance_uid": sop_uid, "frame": None, "index": 0}]
    (ingest / "ingest.json").write_text(json.dumps({"status": "ok", "ct_slices": slices}))
    annotations = tmp_path / "Annotation" / "A0001"
    annotations.mkdir(parents=True)
    (annotations / f"{sop_uid}.xml").write_text(
        VOC.format(name="A", xmin=300, ymin=200, xmax=340, ymax=260)
    )
    region = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    region.CopyInformation(ct)
    args = _stage_dirs(tmp_path, ct, None, region + 1)
    args.ingest_dir = ingest
    args.patient = "Lung_Dx-A0001"
    config = {
        "roi": {
            "crop": "annotation",
            "shape": [64, 64, 1],
            "annotation_dir": str(tmp_path / "Annotation"),
        }
    }
    assert roi_command.run(args, config) == 0
    record = json.loads(args.out.with_suffix(".json").read_text())
    assert record["status"] == "ok" and record["crop_used"] == "annotation"
    first, last = record["box"]["index_first"], record["box"]["index_last"]
    assert (first[0] + last[0]) / 2 == pytest.approx(320, abs=1)
    assert (first[1] + last[1]) / 2 == pytest.approx(230, abs=1)
    with np.load(args.out) as npz:
        assert npz["ct"].shape == (1, 64, 64) and not npz["has_pet"]
        expected = sitk.GetArrayFromImage(ct)[0, int(first[1]), int(first[0])]
        assert npz["ct"][0, 0, 0] == pytest.approx(
            np.clip((expected + 1024) / 2048, 0, 1), abs=1e-5
        )
