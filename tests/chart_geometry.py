"""Where the texts of a matplotlib figure are drawn, as rectangles rotated with their text, and which overlap.

An axis-aligned box of a rotated tick label covers its neighbours' boxes where the glyphs never touch, so each
text's own rectangle is rebuilt from its box and angle and two rectangles are tested with the separating-axis
theorem."""
from __future__ import annotations

import itertools
import math

import numpy as np
from matplotlib.text import Text

from obliviate.report import drawn_tick_labels


def text_rectangles(fig) -> list[tuple[str, np.ndarray]]:
    """(text, its 4 corners in display pixels) of every text ``fig`` draws."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    drawn_ticks = {id(t) for ax in fig.axes if ax.get_visible() for axis in (ax.xaxis, ax.yaxis)
                   for t in drawn_tick_labels(axis)}
    tick_labels = _tick_labels(fig)
    out = []
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text().strip() or (t.axes is not None and not t.axes.get_visible()):
            continue
        if id(t) in tick_labels and id(t) not in drawn_ticks:
            continue
        box = t.get_window_extent(renderer)
        if box.width <= 0 or box.height <= 0:
            continue
        angle = math.radians(t.get_rotation())
        c, s = abs(math.cos(angle)), abs(math.sin(angle))
        det = c * c - s * s
        if abs(det) < 1e-3:  # at 45° the box does not determine the rectangle: keep the box (conservative)
            w, h, angle = box.width, box.height, 0.0
        else:
            w, h = (box.width * c - box.height * s) / det, (box.height * c - box.width * s) / det
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        half = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
        out.append((t.get_text(), half @ rot.T + [(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2]))
    return out


def _tick_labels(fig) -> set[int]:
    """Every tick label the axes of ``fig`` keep, drawn or not (a tick label's ``.axes`` is None in matplotlib,
    and spare ticks beyond the current tick count are kept but not drawn)."""
    return {id(label) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
            for tick in list(axis.majorTicks) + list(axis.minorTicks) for label in (tick.label1, tick.label2)}


def _separated(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    for poly in (a, b):
        for i in range(4):
            edge = poly[(i + 1) % 4] - poly[i]
            normal = np.array([-edge[1], edge[0]]) / (np.hypot(*edge) or 1.0)
            pa, pb = a @ normal, b @ normal
            if pa.max() - tol <= pb.min() or pb.max() - tol <= pa.min():
                return True
    return False


def overlapping_texts(fig, tol: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of texts whose rectangles overlap by more than ``tol`` pixels."""
    rects = text_rectangles(fig)
    return [(a, b) for (a, ra), (b, rb) in itertools.combinations(rects, 2) if not _separated(ra, rb, tol)]
