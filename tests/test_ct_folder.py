"""ct_volume (DICOM and NIfTI CT to HU volumes, geometry) and the ct_folder dataset."""

import glob
import importlib
import os
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medjax import train
from medjax.data import ct_volume, image_dataset
from medjax.errors import ConfigError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_SERIES = os.path.join(REPO_ROOT, "..", "shared", "data", "ct_dicom_ge_head", "series")
AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))


def write_series(
    folder,
    hu,
    origins,
    *,
    axes=AXIAL,
    pixel_spacing=(1.0, 1.0),
    names=None,
    instance_numbers=None,
    slope=2.0,
    intercept=-1024.0,
):
    """Writes HU slices [K, H, W] as CT Image Storage files, int16 stored = (HU - b) / m."""
    os.makedirs(folder, exist_ok=True)
    series = generate_uid()
    names = names or [f"{k:03d}.dcm" for k in range(len(hu))]
    instance_numbers = instance_numbers or list(range(1, len(hu) + 1))
    for k, image in enumerate(hu):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = os.path.join(folder, names[k])
        ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", series, instance_numbers[k]
        ds.ImagePositionPatient = [f"{v:.10g}" for v in origins[k]]
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in (*axes[0], *axes[1])]
        ds.PixelSpacing = [f"{v:.10g}" for v in pixel_spacing]
        ds.Rows, ds.Columns = image.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.round((image - intercept) / slope).astype(np.int16).tobytes()
        ds.save_as(path, enforce_file_format=True)
    return str(folder)


def write_nifti(path, volume, affine):
    """Writes int16 data with scl_slope 2, scl_inter -1024 holding `volume` (HU)."""
    stored = np.round((volume + 1024) / 2).astype(np.int16)
    image = nib.Nifti1Image(stored, affine)
    image.header.set_slope_inter(2.0, -1024.0)
    nib.save(image, str(path))
    return str(path)


def gaussian_blobs(shape, centres, sigma=1.5):
    """A volume [K, H, W] of 0 HU with a 1000 HU Gaussian blob at each (k, row, col) centre."""
    k, i, j = np.meshgrid(*map(np.arange, shape), indexing="ij")
    return sum(
        1000.0 * np.exp(-((k - c[0]) ** 2 + (i - c[1]) ** 2 + (j - c[2]) ** 2) / (2 * sigma**2))
        for c in centres
    )


def centroid(image):
    weight = np.clip(image - 100, 0, None)
    grids = np.meshgrid(*map(np.arange, image.shape), indexing="ij")
    return np.array([(g * weight).sum() / weight.sum() for g in grids])


