"""Drawing a synthetic scene: textured background, static props, articulated pedestrians, light.

People are drawn far-to-near together with the props, so nearer things occlude farther ones.
A figure is a head, a torso and two-segment legs and arms that swing with the gait phase; a
falling person is the same figure rotated about the feet. Sub-pixel coordinates use OpenCV's
`shift` so small far-away figures still move smoothly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from training.scene_world import Camera, Person

SHIFT = 4                      # OpenCV fixed-point bits for sub-pixel drawing
ONE = 1 << SHIFT


@dataclass(frozen=True)
class Prop:
    kind: str                  # "pole" | "tree" | "bench" | "planter"
    x: float
    z: float
    colour: tuple


def _pt(u: float, v: float) -> tuple[int, int]:
    return int(round(u * ONE)), int(round(v * ONE))


def make_background(cam: Camera, rng: np.random.Generator) -> tuple[np.ndarray, list[Prop]]:
    """A street/plaza: buildings above the horizon, paved ground in perspective, texture, props."""
    h, w = cam.height, cam.width
    hz = int(round(cam.horizon))
    img = np.zeros((h, w, 3), np.float32)
    sky = np.array(rng.uniform(150, 235, 3), np.float32)
    img[:] = sky * np.linspace(0.85, 1.05, h, dtype=np.float32)[:, None, None]
    u = 0.0
    while u < w:                                   # a row of facades along the far side
        bw = w * float(rng.uniform(0.08, 0.25))
        top = hz - (hz + 2) * float(rng.uniform(0.2, 1.0))
        col = tuple(float(c) for c in rng.uniform(60, 200, 3))
        cv2.rectangle(img, (int(u), int(top)), (int(u + bw), hz + 1), col, -1)
        win = tuple(float(c) * 0.6 for c in col)
        step = max(3.0, bw / 5)
        for wy in np.arange(top + step * 0.5, hz - step * 0.5, step):
            for wx in np.arange(u + step * 0.4, u + bw - step * 0.4, step):
                cv2.rectangle(img, (int(wx), int(wy)), (int(wx + step * 0.4), int(wy + step * 0.5)), win, -1)
        u += bw
    ground = np.array(rng.uniform(70, 175, 3), np.float32)
    ground = ground * 0.5 + ground.mean() * 0.5      # greyish paving, slightly tinted
    img[hz:] = ground
    line = tuple(float(c) * float(rng.uniform(0.7, 0.9)) for c in ground)
    tile = float(rng.uniform(1.5, 4.0))
    for z in np.arange(cam.z_near * 0.5, cam.z_far * 3, tile):      # rows of paving, converging
        v = cam.horizon + cam.focal * cam.cam_height / z
        cv2.line(img, _pt(0, v), _pt(w, v), line, 1, cv2.LINE_AA, SHIFT)
    for x in np.arange(-60, 60, tile):
        a, b = cam.project(x, cam.z_near * 0.5), cam.project(x, cam.z_far * 6)
        cv2.line(img, _pt(a[0], a[1]), _pt(b[0], b[1]), line, 1, cv2.LINE_AA, SHIFT)
    low = rng.normal(0, 1, (h // 12 + 2, w // 12 + 2)).astype(np.float32)
    low = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    img *= (1 + 0.08 * low)[:, :, None]
    img += rng.normal(0, 4, (h, w, 1)).astype(np.float32)
    props = []
    for _ in range(int(rng.integers(0, 6))):
        z = float(rng.uniform(cam.z_near * 1.05, cam.z_far))
        x = float(rng.uniform(-1, 1)) * cam.half_width_m(z)
        kind = ("pole", "tree", "bench", "planter")[int(rng.integers(4))]
        props.append(Prop(kind, x, z, tuple(float(c) for c in rng.uniform(25, 110, 3))))
    return img, props


def draw_prop(img: np.ndarray, cam: Camera, p: Prop) -> None:
    u, v, h = cam.project(p.x, p.z)
    if p.kind == "pole":
        cv2.rectangle(img, _pt(u - 0.02 * h, v - 2.3 * h), _pt(u + 0.02 * h, v), p.colour, -1, cv2.LINE_AA, SHIFT)
        cv2.circle(img, _pt(u, v - 2.3 * h), max(1, int(0.06 * h * ONE)), (200, 220, 230), -1, cv2.LINE_AA, SHIFT)
    elif p.kind == "tree":
        cv2.rectangle(img, _pt(u - 0.05 * h, v - 1.2 * h), _pt(u + 0.05 * h, v), (40, 60, 80), -1, cv2.LINE_AA, SHIFT)
        cv2.circle(img, _pt(u, v - 1.6 * h), max(1, int(0.6 * h * ONE)), (40, 110, 50), -1, cv2.LINE_AA, SHIFT)
    elif p.kind == "bench":
        cv2.rectangle(img, _pt(u - 0.5 * h, v - 0.3 * h), _pt(u + 0.5 * h, v - 0.22 * h), p.colour, -1, cv2.LINE_AA, SHIFT)
        for dx in (-0.45, 0.45):
            cv2.line(img, _pt(u + dx * h, v - 0.25 * h), _pt(u + dx * h, v), p.colour,
                     max(1, int(0.04 * h)), cv2.LINE_AA, SHIFT)
    else:
        cv2.rectangle(img, _pt(u - 0.3 * h, v - 0.35 * h), _pt(u + 0.3 * h, v), p.colour, -1, cv2.LINE_AA, SHIFT)


def person_pixels(cam: Camera, p: Person) -> dict:
    """The figure's geometry in pixels (also what the tests check the drawing against)."""
    u, v, h = cam.project(p.x, p.z)
    du = cam.focal * (p.vx / p.z - p.x * p.vz / p.z ** 2)     # image-plane sideways velocity
    sideways = min(1.0, abs(du) / max(cam.focal * p.speed / p.z, 1e-6)) if p.speed > 0 else 0.0
    facing = 1.0 if du >= 0 else -1.0
    run = p.running
    amp = (0.65 if run else 0.38) * (0.3 + 0.7 * sideways) * (1.0 if p.speed > 0 else 0.0)
    lean = (0.12 if run else 0.02) * facing * sideways
    s = math.sin(p.phase)
    bob = 0.02 * abs(s) if p.speed > 0 else 0.0
    hip = (0.0, 0.50 + bob)
    neck = (lean, 0.82 + bob)
    parts = {"torso": [(hip[0] - 0.085, hip[1]), (hip[0] + 0.085, hip[1]),
                       (neck[0] + 0.11, neck[1]), (neck[0] - 0.11, neck[1])],
             "head": (neck[0] + 0.01 * facing, 0.915 + bob), "head_r": 0.075, "limbs": []}
    for sign in (1, -1):
        a = sign * amp * s
        knee = (hip[0] + 0.25 * math.sin(a), hip[1] - 0.25 * math.cos(a))
        bend = max(0.0, -sign * s) * amp * 1.2 * facing      # the trailing leg's knee bends
        foot = (knee[0] + 0.25 * math.sin(a - bend), knee[1] - 0.25 * math.cos(a - bend))
        parts["limbs"].append(("leg", [hip, knee, foot], 0.075))
        b = -sign * amp * 0.8 * s
        elbow = (neck[0] + 0.16 * math.sin(b), neck[1] - 0.03 - 0.16 * math.cos(b))
        hand = (elbow[0] + 0.15 * math.sin(b + 0.3 * facing * (1 if run else 0.3)),
                elbow[1] - 0.15 * math.cos(b))
        parts["limbs"].append(("arm", [(neck[0], neck[1] - 0.03), elbow, hand], 0.05))
    ang = p.fall_angle                 # rotate the whole figure about the feet

    def to_img(q):
        x, y = q
        xr = x * math.cos(ang) + y * math.sin(ang)
        yr = -x * math.sin(ang) + y * math.cos(ang)
        return u + xr * h, v - yr * h

    pts = [to_img(q) for q in parts["torso"]]
    head = to_img(parts["head"])
    limbs = [(kind, [to_img(q) for q in poly], t) for kind, poly, t in parts["limbs"]]
    xs = [q[0] for q in pts] + [q[0] for _, poly, _ in limbs for q in poly] + [head[0]]
    ys = [q[1] for q in pts] + [q[1] for _, poly, _ in limbs for q in poly] + [head[1]]
    pad = 0.1 * h + 2
    bbox = (min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad)
    shadow = ((u + math.sin(ang) * h * 0.5, v), (max(0.18 * h, 0.5 + 0.5 * h * abs(math.sin(ang))), 0.05 * h + 0.5))
    bbox = (min(bbox[0], shadow[0][0] - shadow[1][0] - 2), bbox[1],
            max(bbox[2], shadow[0][0] + shadow[1][0] + 2), max(bbox[3], v + shadow[1][1] + 2))
    return {"torso": pts, "head": head, "head_r": parts["head_r"] * h, "limbs": limbs,
            "h": h, "shadow": shadow, "bbox": bbox}


