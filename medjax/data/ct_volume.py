"""One CT scan, a DICOM series or a NIfTI file, as a Hounsfield-unit volume on a regular grid.

Slices are ordered by their position along the slice normal (the cross product of the row and
column directions), never by file name or instance number. Two geometries make naive stacking
wrong: a gantry tilt (the slice origins drift in-plane along the stack: the stack is sheared) and
uneven slice gaps (a missing slice is one). `geometry="resample"` undoes both: each slice is
shifted back by its origin's in-plane offset, then values are interpolated linearly along the
normal between the slices' real positions; `geometry="refuse"` raises a ConfigError instead. The
geometry is measured from the slice positions, not from the GantryDetectorTilt tag.

Every volume comes out in one canonical orientation, that of a head-first supine axial series:
in DICOM's patient coordinates (LPS, which `Scan` uses for NIfTI too), D runs inferior to
superior (+S), H anterior to posterior (+P) and W patient right to left (+L). Each output axis
takes the grid axis (slice normal, column or row direction) closest to it, flipped where that
points the other way, so coronal, sagittal, feet-first and prone series and the same scan as
NIfTI give the same array. A tilted gantry's grid stays orthogonal to its slices, oblique to the
patient's axes by the tilt. Compressed transfer syntaxes other than RLE Lossless need pydicom's
decoder plugins, installed by the `dicom` extra.
"""

import dataclasses
import os

import nibabel as nib
import numpy as np
import pydicom
from absl import logging
from pydicom.pixels import get_decoder
from scipy import ndimage

from medjax.errors import ConfigError

AIR = -1024.0  # HU: the value of voxels outside the scan
GEOMETRIES = ("resample", "refuse")
TILT_TOLERANCE_DEGREES = 0.1
GAP_TOLERANCE = 0.01  # of the median gap
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_REQUIRED_TAGS = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
)


@dataclasses.dataclass(frozen=True)
class Scan:
    """Slices in HU, sorted along the slice normal, with the patient geometry (LPS) of each."""

    path: str
    slices: np.ndarray  # float32 [K, H, W]
    origins: np.ndarray  # [K, 3] mm: the patient position of each slice's pixel [0, 0]
    x_axis: np.ndarray  # [3] unit vector: the direction of increasing column index (W)
    y_axis: np.ndarray  # [3] unit vector: the direction of increasing row index (H)
    pixel_spacing: tuple[float, float]  # mm: (between rows, between columns)

    @property
    def positions(self) -> np.ndarray:
        """[K] mm along the slice normal, increasing."""
        return self.origins @ np.cross(self.x_axis, self.y_axis)

    @property
    def offsets(self) -> np.ndarray:
        """[K, 2] mm: each slice origin's in-plane position (along y_axis, x_axis)."""
        return self.origins @ np.stack([self.y_axis, self.x_axis], axis=1)

    @property
    def gaps(self) -> np.ndarray:
        return np.diff(self.positions)

    @property
    def tilt_degrees(self) -> float:
        """The angle of the largest in-plane drift of an origin over the length of the stack."""
        if len(self.slices) < 2:
            return 0.0
        drift = np.linalg.norm(self.offsets - self.offsets[0], axis=1).max()
        return float(np.degrees(np.arctan2(drift, self.positions[-1] - self.positions[0])))

    def irregularities(self) -> list[str]:
        """What makes stacking the slices as they are wrong: tilt, uneven gaps; [] if none."""
        problems = []
        if self.tilt_degrees > TILT_TOLERANCE_DEGREES:
            problems.append(f"gantry tilt of {self.tilt_degrees:.1f} degrees (slices sheared)")
        gaps = self.gaps
        if len(gaps) and np.abs(gaps - np.median(gaps)).max() > GAP_TOLERANCE * np.median(gaps):
            sizes = ", ".join(f"{g:g}" for g in np.unique(np.round(gaps, 2)))
            problems.append(f"uneven slice gaps of {sizes} mm (a missing slice is one)")
        return problems


def load(
    path: str, *, spacing: tuple[float, ...], shape: tuple[int, ...], geometry: str
) -> np.ndarray:
    """The scan at `path` (a DICOM series folder or a NIfTI file) as float32 HU [D, H, W]."""
    return to_grid(read(path), spacing=spacing, shape=shape, geometry=geometry)


def rounded(volume: np.ndarray) -> np.ndarray:
    """HU rounded to int16, as ct_folder caches volumes (and its models saw them)."""
    return np.clip(np.round(volume), -32768, 32767).astype(np.int16)


def read(path: str) -> Scan:
    if os.path.isdir(path):
        return read_dicom_series(path)
    if path.endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    raise ConfigError(f"{path}: expected a folder holding a DICOM series, or a .nii/.nii.gz file")


def dicom_files(folder: str) -> list[str]:
    """The files of `folder` read as DICOM: *.dcm and names without an extension."""
    return sorted(
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if (name.lower().endswith(".dcm") or "." not in name)
        and name != "DICOMDIR"
        and os.path.isfile(os.path.join(folder, name))
    )