class TestDicomSeries:
    def test_hu_and_order_by_position_not_name_or_instance_number(self, tmp_path):
        rng = np.random.default_rng(0)
        hu = np.stack([np.full((6, 8), 10.0 * k) for k in range(7)])
        hu[:, 0, 0] = -1000.0
        origins = [(-4.0, -3.0, 50 - 2.5 * k) for k in range(7)]  # slice k lies lower
        order = rng.permutation(7)
        names = [f"{n}.dcm" for n in rng.permutation(7)]
        folder = write_series(
            tmp_path / "s",
            hu[order],
            [origins[i] for i in order],
            names=names,
            instance_numbers=[int(n) for n in rng.permutation(7) + 1],
        )
        scan = ct_volume.read(folder)
        # Along the normal (+z), slice 6 (z = 35) comes first and slice 0 (z = 50) last.
        np.testing.assert_allclose(scan.positions, 35 + 2.5 * np.arange(7))
        np.testing.assert_array_equal(scan.slices[:, 1, 1], 10.0 * np.arange(7)[::-1])
        np.testing.assert_array_equal(scan.slices[:, 0, 0], -1000.0)
        assert scan.slices.dtype == np.float32 and scan.irregularities() == []
        volume = ct_volume.to_grid(scan, spacing=(2.5, 1, 1), shape=(7, 6, 8), geometry="refuse")
        np.testing.assert_allclose(volume, scan.slices, atol=1e-3)  # the same grid: unchanged

    def test_resampled_spacing_puts_blobs_at_their_distances(self, tmp_path):
        # Blobs at known patient positions on an anisotropic grid (z 2, y 0.8, x 0.5 mm).
        centres = [(4, 10, 12), (9, 22, 30)]
        hu = gaussian_blobs((14, 32, 40), centres, sigma=2.0)
        folder = write_series(
            tmp_path / "s",
            hu,
            [(0, 0, 2.0 * k) for k in range(14)],
            pixel_spacing=(0.8, 0.5),
            slope=1.0,
        )
        spacing = (1.5, 1.2, 1.0)
        volume = ct_volume.load(folder, spacing=spacing, shape=(24, 28, 24), geometry="refuse")
        assert volume.shape == (24, 28, 24) and volume.dtype == np.float32
        halves = [volume.copy(), volume.copy()]  # split the two blobs at their midpoint
        halves[0][:, 16:] = 0
        halves[1][:, :16] = 0
        distance_mm = (centroid(halves[1]) - centroid(halves[0])) * spacing
        np.testing.assert_allclose(distance_mm, [5 * 2.0, 12 * 0.8, 18 * 0.5], atol=0.15)
        assert volume[0, 0, 0] == ct_volume.AIR  # padded: the grid reaches beyond the scan

    def test_pydicom_ct_small_as_a_one_slice_series(self, tmp_path):
        source = pydicom.data.get_testdata_file("CT_small.dcm")
        os.makedirs(tmp_path / "ct_small")
        shutil.copy(source, tmp_path / "ct_small" / "slice")  # a file without extension
        stored = pydicom.dcmread(source).pixel_array
        scan = ct_volume.read(str(tmp_path / "ct_small"))
        assert scan.slices.shape == (1, 128, 128) and scan.tilt_degrees == 0.0
        np.testing.assert_array_equal(scan.slices[0], stored - 1024.0)  # intercept -1024
        assert scan.slices.min() == -896 and scan.slices.max() == 1167
        volume = ct_volume.to_grid(
            scan, spacing=(1.0, 0.661468, 0.661468), shape=(3, 128, 128), geometry="refuse"
        )
        np.testing.assert_allclose(volume[1], stored - 1024.0, atol=0.05)
        assert (volume[[0, 2]] == ct_volume.AIR).all()  # one slice fills one plane

    def test_truncated_file_names_the_file(self, tmp_path):
        folder = write_series(tmp_path / "s", np.zeros((3, 16, 16)), [(0, 0, k) for k in range(3)])
        for keep in (100, 500):  # in the header; in the pixel data
            path = os.path.join(folder, "001.dcm")
            write_series(folder, np.zeros((3, 16, 16)), [(0, 0, k) for k in range(3)])
            with open(path, "rb") as f:
                data = f.read()
            with open(path, "wb") as f:
                f.write(data[:keep])
            with pytest.raises(ConfigError, match="001.dcm"):
                ct_volume.read(folder)

    def test_mixed_series_and_duplicate_positions(self, tmp_path):
        folder = write_series(tmp_path / "s", np.zeros((2, 4, 4)), [(0, 0, 0), (0, 0, 1)])
        write_series(folder, np.zeros((1, 4, 4)), [(0, 0, 5)], names=["other.dcm"])
        with pytest.raises(ConfigError, match="holds 2 DICOM series"):
            ct_volume.read(folder)
        folder = write_series(tmp_path / "d", np.zeros((3, 4, 4)), [(0, 0, 0), (0, 0, 1)] * 2)
        with pytest.raises(ConfigError, match="at the same position"):
            ct_volume.read(folder)


