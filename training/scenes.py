"""Seeded synthetic street scenes with per-frame labels (numpy + OpenCV only).

    frames, labels = render_sequence(seed=3, n_frames=100, width=160, height=120, scenario="fall")
    # frames: list of HxWx3 uint8 BGR (OpenCV order); labels: [{"count": int, "incident": bool}, ...]

The same seed always gives the same frames and labels. Scenario kinds: "calm", "crowd" (builds
up and thins out), "dispersal" (a crowd builds up, then everyone runs apart), "fall" (a person
falls and stays down); or pass a `Scenario`. `demo_scenario()` is what the demo camera shows.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from training.scene_draw import Lighting, draw_person, draw_shadow, draw_prop, make_background, person_pixels
from training.scene_world import KINDS, Person, Scenario, World, random_camera, random_scenario

DEFAULT_FPS = 10.0

__all__ = ["DEFAULT_FPS", "KINDS", "Scenario", "SceneRenderer", "demo_scenario", "render_sequence",
           "iter_sequence"]


def demo_scenario(incident: str = "dispersal", peak_count: int = 40) -> Scenario:
    """A crowd builds up from a few people, holds, then an incident happens at 65% of the run."""
    if incident not in ("dispersal", "fall"):
        raise ValueError(f"demo incident must be 'dispersal' or 'fall', got {incident!r}")
    return Scenario(kind=incident, start_count=2, peak_count=peak_count, end_count=peak_count,
                    build_until=0.4, thin_from=1.0, incident_at=0.65)


class SceneRenderer:
    """One sequence, rendered frame by frame (`next_frame`), e.g. for a live demo camera."""

    def __init__(self, seed: int, n_frames: int, width: int, height: int,
                 scenario: str | Scenario = "crowd", fps: float = DEFAULT_FPS):
        if n_frames < 1 or width < 16 or height < 16:
            raise ValueError(f"need n_frames >= 1 and a frame of at least 16x16, got "
                             f"n_frames={n_frames} size={width}x{height}")
        rng = np.random.default_rng([int(seed), 0])
        if isinstance(scenario, str):
            if scenario not in KINDS:
                raise ValueError(f"scenario must be one of {KINDS} or a Scenario, got {scenario!r}")
            scenario = random_scenario(scenario, rng)
        self.scenario = scenario
        self.fps = float(fps)
        self.cam = random_camera(width, height, rng)
        self.background, self.props = make_background(self.cam, rng)
        self.lighting = Lighting.random(self.cam, n_frames, rng)
        self.world = World(self.cam, scenario, n_frames, self.fps, rng)
        self._noise_rng = np.random.default_rng([int(seed), 1])
        self.n_frames = n_frames
        self._rendered = 0

    def render(self, people: list[Person] | None = None, noise: bool = True) -> np.ndarray:
        """The current world state as an image (optionally with other people, or without noise)."""
        people = self.world.people if people is None else people
        img = self.background.copy()
        shade = np.ones(img.shape[:2], np.float32)
        geometry = {i: person_pixels(self.cam, p) for i, p in enumerate(people) if p.z > 0.5}
        for g in geometry.values():            # shadows lie on the ground, under everyone
            draw_shadow(shade, g)
        img *= shade[:, :, None]
        items = [(p.z, 0, i) for i, p in enumerate(self.props)] + \
                [(p.z, 1, i) for i, p in enumerate(people) if p.z > 0.5]
        for _, is_person, i in sorted(items, key=lambda t: (-t[0], t[1], t[2])):
            if is_person:
                draw_person(img, people[i], geometry[i])
            else:
                draw_prop(img, self.cam, self.props[i])
        img *= self.lighting.gain(self.cam, self.world.frame)[:, :, None]
        if noise:
            img += self._noise_rng.normal(0, self.lighting.noise_sigma, img.shape).astype(np.float32)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    def label(self) -> dict:
        return {"count": int(self.world.count()), "incident": bool(self.world.incident())}

    def visible_boxes(self) -> list[tuple[float, float, float, float]]:
        """Pixel boxes (figure + shadow) of the people the count label counts."""
        return [person_pixels(self.cam, p)["bbox"] for p in self.world.people if self.world.is_visible(p)]

    def advance(self) -> dict:
        """Move to the next frame without drawing it (cheap); returns its label."""
        if self._rendered >= self.n_frames:
            raise StopIteration("sequence finished")
        if self._rendered > 0:
            self.world.step()
        self._rendered += 1
        return self.label()

    def next_frame(self) -> tuple[np.ndarray, dict]:
        label = self.advance()
        return self.render(), label


def iter_sequence(seed: int, n_frames: int, width: int, height: int,
                  scenario: str | Scenario = "crowd", fps: float = DEFAULT_FPS) -> Iterator[tuple[np.ndarray, dict]]:
    r = SceneRenderer(seed, n_frames, width, height, scenario, fps)
    for _ in range(n_frames):
        yield r.next_frame()


def render_sequence(seed: int, n_frames: int, width: int, height: int,
                    scenario: str | Scenario = "crowd", fps: float = DEFAULT_FPS
                    ) -> tuple[list[np.ndarray], list[dict]]:
    frames, labels = [], []
    for f, lab in iter_sequence(seed, n_frames, width, height, scenario, fps):
        frames.append(f)
        labels.append(lab)
    return frames, labels
