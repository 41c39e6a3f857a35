"""Signed-distance functions of the synthetic dataset's shape family.

Convention: every function takes shape-local coordinates ``(u, v)`` (float32 arrays of equal
shape) in which the shape roughly fills the unit disc, and returns the signed Euclidean distance
to the outline in the same units — negative inside, positive outside. The renderer turns the
distance into antialiased coverage (``clip(0.5 - d / pixel, 0, 1)``), so the functions only need
to be exact near the outline; unions (``min``) and differences (``max(a, -b)``) are exact
outside and a lower bound inside, which is enough for that.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

ShapeSDF = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _box(u: np.ndarray, v: np.ndarray, half_u: float, half_v: float) -> np.ndarray:
    """Axis-aligned rectangle with the given half extents, centred at the origin."""
    qu = np.abs(u) - half_u
    qv = np.abs(v) - half_v
    outside = np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0))
    inside = np.minimum(np.maximum(qu, qv), 0.0)
    return outside + inside


def _regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, circumradius: float) -> np.ndarray:
    """Regular polygon with an edge normal along +u.

    Folds the plane into the sector of one edge (the edge's Voronoi region inside the polygon),
    then measures the distance to that edge segment, or to its end vertex past the segment.
    """
    half_sector = math.pi / sides
    apothem = circumradius * math.cos(half_sector)
    half_edge = circumradius * math.sin(half_sector)
    radius = np.hypot(u, v)
    angle = np.mod(np.arctan2(v, u) + half_sector, 2 * half_sector) - half_sector
    qu = radius * np.cos(angle)
    qv = np.abs(radius * np.sin(angle))
    # past the edge's end (qv > half_edge) the point is necessarily outside: nearest is the vertex
    return np.where(qv > half_edge, np.hypot(qu - apothem, qv - half_edge), qu - apothem)


def circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Disc of radius 0.8."""
    return np.hypot(u, v) - 0.8


def square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Square of half side 0.72."""
    return _box(u, v, 0.72, 0.72)


def triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Equilateral triangle of circumradius 1.05, centroid at the origin."""
    return _regular_polygon(u, v, 3, 1.05)


def ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Annulus between radii 0.52 and 0.9."""
    return np.abs(np.hypot(u, v) - 0.71) - 0.19


def cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Plus sign: union of two 2.0 x 0.6 bars."""
    return np.minimum(_box(u, v, 1.0, 0.3), _box(u, v, 0.3, 1.0))


def star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Five-pointed star, tips at radius 1.05, notches at radius 0.45.

    Folds the plane into the half-wedge between a tip (angle 0) and a notch (angle pi/5), where
    the outline is the single segment tip -> notch; the sign is the side of that segment's line.
    """
    points = 5
    tip_u, tip_v = 1.05, 0.0
    notch_u, notch_v = 0.45 * math.cos(math.pi / points), 0.45 * math.sin(math.pi / points)
    edge_u, edge_v = notch_u - tip_u, notch_v - tip_v
    wedge = 2 * math.pi / points
    angle = np.mod(np.arctan2(v, u), wedge)
    angle = np.minimum(angle, wedge - angle)
    radius = np.hypot(u, v)
    wu = radius * np.cos(angle) - tip_u
    wv = radius * np.sin(angle) - tip_v
    t = np.clip((wu * edge_u + wv * edge_v) / (edge_u**2 + edge_v**2), 0.0, 1.0)
    distance = np.hypot(wu - t * edge_u, wv - t * edge_v)
    # the origin lies on the positive side of the edge's cross product
    inside = edge_u * wv - edge_v * wu > 0
    return np.where(inside, -distance, distance)


def crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Disc of radius 0.9 with an offset disc of radius 0.72 bitten out, re-centred on its bulk."""
    u = u - 0.25
    body = np.hypot(u, v) - 0.9
    bite = np.hypot(u - 0.45, v) - 0.72
    return np.maximum(body, -bite)


def heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Heart: a square on its corner with two discs on its upper edges, point towards -v."""
    scale = 1.1
    u, v = u / scale, v / scale + 0.07
    root_half = math.sqrt(0.5)
    diamond = _box((u + v) * root_half, (v - u) * root_half, 0.5, 0.5)
    lobe_offset = 0.5 * root_half
    left = np.hypot(u + lobe_offset, v - lobe_offset) - 0.5
    right = np.hypot(u - lobe_offset, v - lobe_offset) - 0.5
    return np.minimum(diamond, np.minimum(left, right)) * scale


SHAPES: dict[str, ShapeSDF] = {
    "circle": circle,
    "square": square,
    "triangle": triangle,
    "ring": ring,
    "cross": cross,
    "star": star,
    "crescent": crescent,
    "heart": heart,
}
"""Shape family in class order; the synthetic dataset's class k uses shape ``k mod len(SHAPES)``."""