class TestGeometry:
    def test_tilted_rod_comes_out_straight(self, tmp_path):
        # Gantry tilted 20 degrees: rows along x, columns along (0, cos, -sin); the table moves
        # 2 mm along z per slice, so each origin drifts 2 sin(20) mm in-plane. A rod along the
        # slice normal shifts by that drift per slice in pixel space.
        theta, step, count = np.radians(20.0), 2.0, 16
        axes = ((1.0, 0.0, 0.0), (0.0, np.cos(theta), -np.sin(theta)))
        drift = step * np.sin(theta)  # mm = pixels (1 mm pixels)
        rows = np.arange(40)[:, None]
        slices = np.stack(
            [
                1000.0 * np.exp(-((rows - 8 - k * drift) ** 2 + (np.arange(24) - 12) ** 2) / 4.5)
                for k in range(count)
            ]
        )
        folder = write_series(
            tmp_path / "tilt",
            slices,
            [(0, 0, step * k) for k in range(count)],
            axes=axes,
            slope=1.0,
        )
        scan = ct_volume.read(folder)
        assert scan.tilt_degrees == pytest.approx(20.0, abs=0.01)
        np.testing.assert_allclose(scan.gaps, step * np.cos(theta), rtol=1e-6)
        raw = np.array([centroid(s) for s in scan.slices])
        assert np.ptp(raw[:, 0]) > 9  # stacked as they are, the rod leans
        spacing = (step * np.cos(theta), 1.0, 1.0)
        volume = ct_volume.to_grid(
            scan, spacing=spacing, shape=(count, 56, 24), geometry="resample"
        )
        straight = np.array([centroid(s) for s in volume])
        assert np.ptp(straight[:, 0]) < 0.05 and np.ptp(straight[:, 1]) < 0.05
        with pytest.raises(
            ConfigError, match=r"gantry tilt of 20\.0 degrees.*ct_geometry=resample"
        ):
            ct_volume.to_grid(scan, spacing=spacing, shape=(count, 56, 24), geometry="refuse")

    def test_missing_slice_is_interpolated_at_the_real_positions(self, tmp_path):
        z = np.array([0, 2, 4, 6, 10, 12, 14, 16], float)  # the slice at 8 mm is missing
        hu = np.stack([np.full((4, 4), 10.0 * p) for p in z])  # a ramp, 10 HU per mm
        folder = write_series(tmp_path / "gap", hu, [(0, 0, p) for p in z])
        scan = ct_volume.read(folder)
        with pytest.raises(ConfigError, match=r"uneven slice gaps of 2, 4 mm.*resample"):
            ct_volume.to_grid(scan, spacing=(2, 1, 1), shape=(9, 4, 4), geometry="refuse")
        volume = ct_volume.to_grid(scan, spacing=(2, 1, 1), shape=(9, 4, 4), geometry="resample")
        np.testing.assert_allclose(volume[:, 2, 2], 10.0 * np.arange(0, 17, 2), atol=1e-3)

    def test_unknown_geometry(self, tmp_path):
        scan = ct_volume.read(
            write_series(tmp_path / "s", np.zeros((2, 4, 4)), [(0, 0, 0), (0, 0, 1)])
        )
        with pytest.raises(ConfigError, match="data.ct_geometry='fix'"):
            ct_volume.to_grid(scan, spacing=(1, 1, 1), shape=(2, 4, 4), geometry="fix")


class TestNifti:
    def test_equals_the_same_scan_as_dicom(self, tmp_path):
        # The same patient-space volume as a DICOM series (LPS) and as NIfTI in LPS-like voxel
        # order (x to the left, y to the back): as_closest_canonical flips both in-plane axes.
        hu = np.random.default_rng(1).integers(-1000, 1000, (5, 12, 10)).astype(float)
        folder = write_series(
            tmp_path / "dcm",
            hu,
            [(-10, -20, 30 + 2 * k) for k in range(5)],
            pixel_spacing=(0.8, 0.6),
        )
        affine = np.array([[-0.6, 0, 0, 10], [0, -0.8, 0, 20], [0, 0, 2, 30], [0, 0, 0, 1]])
        path = write_nifti(tmp_path / "scan.nii.gz", hu.transpose(2, 1, 0), affine)
        from_dicom, from_nifti = ct_volume.read(folder), ct_volume.read(path)
        np.testing.assert_array_equal(from_nifti.slices, from_dicom.slices)
        np.testing.assert_allclose(from_nifti.positions, from_dicom.positions)
        np.testing.assert_allclose(from_nifti.offsets, from_dicom.offsets, atol=1e-9)
        assert from_nifti.pixel_spacing == pytest.approx(from_dicom.pixel_spacing)
        kwargs = dict(spacing=(3.0, 1.0, 1.0), shape=(4, 8, 8), geometry="refuse")
        np.testing.assert_allclose(
            ct_volume.load(path, **kwargs), ct_volume.load(folder, **kwargs), atol=1e-3
        )

    def test_truncated_and_wrong_shape(self, tmp_path):
        path = write_nifti(tmp_path / "a.nii.gz", np.zeros((16, 16, 8)), np.eye(4))
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        with pytest.raises(ConfigError, match="a.nii.gz: not a readable NIfTI"):
            ct_volume.read(path)
        path = write_nifti(tmp_path / "b.nii", np.zeros((4, 4, 3, 2)), np.eye(4))
        with pytest.raises(ConfigError, match=r"b.nii: image of shape \(4, 4, 3, 2\)"):
            ct_volume.read(path)