def read_dicom_series(folder: str) -> Scan:
    """A folder holding one CT series, one slice per file; HU = stored * slope + intercept."""
    files = dicom_files(folder)
    if not files:
        raise ConfigError(
            f"{folder}: no DICOM files; expected one file per slice (.dcm or no extension)"
        )
    headers = [_read_dicom(f) for f in files]
    series = {h.get("SeriesInstanceUID") for h in headers}
    if len(series) > 1:
        raise ConfigError(
            f"{folder} holds {len(series)} DICOM series; expected one: give each series (scan) "
            "its own folder"
        )
    first = headers[0]
    for name, tolerance in (
        ("ImageOrientationPatient", 1e-4),
        ("PixelSpacing", 1e-4),
        ("Rows", 0),
        ("Columns", 0),
    ):
        for file, header in zip(files, headers):
            value, expected = (np.asarray(h[name].value, float) for h in (header, first))
            if value.shape != expected.shape or np.abs(value - expected).max() > tolerance:
                raise ConfigError(
                    f"{folder}: slices differ in {name} ({files[0]}: {first[name].value}, "
                    f"{file}: {header[name].value}); expected one series of one geometry"
                )
    orientation = np.array(first.ImageOrientationPatient, float)
    origins = np.array([h.ImagePositionPatient for h in headers], float)
    slices = np.stack([_hounsfield(f, h) for f, h in zip(files, headers)])
    spacing = tuple(float(s) for s in first.PixelSpacing)
    return _sorted_scan(folder, files, slices, origins, orientation[:3], orientation[3:], spacing)


def read_nifti(path: str) -> Scan:
    """A 3D NIfTI volume in HU (after scl_slope/scl_inter) as slices along its third voxel axis.

    The affine (RAS) gives the voxel axes' directions, turned into LPS as in DICOM, and spacing
    (its column lengths): the first voxel axis runs along a slice's W, the second along its H.
    """
    try:
        image = nib.load(path)
        volume = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as err:
        raise ConfigError(f"{path}: not a readable NIfTI file ({err}); replace the file") from err
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise ConfigError(f"{path}: image of shape {volume.shape}; expected one 3D CT volume")
    affine = image.affine[:3] * [[-1], [-1], [1]]  # RAS to LPS
    step_x, step_y = np.linalg.norm(affine[:, :2], axis=0)
    size_z = volume.shape[2]
    return _sorted_scan(
        path,
        [path] * size_z,
        volume.transpose(2, 1, 0),
        affine[:, 3] + np.arange(size_z)[:, None] * affine[:, 2],
        affine[:, 0] / step_x,
        affine[:, 1] / step_y,
        (float(step_y), float(step_x)),
    )


def to_grid(
    scan: Scan, *, spacing: tuple[float, ...], shape: tuple[int, ...], geometry: str
) -> np.ndarray:
    """float32 HU [D, H, W] of `shape` at `spacing` (mm; z, y, x), centred on the scan.

    D, H and W are the canonical axes (module docstring); the scan is resampled on a grid aligned
    with its slices, then transposed and flipped onto them. Voxels outside the scan are air (AIR).
    In-plane, slices are smoothed before they are sampled more coarsely (a Gaussian of sigma
    (factor - 1) / 2 pixels) and interpolated linearly (scipy.ndimage, order 1); along the
    normal, linearly between neighbouring slices, and the end slices reach half a gap beyond
    their positions.
    """
    if geometry not in GEOMETRIES:
        raise ConfigError(f"data.ct_geometry={geometry!r}; valid: {', '.join(GEOMETRIES)}")
    problems = scan.irregularities()
    if problems and geometry == "refuse":
        raise ConfigError(
            f"{scan.path}: {'; '.join(problems)}: stacking its slices would distort it; set "
            "data.ct_geometry=resample to resample it onto a regular grid"
        )
    if problems:
        logging.info("%s: %s: resampled onto a regular grid", scan.path, "; ".join(problems))
    axes, flips = _canonical_axes(scan)
    to_slices = np.argsort(axes)  # the canonical axis along each slice grid axis
    volume = _slice_grid(
        scan, np.asarray(spacing, float)[to_slices], np.asarray(shape, int)[to_slices]
    )
    return np.ascontiguousarray(np.flip(volume.transpose(axes), flips), dtype=np.float32)


