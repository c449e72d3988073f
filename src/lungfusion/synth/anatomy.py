"""An analytic chest phantom: organ labels on any axis-aligned grid, then HU and SUV per label.

Shapes are defined in a *local* frame in millimetres of an adult chest (x to the patient's left,
y posterior, z superior: LPS axes; z = 0 at the diaphragm) and placed in physical space as
``physical = centre + scale * local``; the tumour is drawn at ``tumour_scale`` so that it keeps a
usable number of voxels in the smaller presets. Rendering works on any axis-aligned grid, so the
same patient renders identically (up to sampling) on the CT grid and on the finer auxiliary grid
the PET is resampled from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# label codes
AIR, FAT, MUSCLE, SOFT, MEDIASTINUM, LUNG, VESSEL, AIRWAY, HEART_WALL, BLOOD = range(10)
CORTICAL, MARROW, CANAL, RIB, TABLE, LIVER, NODE = range(10, 17)
TUMOUR_GGO, TUMOUR_SOLID, TUMOUR_DENSE, TUMOUR_NECROSIS, TUMOUR_CAVITY = range(20, 25)
TUMOUR_LABELS = (TUMOUR_GGO, TUMOUR_SOLID, TUMOUR_DENSE, TUMOUR_NECROSIS, TUMOUR_CAVITY)
N_LABELS = 25

HU = np.zeros(N_LABELS, dtype=np.float32)
HU[[AIR, FAT, MUSCLE, SOFT, MEDIASTINUM, LUNG, VESSEL, AIRWAY, HEART_WALL, BLOOD]] = [
    -1000,
    -100,
    45,
    35,
    -40,
    -860,
    40,
    -1000,
    45,
    40,
]
HU[[CORTICAL, MARROW, CANAL, RIB, TABLE, LIVER, NODE]] = [750, 230, 15, 550, 120, 58, 35]
HU[list(TUMOUR_LABELS)] = [-520, 35, 95, 12, -960]
# Lung parenchyma (mean HU[LUNG]): anterior-to-posterior rise, texture SD and its length
DEPENDENT_GRADIENT_HU = 60.0
PARENCHYMA_TEXTURE_HU = 35.0
PARENCHYMA_TEXTURE_MM = 2.5

# SUV per label; the heart wall and the tumour's solid parts are set per patient
SUV = np.zeros(N_LABELS, dtype=np.float32)
SUV[[FAT, MUSCLE, SOFT, MEDIASTINUM, LUNG, VESSEL, AIRWAY, HEART_WALL, BLOOD]] = [
    0.3,
    0.7,
    0.8,
    1.0,
    0.4,
    1.5,
    0.0,
    3.0,
    1.8,
]
SUV[[CORTICAL, MARROW, CANAL, RIB, TABLE, LIVER, NODE]] = [0.3, 1.5, 0.3, 0.6, 0.0, 2.3, 3.0]
SUV[list(TUMOUR_LABELS)] = [1.0, 3.0, 3.0, 0.6, 0.1]

RIGHT_LUNG_XY = (-72.0, 0.0)  # patient's right is -x in LPS
LEFT_LUNG_XY = (75.0, 5.0)
LUNG_SEMI_AXES = {"right": (55.0, 78.0), "left": (50.0, 75.0)}
LUNG_Z = (0.0, 270.0)


@dataclass
class Tumour:
    centre: np.ndarray  # local mm
    radius: float  # local mm (diameter / 2, magnified by tumour_scale / scale)
    axes: np.ndarray  # ellipsoid axis ratios
    lobes: list  # (direction, amplitude) bumps on the surface
    ggo_fraction: float
    cavitation: bool
    necrosis: bool
    dense_dir: np.ndarray  # unit vector: the CT-visible dense component
    hot_dir: np.ndarray  # unit vector: the PET hot spot
    suvmax: float


@dataclass
class Anatomy:
    centre: np.ndarray  # physical mm of the local origin
    scale: float
    tumour_scale: float
    body_semi_axes: tuple[float, float]
    heart_suv: float
    tumour: Tumour
    vessels: list = field(default_factory=list)  # (p0, p1, radius) local mm
    nodes: list = field(default_factory=list)  # (centre, radius) local mm
    node_suv: float = 3.0


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _random_direction_inplane(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * math.pi)
    return _unit(np.array([math.cos(angle), math.sin(angle), rng.normal(0, 0.25)]))


def _lung_centre(side: str) -> tuple[float, float]:
    return RIGHT_LUNG_XY if side == "right" else LEFT_LUNG_XY


def _vessel_tree(rng: np.random.Generator, side: str) -> list:
    """Pulmonary vessels: three generations of branching tubes from the hilum into the lung."""
    sign = -1.0 if side == "right" else 1.0
    hilum = np.array([sign * 42.0, 2.0, 150.0])
    segments = []
    stack = []
    for target_z in (230.0, 140.0, 50.0):
        direction = _unit(np.array([sign * 35.0, rng.normal(0, 15), target_z - hilum[2]]))
        stack.append((hilum, direction, 55.0, 4.5, 0))
    while stack:
        start, direction, length, radius, depth = stack.pop()
        end = start + direction * length
        segments.append((start, end, radius))
        if depth < 2:
            for _ in range(int(rng.integers(2, 4))):
                child = _unit(direction + rng.normal(0, 0.45, 3))
                stack.append((end, child, length * 0.7, radius * 0.65, depth + 1))
    return segments


def _tumour(rng: np.random.Generator, latents: dict, side: str, magnify: float) -> Tumour:
    """The tumour; ``magnify`` draws it larger than the anatomy's scale (small presets)."""
    sign = -1.0 if side == "right" else 1.0
    lx, ly = _lung_centre(side)
    ax, ay = LUNG_SEMI_AXES[side]
    if latents["central"]:
        centre = np.array([sign * rng.uniform(32, 45), rng.uniform(-8, 12), rng.uniform(125, 175)])
    else:
        angle = rng.uniform(-0.6 * math.pi, 0.6 * math.pi)  # lateral half of the lung
        r = rng.uniform(0.55, 0.75)
        centre = np.array(
            [lx + sign * r * ax * math.cos(angle), ly + r * ay * math.sin(angle), 0.0]
        )
        centre[2] = rng.uniform(70, 220)
    dense_dir = _random_direction_inplane(rng)
    hot_dir = dense_dir if latents["concordant"] else -dense_dir
    hot_dir = _unit(hot_dir + rng.normal(0, 0.15, 3))
    lobes = [(_unit(rng.normal(size=3)), rng.uniform(0.05, 0.15)) for _ in range(3)]
    return Tumour(
        centre=centre,
        radius=latents["diameter_mm"] / 2.0 * magnify,
        axes=rng.uniform(0.85, 1.15, 3),
        lobes=lobes,
        ggo_fraction=latents["ggo_fraction"],
        cavitation=latents["cavitation"],
        necrosis=latents["necrosis"],
        dense_dir=dense_dir,
        hot_dir=hot_dir,
        suvmax=latents["suvmax"],
    )