# One asymmetric phantom in the canonical orientation, D along +S, H along +P, W along +L (LPS),
# with voxel (d, h, w) at PHANTOM_ORIGIN + (w * x, h * y, d * z) mm for PHANTOM_SPACING (z, y, x).
PHANTOM = 2.0 * np.random.default_rng(2).integers(-500, 500, (12, 16, 20))  # even: NIfTI slope 2
PHANTOM_SPACING = (2.0, 1.5, 1.0)
PHANTOM_ORIGIN = np.array([-9.5, -12.0, 40.0])


def phantom_series(folder, orientation):
    """PHANTOM as a DICOM series acquired in `orientation`; its slices in file order."""
    depth, height, width = PHANTOM.shape
    z, y, x = PHANTOM_SPACING
    corner = [(width - 1) * x, (height - 1) * y, (depth - 1) * z]  # the voxel opposite (0,0,0)
    if orientation == "head_first_supine":
        axes, slices, spacing = AXIAL, PHANTOM, (y, x)
        origins = [(0, 0, d * z) for d in range(depth)]
    elif orientation == "feet_first_supine":  # columns to the patient's right, normal to feet
        axes, slices, spacing = ((-1, 0, 0), (0, 1, 0)), PHANTOM[::-1, :, ::-1], (y, x)
        origins = [(corner[0], 0, corner[2] - k * z) for k in range(depth)]
    elif orientation == "head_first_prone":  # columns to the right, rows to the front
        axes, slices, spacing = ((-1, 0, 0), (0, -1, 0)), PHANTOM[:, ::-1, ::-1], (y, x)
        origins = [(corner[0], corner[1], d * z) for d in range(depth)]
    elif orientation == "coronal":  # rows to the feet, slices front to back
        axes, spacing = ((1, 0, 0), (0, 0, -1)), (z, x)
        slices = PHANTOM.transpose(1, 0, 2)[:, ::-1]
        origins = [(0, h * y, corner[2]) for h in range(height)]
    else:  # sagittal: columns to the back, rows to the feet, the normal to the patient's right
        axes, spacing = ((0, 1, 0), (0, 0, -1)), (z, y)
        slices = PHANTOM.transpose(2, 0, 1)[:, ::-1]
        origins = [(w * x, 0, corner[2]) for w in range(width)]
    origins = [PHANTOM_ORIGIN + o for o in origins]
    return write_series(folder, slices, origins, axes=axes, pixel_spacing=spacing, slope=1.0)


def phantom_nifti(path, voxel_order):
    """PHANTOM as NIfTI with voxel axes along (L, P, S) or (R, A, S); the affine maps to RAS."""
    z, y, x = PHANTOM_SPACING
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    if voxel_order == "LPS":
        data, start, steps = PHANTOM, PHANTOM_ORIGIN, np.diag([x, y, z])
    else:
        data, steps = PHANTOM[:, ::-1, ::-1], np.diag([-x, -y, z])
        start = PHANTOM_ORIGIN + [(PHANTOM.shape[2] - 1) * x, (PHANTOM.shape[1] - 1) * y, 0]
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = lps_to_ras @ steps, lps_to_ras @ start
    return write_nifti(path, data.transpose(2, 1, 0), affine)