def _canonical_axes(scan: Scan) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The slice grid axes that become D, H and W, and which of D, H, W are flipped.

    The grid axes are 0 the normal, 1 the column and 2 the row direction. Each of +S, +P, +L takes
    the free grid axis closest to it (largest |cosine| first), flipped where the cosine is negative.
    """
    normal = np.cross(scan.x_axis, scan.y_axis)
    directions = np.stack([normal / np.linalg.norm(normal), scan.y_axis, scan.x_axis])
    cosines = directions[:, ::-1].T  # [D, H, W] x [grid axis]: LPS components S, P, L
    remaining = np.abs(cosines)
    axes = [0, 0, 0]
    for _ in range(3):
        out, grid = np.unravel_index(np.argmax(remaining), remaining.shape)
        axes[out] = int(grid)
        remaining[out, :] = remaining[:, grid] = -1
    flips = tuple(out for out in range(3) if cosines[out, axes[out]] < 0)
    return tuple(axes), flips


def _slice_grid(scan: Scan, spacing: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """HU [depth, height, width] on a grid along the normal, column and row directions."""
    step_z, step_y, step_x = spacing
    depth, height, width = shape
    offsets, (pixel_y, pixel_x) = scan.offsets, scan.pixel_spacing
    extent = np.array(scan.slices.shape[1:]) - 1
    centre = (offsets.min(0) + offsets.max(0) + extent * (pixel_y, pixel_x)) / 2
    start = centre - (np.array([height, width]) - 1) / 2 * (step_y, step_x)
    factor = np.array([step_y / pixel_y, step_x / pixel_x])
    sigma = np.maximum(factor - 1, 0) / 2
    planes = np.stack(
        [
            ndimage.affine_transform(
                ndimage.gaussian_filter(image, sigma) if sigma.any() else image,
                factor,
                offset=(start - offset) / (pixel_y, pixel_x),
                output_shape=(height, width),
                order=1,
                mode="constant",
                cval=AIR,
            )
            for image, offset in zip(scan.slices, offsets)
        ]
    )

    positions = scan.positions
    z = (positions[0] + positions[-1]) / 2 + (np.arange(depth) - (depth - 1) / 2) * step_z
    index = np.interp(z, positions, np.arange(len(positions)))
    lower = np.floor(index).astype(int)
    upper = np.minimum(lower + 1, len(positions) - 1)
    weight = (index - lower)[:, None, None]
    volume = (1 - weight) * planes[lower] + weight * planes[upper]
    gaps = scan.gaps if len(positions) > 1 else np.array([step_z])
    inside = (z >= positions[0] - gaps[0] / 2) & (z <= positions[-1] + gaps[-1] / 2)
    volume[~inside] = AIR
    return volume


def _sorted_scan(path, names, slices, origins, x_axis, y_axis, pixel_spacing) -> Scan:
    """The Scan with its slices in order along the normal; two slices at one position raise."""
    scan = Scan(path, slices, origins, x_axis, y_axis, pixel_spacing)
    order = np.argsort(scan.positions, kind="stable")
    same = np.flatnonzero(np.diff(scan.positions[order]) < 1e-3)
    if same.size:
        a, b = order[same[0]], order[same[0] + 1]
        raise ConfigError(
            f"{path}: {names[a]} and {names[b]} lie at the same position along the slice normal; "
            "expected one slice per position: remove duplicates or separate the series"
        )
    return dataclasses.replace(scan, slices=slices[order], origins=origins[order])


def _read_dicom(path: str) -> pydicom.Dataset:
    try:
        header = pydicom.dcmread(path)
    except Exception as err:
        raise ConfigError(f"{path}: not a readable DICOM file ({err}); replace the file") from err
    for tag in _REQUIRED_TAGS:
        if tag not in header:
            raise ConfigError(f"{path}: no {tag}; expected a CT image slice with its geometry")
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        raise ConfigError(
            f"{path}: a multi-frame DICOM file; expected one slice per file: convert the series "
            "to NIfTI (e.g. with dcm2niix)"
        )
    return header


def _hounsfield(path: str, header: pydicom.Dataset) -> np.ndarray:
    try:
        stored = header.pixel_array
    except Exception as err:
        raise ConfigError(_pixel_data_error(path, header, err)) from err
    slope, intercept = header.get("RescaleSlope", 1), header.get("RescaleIntercept", 0)
    hounsfield = stored.astype(np.float32) * float(slope) + float(intercept)
    if "PixelPaddingValue" in header:  # outside the reconstructed field of view
        hounsfield[stored == header.PixelPaddingValue] = AIR
    return hounsfield


def _pixel_data_error(path: str, header: pydicom.Dataset, err: Exception) -> str:
    """What went wrong reading the pixel data: a compression with no decoder installed, or `err`."""
    syntax = pydicom.uid.UID(header.file_meta.get("TransferSyntaxUID", ""))
    if syntax.is_transfer_syntax and syntax.is_compressed:
        try:
            installed = get_decoder(syntax).is_available
        except NotImplementedError:  # pydicom has no decoder for it
            return (
                f"{path}: pixel data in {syntax.name} ({syntax}), which pydicom cannot decode; "
                "convert the series to NIfTI (e.g. with dcm2niix)"
            )
        if not installed:
            return (
                f"{path}: pixel data in {syntax.name} ({syntax}) and no decoder for it is "
                "installed: pip install 'medjax[dicom]'"
            )
    return f"{path}: cannot read its pixel data ({err})"