def _nodes(rng: np.random.Generator, n_stage: int, side: str) -> list:
    """Hot lymph nodes for N1 (hilar), N2 (ipsilateral mediastinal), N3 (contralateral)."""
    sign = -1.0 if side == "right" else 1.0
    sites = [
        np.array([sign * 48.0, 12.0, 135.0]),
        np.array([sign * 14.0, 8.0, 178.0]),
        np.array([-sign * 22.0, 6.0, 190.0]),
    ]
    return [(site + rng.normal(0, 3, 3), rng.uniform(5.0, 8.0)) for site in sites[: int(n_stage)]]


def sample_anatomy(
    rng: np.random.Generator,
    latents: dict,
    *,
    centre: np.ndarray,
    scale: float,
    tumour_scale: float,
) -> Anatomy:
    side = "right" if rng.random() < 0.55 else "left"
    vessels = _vessel_tree(rng, "right") + _vessel_tree(rng, "left")
    # main pulmonary arteries from the heart to the hila
    trunk = np.array([8.0, -12.0, 125.0])
    vessels += [
        (trunk, np.array([-42.0, 2.0, 150.0]), 9.0),
        (trunk, np.array([42.0, 2.0, 150.0]), 9.0),
    ]
    return Anatomy(
        centre=np.asarray(centre, dtype=float),
        scale=scale,
        tumour_scale=tumour_scale,
        body_semi_axes=(rng.uniform(150, 172), rng.uniform(108, 125)),
        heart_suv=float(np.exp(rng.normal(math.log(3.0), 0.7))),
        tumour=_tumour(rng, latents, side, tumour_scale / scale),
        vessels=vessels,
        nodes=_nodes(rng, latents["n_stage"], side),
        node_suv=max(2.5, 0.5 * latents["suvmax"]),
    )