ORIENTATIONS = ("head_first_supine", "feet_first_supine", "head_first_prone", "coronal", "sagittal")


class TestOrientation:
    @pytest.mark.parametrize("orientation", ORIENTATIONS + ("nifti_LPS", "nifti_RAS"))
    def test_every_orientation_gives_the_canonical_phantom(self, tmp_path, orientation):
        if orientation.startswith("nifti"):
            path = phantom_nifti(tmp_path / "scan.nii.gz", orientation[-3:])
        else:
            path = phantom_series(tmp_path / "scan", orientation)
        volume = ct_volume.load(
            path, spacing=PHANTOM_SPACING, shape=PHANTOM.shape, geometry="refuse"
        )
        np.testing.assert_allclose(volume, PHANTOM, atol=1e-3)
        padded = ct_volume.load(
            path, spacing=PHANTOM_SPACING, shape=(14, 18, 22), geometry="refuse"
        )
        np.testing.assert_allclose(padded[1:-1, 1:-1, 1:-1], PHANTOM, atol=1e-3)
        assert (padded[[0, -1]] == ct_volume.AIR).all() and (padded[:, :, 0] == ct_volume.AIR).all()

    def test_axial_orientations_agree_when_resampled(self, tmp_path):
        kwargs = dict(spacing=(3.0, 2.0, 1.5), shape=(8, 12, 14), geometry="refuse")
        paths = [phantom_series(tmp_path / o, o) for o in ORIENTATIONS[:3]]
        paths.append(phantom_nifti(tmp_path / "scan.nii.gz", "RAS"))
        volumes = [ct_volume.load(path, **kwargs) for path in paths]
        for volume in volumes[1:]:
            np.testing.assert_allclose(volume, volumes[0], atol=1e-3)


class TestCompressed:
    def test_rle_lossless_series_equals_the_uncompressed_one(self, tmp_path):
        plain = phantom_series(tmp_path / "plain", "coronal")
        rle = shutil.copytree(plain, tmp_path / "rle")
        for path in ct_volume.dicom_files(rle):
            dataset = pydicom.dcmread(path)
            dataset.compress(pydicom.uid.RLELossless)
            dataset.save_as(path)
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
        np.testing.assert_array_equal(ct_volume.read(rle).slices, ct_volume.read(plain).slices)

    @pytest.mark.parametrize(
        "syntax, fix",
        [
            (pydicom.uid.JPEGLSLossless, r"no decoder for it is installed.*'medjax\[dicom\]'"),
            (pydicom.uid.MPEG2MPML, "which pydicom cannot decode; convert the series to NIfTI"),
        ],
    )
    def test_undecodable_syntax_names_it_and_the_fix(self, tmp_path, monkeypatch, syntax, fix):
        folder = write_series(tmp_path / "s", np.zeros((2, 4, 4)), [(0, 0, 0), (0, 0, 1)])
        path = os.path.join(folder, "001.dcm")
        dataset = pydicom.dcmread(path)
        dataset.file_meta.TransferSyntaxUID = syntax
        dataset.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8" + bytes(30)])
        dataset["PixelData"].VR = "OB"
        dataset.save_as(path)
        if syntax == pydicom.uid.JPEGLSLossless and get_decoder(syntax).is_available:
            monkeypatch.setattr(type(get_decoder(syntax)), "is_available", False)  # as if not
        message = rf"001.dcm: pixel data in {syntax.name} \({syntax}\).*{fix}"
        with pytest.raises(ConfigError, match=message):
            ct_volume.read(folder)


