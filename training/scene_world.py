"""The simulated world behind a synthetic scene: camera, pedestrians on a ground plane, scenarios.

Coordinates: the ground plane is (X lateral, Z depth) in metres; the camera looks along +Z from
height `cam_height`. A ground point projects to u = cx + f*X/Z, v = horizon + f*cam_height/Z, and
a standing person of height 1.7 m is f*1.7/Z pixels tall, so people shrink toward the horizon.
Everything random is drawn from one `np.random.Generator`, so a seed fixes the whole sequence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

PERSON_HEIGHT_M = 1.7
KINDS = ("calm", "crowd", "dispersal", "fall")
FALL_SECONDS = 0.6          # time from upright to lying
DISPERSAL_LABEL_SECONDS = 3.0   # incident label lasts while runners are in view, at most this long


@dataclass(frozen=True)
class Scenario:
    """What happens in a sequence. Times are fractions of the sequence length."""
    kind: str = "crowd"          # one of KINDS
    start_count: int = 2         # people in view at the first frame
    peak_count: int = 25         # people in view at the peak
    end_count: int = 5           # people in view at the end (before any dispersal)
    build_until: float = 0.4     # the crowd grows linearly until this fraction
    thin_from: float = 0.7       # and thins out linearly from this fraction to the end
    incident_at: float | None = None   # fraction where the dispersal / fall starts

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Scenario.kind must be one of {KINDS}, got {self.kind!r}")
        if min(self.start_count, self.peak_count, self.end_count) < 0:
            raise ValueError("Scenario counts must be >= 0")
        if not 0.0 <= self.build_until <= self.thin_from <= 1.0:
            raise ValueError("Scenario needs 0 <= build_until <= thin_from <= 1")
        if self.kind in ("dispersal", "fall") and self.incident_at is None:
            raise ValueError(f"Scenario kind {self.kind!r} needs incident_at")

    def target(self, frac: float) -> float:
        """The crowd size the simulation steers toward at this point of the sequence."""
        if frac < self.build_until:
            a = frac / max(self.build_until, 1e-9)
            return self.start_count + a * (self.peak_count - self.start_count)
        if frac < self.thin_from:
            return float(self.peak_count)
        a = (frac - self.thin_from) / max(1.0 - self.thin_from, 1e-9)
        return self.peak_count + a * (self.end_count - self.peak_count)


def random_scenario(kind: str, rng: np.random.Generator) -> Scenario:
    """A plausible scenario of the given kind (used for the training and held-out sets)."""
    if kind == "calm":
        n = int(rng.integers(0, 7))
        return Scenario("calm", n, n + int(rng.integers(0, 3)), int(rng.integers(0, 5)), 0.3, 0.7)
    peak = int(rng.integers(8, 42))
    start, end = int(rng.integers(0, 6)), int(rng.integers(0, peak // 2 + 1))
    build = float(rng.uniform(0.15, 0.5))
    thin = float(rng.uniform(build, 0.95))
    incident = None
    if kind == "dispersal":
        peak = max(peak, 10)
        incident = float(rng.uniform(max(build, 0.25), 0.8))
        thin = 1.0
    elif kind == "fall":
        incident = float(rng.uniform(0.2, 0.75))
    return Scenario(kind, start, peak, end, build, thin, incident)


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    focal: float                 # pixels
    horizon: float               # v of the horizon line, pixels
    cam_height: float            # metres above the ground
    z_far: float                 # people are kept nearer than this

    @property
    def z_near(self) -> float:   # depth that projects onto the bottom row
        return self.focal * self.cam_height / (self.height - self.horizon)

    def project(self, x: float, z: float) -> tuple[float, float, float]:
        """Ground point -> (u, v of the feet, standing height in pixels)."""
        return (self.width / 2 + self.focal * x / z, self.horizon + self.focal * self.cam_height / z,
                self.focal * PERSON_HEIGHT_M / z)

    def half_width_m(self, z: float) -> float:
        return z * (self.width / 2) / self.focal


def random_camera(width: int, height: int, rng: np.random.Generator) -> Camera:
    focal = width * float(rng.uniform(0.85, 1.25))
    horizon = height * float(rng.uniform(0.15, 0.38))
    cam = Camera(width, height, focal, horizon, float(rng.uniform(4.0, 8.0)), 0.0)
    # a plaza, not a boulevard to the horizon: the farthest person is at most ~3x smaller than
    # the nearest (a 32x32 input cannot see much smaller figures)
    return Camera(width, height, focal, horizon, cam.cam_height, cam.z_near * float(rng.uniform(2.2, 3.2)))


@dataclass
class Person:
    x: float                     # ground position, metres
    z: float
    vx: float = 0.0              # metres per second
    vz: float = 0.0
    phase: float = 0.0           # gait phase, radians
    top: tuple = (90, 60, 60)    # BGR clothing colours
    bottom: tuple = (50, 50, 60)
    skin: tuple = (120, 150, 190)
    dest: tuple | None = None    # where the person walks to; None = straight on
    leaving: bool = False
    running: bool = False
    fall_t: float | None = None  # seconds since the fall started; None = upright
    fall_dir: int = 1
    uid: int = 0

    @property
    def fall_angle(self) -> float:
        if self.fall_t is None:
            return 0.0
        a = min(self.fall_t / FALL_SECONDS, 1.0)
        return self.fall_dir * (math.pi / 2) * a * a     # accelerates like a topple

    @property
    def speed(self) -> float:
        return math.hypot(self.vx, self.vz)


@dataclass
class World:
    """The people in a scene, stepped frame by frame toward the scenario's crowd size."""
    cam: Camera
    scenario: Scenario
    n_frames: int
    fps: float
    rng: np.random.Generator
    people: list[Person] = field(default_factory=list)
    frame: int = 0
    incident_frame: int | None = None
    _next_uid: int = 0

    def __post_init__(self):
        if self.scenario.incident_at is not None:
            self.incident_frame = int(round(self.scenario.incident_at * (self.n_frames - 1)))
        for _ in range(self.scenario.start_count):
            self.people.append(self._new_person(inside=True))

    # --- people -------------------------------------------------------------------------------
    def _random_inside(self) -> tuple[float, float]:
        z = float(self.rng.uniform(self.cam.z_near * 1.05, self.cam.z_far))
        hw = self.cam.half_width_m(z) * 0.92
        return float(self.rng.uniform(-hw, hw)), z

    def _new_person(self, inside: bool) -> Person:
        r = self.rng
        if inside:
            x, z = self._random_inside()
        else:                     # enter from the left/right edge or from the far end
            z = float(r.uniform(self.cam.z_near * 1.1, self.cam.z_far))
            side = 1 if r.random() < 0.5 else -1
            x = side * (self.cam.half_width_m(z) + 1.0)
        speed = float(r.uniform(0.9, 1.6))
        p = Person(x, z, phase=float(r.uniform(0, 2 * math.pi)),
                   top=tuple(int(c) for c in r.integers(20, 235, 3)),
                   bottom=tuple(int(c) for c in r.integers(15, 140, 3)),
                   skin=tuple(int(c) for c in np.array([110, 140, 180]) * r.uniform(0.45, 1.1)),
                   uid=self._next_uid)
        self._next_uid += 1
        p.dest = self._random_inside()
        self._aim(p, speed)
        return p

    def _aim(self, p: Person, speed: float) -> None:
        dx, dz = p.dest[0] - p.x, p.dest[1] - p.z
        d = math.hypot(dx, dz) or 1.0
        p.vx, p.vz = speed * dx / d, speed * dz / d

    def is_visible(self, p: Person) -> bool:
        """The count label: the body's centre is inside the frame."""
        if p.z <= 0.5:
            return False
        u, v, h = self.cam.project(p.x, p.z)
        a = abs(p.fall_angle)
        cu = u + p.fall_dir * 0.5 * h * math.sin(a)
        cv = v - 0.5 * h * math.cos(a)
        return 0 <= cu < self.cam.width and 0 <= cv < self.cam.height

    def count(self) -> int:
        return sum(self.is_visible(p) for p in self.people)

    def incident(self) -> bool:
        if self.incident_frame is None or self.frame < self.incident_frame:
            return False
        if self.scenario.kind == "fall":
            return any(p.fall_t is not None and self.is_visible(p) for p in self.people)
        elapsed = (self.frame - self.incident_frame) / self.fps
        return elapsed < DISPERSAL_LABEL_SECONDS and any(
            p.running and self.is_visible(p) for p in self.people)

    # --- stepping -----------------------------------------------------------------------------
    def step(self) -> None:
        """Advance one frame: incidents, crowd-size steering, motion."""
        self.frame += 1
        dt = 1.0 / self.fps
        if self.frame == self.incident_frame:
            self._start_incident()
        dispersed = self.scenario.kind == "dispersal" and self.incident_frame is not None \
            and self.frame >= self.incident_frame
        if not dispersed:
            self._steer_count()
        keep = []
        for p in self.people:
            if p.fall_t is not None:
                p.fall_t += dt
                keep.append(p)
                continue
            p.x += p.vx * dt
            p.z += p.vz * dt
            stride = 1.6 if p.running else 0.75      # metres per half gait cycle
            p.phase += math.pi * p.speed * dt / stride
            if p.dest is not None and math.hypot(p.dest[0] - p.x, p.dest[1] - p.z) < 0.5:
                if p.leaving:                        # reached its exit, out of view
                    continue
                p.dest = self._random_inside()       # linger in the plaza: pick a new goal
                self._aim(p, float(self.rng.uniform(0.9, 1.6)))
            if self._gone(p):
                continue
            keep.append(p)
        self.people = keep

    def _gone(self, p: Person) -> bool:
        if p.z < self.cam.z_near * 0.6 or p.z > self.cam.z_far * 1.6:
            return True
        return abs(p.x) > self.cam.half_width_m(p.z) + 3.0

    def _steer_count(self) -> None:
        frac = self.frame / max(self.n_frames - 1, 1)
        target = self.scenario.target(frac)
        active = [p for p in self.people if not p.leaving]
        deficit = target - len(active)
        if deficit > 0.5 and self.rng.random() < min(1.0, 0.25 * deficit):
            self.people.append(self._new_person(inside=False))
        elif deficit < -0.5 and self.rng.random() < min(1.0, 0.25 * -deficit):
            walkers = [p for p in active if p.fall_t is None]
            if walkers:
                p = walkers[int(self.rng.integers(len(walkers)))]
                p.leaving = True
                p.dest = self._nearest_exit(p)
                self._aim(p, float(self.rng.uniform(1.3, 1.8)))

    def _nearest_exit(self, p: Person) -> tuple[float, float]:
        """A point just out of view past the nearest edge: left, right or bottom (toward us); not
        the far end, where a walker would stay in view for many seconds while shrinking."""
        hw = self.cam.half_width_m(p.z)
        options = [(hw - p.x, (hw + 3.0, p.z)), (hw + p.x, (-hw - 3.0, p.z)),
                   (p.z - self.cam.z_near, (p.x, self.cam.z_near * 0.7))]
        return min(options, key=lambda o: o[0])[1]

    def _start_incident(self) -> None:
        if self.scenario.kind == "dispersal":
            visible = [p for p in self.people if self.is_visible(p)]
            if visible:      # run away from the centre of the crowd
                cx = float(np.mean([p.x for p in visible])) + float(self.rng.normal(0, 1))
                cz = float(np.mean([p.z for p in visible])) + float(self.rng.normal(0, 1))
            else:
                cx, cz = self._random_inside()
            for p in self.people:
                dx, dz = p.x - cx, p.z - cz
                d = math.hypot(dx, dz)
                if d < 1e-3:
                    dx, dz, d = 1.0, 0.0, 1.0
                speed = float(self.rng.uniform(3.5, 6.0))
                p.running, p.leaving, p.dest = True, True, None
                p.vx, p.vz = speed * dx / d, speed * dz / d
        elif self.scenario.kind == "fall":
            # someone in the nearer part of the view, so the fall is big enough to see
            candidates = [p for p in self.people if self.is_visible(p) and
                          p.z < self.cam.z_near + 0.5 * (self.cam.z_far - self.cam.z_near)]
            if not candidates:
                p = self._new_person(inside=True)
                p.z = float(self.rng.uniform(1.1, 1.6)) * self.cam.z_near
                p.x = float(self.rng.uniform(-0.7, 0.7)) * self.cam.half_width_m(p.z)
                self.people.append(p)
                candidates = [p]
            p = candidates[int(self.rng.integers(len(candidates)))]
            p.fall_t, p.vx, p.vz = 0.0, 0.0, 0.0
            p.fall_dir = 1 if self.rng.random() < 0.5 else -1