class _Axes:
    """Local-frame coordinates of an axis-aligned grid, as 1-D arrays per axis (z, y, x order)."""

    def __init__(self, anatomy: Anatomy, origin, spacing, size) -> None:
        s = anatomy.scale
        self.x = (origin[0] + spacing[0] * np.arange(size[0]) - anatomy.centre[0]) / s
        self.y = (origin[1] + spacing[1] * np.arange(size[1]) - anatomy.centre[1]) / s
        self.z = (origin[2] + spacing[2] * np.arange(size[2]) - anatomy.centre[2]) / s
        # float32: the painting works on whole volumes of these; its error is far below a voxel
        self.x, self.y, self.z = (v.astype(np.float32) for v in (self.x, self.y, self.z))

    def box(self, lo, hi):
        """Index slices and broadcastable local coordinates of the box [lo, hi] (local x, y, z)."""
        slices = []
        for axis, a, b in zip((self.x, self.y, self.z), lo, hi, strict=True):
            idx = np.nonzero((axis >= a) & (axis <= b))[0]
            if idx.size == 0:
                return None
            slices.append(slice(int(idx[0]), int(idx[-1]) + 1))
        sx, sy, sz = slices
        coords = (
            self.x[sx][None, None, :],
            self.y[sy][None, :, None],
            self.z[sz][:, None, None],
        )
        return (sz, sy, sx), coords