@pytest.mark.skipif(not os.path.isdir(REAL_SERIES), reason="../shared/data is absent")
class TestRealSeries:
    def test_ge_head_geometry_and_hounsfield_units(self):
        scan = ct_volume.read(REAL_SERIES)
        assert scan.slices.shape == (28, 512, 512)
        assert scan.pixel_spacing == pytest.approx((0.4882812, 0.4882812))
        assert scan.tilt_degrees == pytest.approx(18.5, abs=0.05)
        assert np.all(scan.gaps > 1)  # ordered by position
        np.testing.assert_allclose(np.unique(np.round(scan.gaps, 1)), [1.1, 4.0, 7.0])
        numbers = [
            int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber)
            for f in ct_volume.dicom_files(REAL_SERIES)
        ]
        assert numbers == list(range(1, 29))  # here file names agree with position
        hu = scan.slices
        assert hu.min() == ct_volume.AIR  # the padding outside the field of view is air
        assert (hu < -900).mean() > 0.3 and (hu > 300).mean() > 0.005 and hu.max() > 1000
        brain = hu[14, 200:300, 200:300]
        assert 0 < np.median(brain) < 80  # soft tissue
        with pytest.raises(ConfigError, match=r"18\.5 degrees.*gaps of 1\.08, 4, 7 mm"):
            ct_volume.to_grid(scan, spacing=(2, 2, 2), shape=(8, 8, 8), geometry="refuse")
        volume = ct_volume.to_grid(
            scan, spacing=(4, 2, 2), shape=(40, 128, 128), geometry="resample"
        )
        inside = volume[(volume != ct_volume.AIR).any((1, 2))]
        assert len(inside) == 38  # 144 mm of slice positions and half of each end gap, at 4 mm
        assert -1030 < np.median(inside[:, :8, :8]) < -950 and inside.max() > 800