def draw_shadow(shade: np.ndarray, g: dict) -> None:
    """g: the person's `person_pixels`."""
    (su, sv), (sa, sb) = g["shadow"]
    cv2.ellipse(shade, (_pt(su, sv)), (int(sa * ONE), int(sb * ONE)), 0, 0, 360, 0.7, -1, cv2.LINE_AA, SHIFT)


def draw_person(img: np.ndarray, p: Person, g: dict) -> None:
    """g: the person's `person_pixels`."""
    h = g["h"]
    for kind, poly, t in g["limbs"]:
        col = p.bottom if kind == "leg" else p.top
        th = max(1, int(round(t * h)))
        for a, b in zip(poly[:-1], poly[1:]):
            cv2.line(img, _pt(*a), _pt(*b), col, th, cv2.LINE_AA, SHIFT)
    cv2.fillConvexPoly(img, np.array([_pt(*q) for q in g["torso"]], np.int32), p.top, cv2.LINE_AA, SHIFT)
    cv2.circle(img, _pt(*g["head"]), max(1, int(g["head_r"] * ONE)), p.skin, -1, cv2.LINE_AA, SHIFT)


@dataclass
class Lighting:
    """Slow global drift, an occasional sudden change, and cloud shadows drifting across."""
    base: float
    amp: float
    period: float               # frames
    phase: float
    step_frame: int | None
    step_gain: float
    clouds: list                # (u0, v0, du, dv, radius, depth) in pixels and pixels/frame
    noise_sigma: float

    @staticmethod
    def random(cam: Camera, n_frames: int, rng: np.random.Generator) -> "Lighting":
        clouds = []
        for _ in range(int(rng.integers(0, 3))):
            r = cam.width * float(rng.uniform(0.2, 0.6))
            clouds.append((float(rng.uniform(-r, cam.width + r)), float(rng.uniform(0, cam.height)),
                           float(rng.normal(0, cam.width / 150)), float(rng.normal(0, cam.height / 300)),
                           r, float(rng.uniform(0.1, 0.35))))
        step = int(rng.integers(1, max(n_frames, 2))) if rng.random() < 0.3 else None
        return Lighting(float(rng.uniform(0.65, 1.15)), float(rng.uniform(0.0, 0.15)),
                        float(rng.uniform(80, 600)), float(rng.uniform(0, 2 * math.pi)),
                        step, float(rng.uniform(0.75, 1.3)), clouds, float(rng.uniform(0.5, 3.5)))

    def gain(self, cam: Camera, frame: int) -> np.ndarray:
        g = self.base * (1 + self.amp * math.sin(2 * math.pi * frame / self.period + self.phase))
        if self.step_frame is not None and frame >= self.step_frame:
            g *= 1 + (self.step_gain - 1) * min(1.0, (frame - self.step_frame + 1) / 3)
        out = np.full((cam.height, cam.width), g, np.float32)
        if self.clouds:
            yy, xx = np.mgrid[0:cam.height, 0:cam.width].astype(np.float32)
            for u0, v0, du, dv, r, depth in self.clouds:
                cu, cv_ = u0 + du * frame, v0 + dv * frame
                out *= 1 - depth * np.exp(-((xx - cu) ** 2 + (yy - cv_) ** 2) / (r * r))
        return out