def _segment_distance(coords, p0, p1):
    x, y, z = coords
    d = p1 - p0
    t = ((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / float(d @ d)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt(
        (x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2
    )


def _paint_tube(labels, axes, p0, p1, radius, value, only=None):
    lo = np.minimum(p0, p1) - radius
    hi = np.maximum(p0, p1) + radius
    found = axes.box(lo, hi)
    if found is None:
        return
    sl, coords = found
    inside = _segment_distance(coords, p0, p1) <= radius
    view = labels[sl]
    if only is not None:
        inside &= np.isin(view, only)
    view[inside] = value


def _paint_ellipsoid(labels, axes, centre, semi, value, only=None):
    centre = np.asarray(centre)
    semi = np.asarray(semi)
    found = axes.box(centre - semi, centre + semi)
    if found is None:
        return
    sl, (x, y, z) = found
    inside = ((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 + (
        (z - centre[2]) / semi[2]
    ) ** 2 <= 1.0
    view = labels[sl]
    if only is not None:
        inside &= np.isin(view, only)
    view[inside] = value


def _paint_body(labels, axes, anatomy):
    a, b = anatomy.body_semi_axes
    x, y, z = axes.x[None, None, :], axes.y[None, :, None], axes.z[:, None, None]
    taper = 1.0 - 0.06 * np.clip(z / 300.0, 0, 1)  # the chest narrows a little upwards
    r = np.sqrt((x / (a * taper)) ** 2 + (y / b) ** 2)
    labels[r <= 1.0] = FAT
    labels[r <= 1.0 - 16.0 / b] = MUSCLE
    labels[r <= 1.0 - 30.0 / b] = SOFT
    # table: a curved carbon plate under the patient
    table = (y >= b + 8 + 0.0006 * x**2) & (y <= b + 20 + 0.0006 * x**2) & (np.abs(x) < 230)
    labels[np.broadcast_to(table, labels.shape)] = TABLE
    # ribs: oblique bands in a shell just inside the muscle, sloping down anteriorly
    rib_phase = np.mod(z + 0.35 * (b - y), 26.0)
    ribs = (
        (r > 0.70)
        & (r <= 1.0 - 30.0 / b)
        & (rib_phase < 8.0)
        & ~((y < -0.6 * b) & (np.abs(x) < 30))
    )
    labels[ribs & (z > -10) & (z < 290)] = RIB
    # mediastinal fat between the lungs
    mediastinum = (np.abs(x) < 38) & (y > -b + 25) & (y < 55) & (z > 40) & (z < 280)
    labels[mediastinum & (labels == SOFT)] = MEDIASTINUM
    return r


def _paint_lungs(labels, axes):
    x, y, z = axes.x[None, None, :], axes.y[None, :, None], axes.z[:, None, None]
    z0, z1 = LUNG_Z
    zc, hz = (z0 + z1) / 2 + 20, (z1 - z0) / 2 + 20
    for side in ("right", "left"):
        lx, ly = _lung_centre(side)
        ax, ay = LUNG_SEMI_AXES[side]
        q = ((x - lx) / ax) ** 2 + ((y - ly) / ay) ** 2
        dome = 35.0 - 35.0 * q + (8.0 if side == "right" else 0.0)  # right dome higher (liver)
        inside = (q + ((z - zc) / hz) ** 2 <= 1.0) & (z >= dome)
        labels[inside & (labels != RIB)] = LUNG


def _paint_spine(labels, axes, anatomy):
    _, b = anatomy.body_semi_axes
    cy = b - 48.0
    x, y, z = axes.x[None, None, :], axes.y[None, :, None], axes.z[:, None, None]
    r = np.sqrt(x**2 + (y - cy) ** 2)
    disc = np.mod(z, 30.0) < 5.0
    body = r <= 20.0
    labels[np.broadcast_to(body, labels.shape)] = CORTICAL
    labels[(r <= 17.0) & ~disc] = MARROW
    labels[(r <= 17.0) & disc] = SOFT
    posterior = (np.abs(x) <= 12.0) & (y > cy + 18) & (y < cy + 45)
    labels[np.broadcast_to(posterior, labels.shape)] = CORTICAL
    canal = np.sqrt(x**2 + (y - cy - 28.0) ** 2) <= 8.0
    labels[np.broadcast_to(canal, labels.shape)] = CANAL


def _tumour_fields(axes: _Axes, tumour: Tumour):
    """Normalised radius rho (1 at the surface) and local coordinates in the tumour's box."""
    reach = tumour.radius * 1.5
    found = axes.box(tumour.centre - reach, tumour.centre + reach)
    if found is None:
        return None
    sl, (x, y, z) = found
    dx = (x - tumour.centre[0]) / tumour.axes[0]
    dy = (y - tumour.centre[1]) / tumour.axes[1]
    dz = (z - tumour.centre[2]) / tumour.axes[2]
    dist = np.sqrt(dx**2 + dy**2 + dz**2) + 1e-6
    surface = np.full(dist.shape, tumour.radius)
    for direction, amplitude in tumour.lobes:
        cos = (dx * direction[0] + dy * direction[1] + dz * direction[2]) / dist
        surface = surface * (1.0 + amplitude * np.clip(cos, 0, 1) ** 2)
    return sl, dist / surface, (dx, dy, dz)


def _paint_tumour(labels, axes: _Axes, tumour: Tumour):
    fields = _tumour_fields(axes, tumour)
    if fields is None:
        return
    sl, rho, (dx, dy, dz) = fields
    view = labels[sl]
    replaceable = ~np.isin(view, (CORTICAL, MARROW, CANAL, TABLE, AIR))
    r = tumour.radius
    parts = np.full(rho.shape, 255, dtype=np.uint8)
    parts[rho <= 1.0] = TUMOUR_GGO
    parts[rho <= 1.0 - tumour.ggo_fraction * 0.9] = TUMOUR_SOLID
    d = tumour.dense_dir * 0.45 * r
    dense = (dx - d[0]) ** 2 + (dy - d[1]) ** 2 + (dz - d[2]) ** 2 <= (0.35 * r) ** 2
    parts[dense & (rho <= 1.0)] = TUMOUR_DENSE
    if tumour.necrosis:
        parts[rho <= 0.45] = TUMOUR_NECROSIS
    if tumour.cavitation:
        parts[rho <= 0.32] = TUMOUR_CAVITY
    paint = (parts != 255) & replaceable
    view[paint] = parts[paint]


def render_labels(anatomy: Anatomy, *, origin, spacing, size) -> np.ndarray:
    """Organ labels (uint8, z-y-x) on the axis-aligned grid with this origin, spacing, size (x, y, z)."""
    axes = _Axes(anatomy, origin, spacing, size)
    labels = np.zeros((size[2], size[1], size[0]), dtype=np.uint8)
    _paint_body(labels, axes, anatomy)
    _paint_ellipsoid(labels, axes, (-45, 0, -20), (95, 80, 60), LIVER, only=(SOFT, MEDIASTINUM))
    _paint_lungs(labels, axes)
    lung_or_soft = (LUNG, SOFT, MEDIASTINUM)
    for p0, p1, radius in anatomy.vessels:
        only = (LUNG,) if radius < 8 else lung_or_soft
        _paint_tube(labels, axes, p0, p1, radius, VESSEL if radius < 8 else BLOOD, only=only)
    _paint_ellipsoid(labels, axes, (18, -28, 70), (58, 48, 52), HEART_WALL, only=lung_or_soft)
    _paint_ellipsoid(labels, axes, (18, -28, 70), (46, 36, 40), BLOOD, only=(HEART_WALL,))
    aorta = [((6, -22, 95), (6, -20, 185), 14.0), ((6, -20, 185), (24, 40, 188), 13.0)]
    aorta.append(((24, 40, 188), (26, 45, -30), 12.0))
    for p0, p1, radius in aorta:
        _paint_tube(labels, axes, np.array(p0, float), np.array(p1, float), radius, BLOOD)
    airways = [((0, -8, 320), (0, 0, 188), 10.0), ((0, 0, 188), (-42, 2, 160), 7.0)]
    airways.append(((0, 0, 188), (44, 4, 152), 7.0))
    for p0, p1, radius in airways:
        p0, p1 = np.array(p0, float), np.array(p1, float)
        _paint_tube(labels, axes, p0, p1, radius, SOFT)  # cartilage wall
        _paint_tube(labels, axes, p0, p1, radius * 0.78, AIRWAY)
    _paint_spine(labels, axes, anatomy)
    for centre, radius in anatomy.nodes:
        _paint_ellipsoid(labels, axes, centre, (radius,) * 3, NODE, only=lung_or_soft + (FAT,))
    _paint_tumour(labels, axes, anatomy.tumour)
    return labels


def lung_side_labels(anatomy: Anatomy, labels: np.ndarray, *, origin, spacing, size) -> np.ndarray:
    """Ground-truth lungs (1 right, 2 left): parenchyma and its vessels, without tumour or airways."""
    axes = _Axes(anatomy, origin, spacing, size)
    lungs = np.isin(labels, (LUNG, VESSEL))
    side = np.where(axes.x[None, None, :] < 0, 1, 2).astype(np.uint8)
    return np.where(lungs, side, 0).astype(np.uint8)


def gaussian_blur(
    array: np.ndarray, sigma: float | list[float], *, truncate: float = 4.0
) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter`` (mode "reflect") for float32 volumes, as sums of shifted
    copies: its kernels here have 3 to 17 taps, where this is several times faster than scipy
    along the slowest axis (strided lines). Same values up to float32 rounding."""
    from scipy import ndimage

    out = np.asarray(array, dtype=np.float32)
    sigmas = np.broadcast_to(np.asarray(sigma, dtype=float), (out.ndim,))
    for axis, s in enumerate(sigmas):
        radius = int(truncate * float(s) + 0.5)
        n = out.shape[axis]
        if s <= 0 or radius == 0:
            continue
        if radius >= n:  # reflections of reflections: leave those to scipy
            out = ndimage.gaussian_filter1d(out, float(s), axis=axis, truncate=truncate)
            continue
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / s) ** 2)
        taps = (taps / taps.sum()).astype(np.float32)
        width = [(0, 0)] * out.ndim
        width[axis] = (radius, radius)
        padded = np.pad(out, width, mode="symmetric")  # numpy's symmetric is scipy's reflect
        shifted = np.moveaxis(padded, axis, 0)
        result = taps[0] * shifted[0:n]
        for i in range(1, len(taps)):
            result += taps[i] * shifted[i : i + n]
        out = np.ascontiguousarray(np.moveaxis(result, 0, axis))
    return out


def hu_image(
    labels: np.ndarray, anatomy: Anatomy, axes_spacing, rng, *, noise_hu: float
) -> np.ndarray:
    """HU from the labels, with lung parenchyma as a chest CT shows it, partial volume and noise.

    The parenchyma is denser on the dependent side (supine: posterior) by
    :data:`DEPENDENT_GRADIENT_HU` across the lungs, and heterogeneous: a smooth texture of
    :data:`PARENCHYMA_TEXTURE_HU` SD and :data:`PARENCHYMA_TEXTURE_MM` correlation length, so
    a fixed threshold meets lungs that are not uniformly dark. The noise is correlated over
    neighbouring voxels, as a reconstruction kernel leaves it, with SD ``noise_hu``.
    """
    hu = HU[labels]
    lung = labels == LUNG
    hu = np.where(lung, hu + _parenchyma(lung, axes_spacing, rng), hu)
    sigma_vox = [0.35, 0.6, 0.6]  # z, y, x: the reconstruction kernel's blur
    hu = gaussian_blur(hu, sigma_vox, truncate=2.5)
    noise = gaussian_blur(rng.standard_normal(hu.shape, dtype=np.float32), [0.0, 0.7, 0.7])
    noise *= np.float32(noise_hu / max(float(noise.std()), 1e-6))
    return hu + noise


def _parenchyma(lung: np.ndarray, axes_spacing, rng) -> np.ndarray:
    """The parenchyma's deviation from its mean HU: the dependent-side ramp plus texture."""
    rows = np.flatnonzero(lung.any(axis=(0, 2)))  # y rows (anterior to posterior) with lung
    ny = lung.shape[1]
    if rows.size:
        span = max(int(rows[-1] - rows[0]), 1)
        ramp = np.clip((np.arange(ny) - rows[0]) / span, 0.0, 1.0) - 0.5
    else:
        ramp = np.zeros(ny)
    ramp = (DEPENDENT_GRADIENT_HU * ramp).astype(np.float32)[None, :, None]
    x, y, z = (float(v) for v in axes_spacing)
    sigma = [PARENCHYMA_TEXTURE_MM / z, PARENCHYMA_TEXTURE_MM / y, PARENCHYMA_TEXTURE_MM / x]
    texture = gaussian_blur(rng.standard_normal(lung.shape, dtype=np.float32), sigma)
    texture *= np.float32(PARENCHYMA_TEXTURE_HU / max(float(texture.std()), 1e-6))
    return ramp + texture


def suv_image(labels: np.ndarray, anatomy: Anatomy, *, origin, spacing, size) -> np.ndarray:
    """The true SUV (before PSF and noise) on the grid the labels were rendered on."""
    table = SUV.copy()
    table[HEART_WALL] = anatomy.heart_suv
    table[NODE] = anatomy.node_suv
    t = anatomy.tumour
    base = 0.3 * t.suvmax
    table[[TUMOUR_SOLID, TUMOUR_DENSE]] = base
    suv = table[labels]
    fields = _tumour_fields(_Axes(anatomy, origin, spacing, size), t)
    if fields is not None:
        sl, _, (dx, dy, dz) = fields
        h = t.hot_dir * 0.45 * t.radius
        sigma = 0.3 * t.radius
        hot = np.exp(-((dx - h[0]) ** 2 + (dy - h[1]) ** 2 + (dz - h[2]) ** 2) / (2 * sigma**2))
        view = suv[sl]
        solid = np.isin(labels[sl], (TUMOUR_SOLID, TUMOUR_DENSE, TUMOUR_GGO))
        view[solid] += ((t.suvmax - base) * hot)[solid]
    return suv