def write_folder(root, labels, patients, *, split=None, shape=(6, 16, 16)):
    """A ct_folder of NIfTI scans (even index) and DICOM series (odd), and its labels.csv."""
    os.makedirs(root, exist_ok=True)
    lines = ["scan_id,label,patient_id" + (",split" if split else "")]
    for i, (label, patient) in enumerate(zip(labels, patients)):
        hu = np.full(shape, -1000.0)
        hu[2:4, 4:12, 4:12] = 40.0 + 300 * label + 2 * i  # even: exact after slope 2
        if i % 2:
            origins = [(0, 0, 2.0 * k) for k in range(shape[0])]
            write_series(os.path.join(root, f"scan{i}"), hu, origins)
        else:
            write_nifti(
                os.path.join(root, f"scan{i}.nii.gz"),
                hu.transpose(2, 1, 0),
                np.diag([-1.0, -1.0, 2.0, 1.0]),
            )
        lines.append(f"scan{i},{label},{patient}" + (f",{split[i]}" if split else ""))
    with open(os.path.join(root, "labels.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(root)


def data_config(directory, cache, **overrides):
    config = importlib.import_module("configs.ct_cnn3d").get_config()
    data = config.data
    data.name, data.dir, data.cache_dir = "ct_folder", directory, str(cache)
    data.image_shape, data.spacing = (4, 16, 16), (2.0, 1.0, 1.0)
    data.update(overrides)
    return config


LABELS_10 = [0, 1] * 5
PATIENTS_10 = ["p0", "p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"]


class TestCtFolder:
    def test_splits_by_patient_values_and_cache(self, tmp_path, monkeypatch):
        directory = write_folder(tmp_path / "ct", LABELS_10, PATIENTS_10)
        config = data_config(directory, tmp_path / "cache", test_fraction=0.2, val_fraction=0.2)
        dataset = image_dataset(config.data)
        assert dataset.num_classes == 2 and dataset.class_names == ("class 0", "class 1")
        splits = {s: dataset.load_split(s) for s in ("train", "val", "test")}
        ids = np.concatenate([splits[s]["ids"] for s in splits])
        assert sorted(ids) == sorted(f"scan{i}" for i in range(10))
        split_of = {i: s for s in splits for i in splits[s]["ids"]}
        assert split_of["scan0"] == split_of["scan1"]  # one patient, one split
        for arrays in splits.values():
            assert arrays["images"].shape[1:] == (4, 16, 16) and arrays["images"].dtype == np.int16
            for image, label, scan_id in zip(arrays["images"], arrays["labels"], arrays["ids"]):
                assert label == LABELS_10[int(scan_id[4:])]
                assert image[1, 8, 8] == 40 + 300 * label + 2 * int(scan_id[4:])  # slab, 4 mm
                assert image[0, 8, 8] == -1000 and image[1, 0, 0] == -1000
        # A second run reads the cache; a changed file or setting builds a new one.
        monkeypatch.setattr(ct_volume, "load", lambda *a, **k: pytest.fail("cache not used"))
        again = image_dataset(config.data).load_split("test")
        np.testing.assert_array_equal(again["images"], splits["test"]["images"])
        with pytest.raises(pytest.fail.Exception):
            image_dataset(data_config(directory, tmp_path / "cache", spacing=(3.0, 1, 1)).data)
        os.utime(os.path.join(directory, "scan3", "000.dcm"), ns=(0, 0))
        with pytest.raises(pytest.fail.Exception):
            image_dataset(config.data)

    def test_split_column_and_bad_labels(self, tmp_path):
        split = ["train"] * 6 + ["val", "val", "test", "test"]
        directory = write_folder(tmp_path / "ct", LABELS_10, PATIENTS_10, split=split)
        config = data_config(directory, tmp_path / "cache")
        dataset = image_dataset(config.data)
        assert list(dataset.load_split("test")["ids"]) == ["scan8", "scan9"]

        labels_csv = os.path.join(directory, "labels.csv")
        with open(labels_csv) as f:
            original = f.read()

        def rewrite(old, new):
            with open(labels_csv, "w") as f:
                f.write(original.replace(old, new))

        for old, new, message in [
            ("scan1,1,p0,train", "scan1,1,p0,test", "patient 'p0' is in both the train and"),
            ("scan3,1,p2", "scan3,x,p2", r"labels.csv, line 5: label 'x' of scan 'scan3'"),
            ("scan3,1,p2", "scan3,-1,p2", r"line 5: label '-1'"),
            ("scan3,1,p2", "scan3,3,p2", r"scans per label 0, 1, ...: \[5, 4, 0, 1\]"),
            ("scan3,1,p2", "scan33,1,p2", r"names 1 scan\(s\) not in .*: scan33"),
            ("val", "train", "no scan in the val split"),
        ]:
            rewrite(old, new)
            with pytest.raises(ConfigError, match=message):
                image_dataset(config.data)
        os.remove(labels_csv)
        with pytest.raises(ConfigError, match="labels.csv not found"):
            image_dataset(config.data)

    def test_failed_preparation_leaves_no_cache(self, tmp_path):
        directory = write_folder(tmp_path / "ct", LABELS_10, PATIENTS_10)
        bad = os.path.join(directory, "scan5", "003.dcm")
        with open(bad, "r+b") as f:
            f.truncate(300)
        cache = tmp_path / "cache"
        with pytest.raises(ConfigError, match="scan5/003.dcm"):
            image_dataset(data_config(directory, cache).data)
        assert not glob.glob(str(cache / "**" / "*.json"), recursive=True)
        assert not glob.glob(str(cache / "**" / "*incomplete*"), recursive=True)
        write_series(
            os.path.join(directory, "scan5"),
            np.full((6, 16, 16), -1000.0),
            [(0, 0, 2.0 * k) for k in range(6)],
        )
        assert image_dataset(data_config(directory, cache).data).num_classes == 2

    @pytest.mark.slow
    def test_train_end_to_end(self, tiny, tmp_path):
        labels, patients = [0, 1] * 6, [f"p{i}" for i in range(12)]
        directory = write_folder(tmp_path / "ct", labels, patients, shape=(8, 16, 16))
        config = tiny("ct_cnn3d", image_shape=(16, 16, 16), steps=2)
        cache = str(tmp_path / "cache")
        config.data.update(name="ct_folder", dir=directory, cache_dir=cache, spacing=(2, 1, 1))
        config.trainer.update(batch_size=4, eval_batch_size=4, eval_every_steps=2)
        metrics = train.train_and_evaluate(config, str(tmp_path / "run"))
        assert np.isfinite(metrics["loss"]) and 0 <= metrics["auroc"] <= 1
