"""The synthetic scene generator: seeded, labels match what is drawn, incidents are labelled."""
from __future__ import annotations

import numpy as np
import pytest

from training.features import sequence_inputs
from training.scene_world import Person, Scenario
from training.scenes import SceneRenderer, demo_scenario, render_sequence


def test_same_seed_same_frames_and_labels():
    a_frames, a_labels = render_sequence(11, 15, 96, 72, "dispersal")
    b_frames, b_labels = render_sequence(11, 15, 96, 72, "dispersal")
    assert a_labels == b_labels
    assert all(np.array_equal(a, b) for a, b in zip(a_frames, b_frames))
    c_frames, _ = render_sequence(12, 15, 96, 72, "dispersal")
    assert not np.array_equal(a_frames[0], c_frames[0])
    f = a_frames[0]
    assert f.dtype == np.uint8 and f.shape == (72, 96, 3)
    assert set(a_labels[0]) == {"count", "incident"}


def _placed(r: SceneRenderer, spots: list[tuple[float, float]]) -> list[Person]:
    """People at known ground positions, given as (fraction across the view, fraction of depth)."""
    cam, people = r.cam, []
    for fx, fz in spots:
        z = cam.z_near + fz * (cam.z_far - cam.z_near)
        people.append(Person(x=fx * cam.half_width_m(z), z=z, uid=len(people)))
    return people


def test_count_label_matches_people_placed_in_and_out_of_view():
    r = SceneRenderer(5, 10, 160, 120, Scenario("calm", 0, 0, 0))
    inside = [(-0.6, 0.1), (0.0, 0.3), (0.5, 0.6), (0.2, 0.9)]
    outside = [(1.6, 0.2), (-1.8, 0.5)]              # beyond the left/right edges
    r.world.people = _placed(r, inside + outside)
    assert r.label() == {"count": len(inside), "incident": False}
    empty = r.render(people=[], noise=False).astype(int)
    full = r.render(noise=False).astype(int)
    changed = np.abs(full - empty).sum(axis=2) > 0
    boxes = r.visible_boxes()
    assert len(boxes) == len(inside)
    covered = np.zeros_like(changed)
    for x0, y0, x1, y1 in boxes:
        ys, xs = slice(max(0, int(y0)), int(np.ceil(y1)) + 1), slice(max(0, int(x0)), int(np.ceil(x1)) + 1)
        assert changed[ys, xs].sum() >= 4, "a counted person left no pixels"
        covered[ys, xs] = True
    assert not (changed & ~covered).any(), "pixels changed outside every counted person"


def test_nearer_people_are_drawn_bigger():
    r = SceneRenderer(6, 10, 160, 120, Scenario("calm", 0, 0, 0))
    empty = r.render(people=[], noise=False).astype(int)
    sizes = []
    for fz in (0.05, 0.5, 0.95):
        full = r.render(people=_placed(r, [(0.0, fz)]), noise=False).astype(int)
        sizes.append(int((np.abs(full - empty).sum(axis=2) > 0).sum()))
    assert sizes[0] > sizes[1] > sizes[2] > 0


def test_walkers_move_and_swing_their_legs():
    frames, _ = render_sequence(7, 3, 160, 120, Scenario("crowd", 10, 10, 10))
    x = sequence_inputs(frames)
    assert x.shape == (3, 2, 32, 32) and x.dtype == np.float32
    assert not x[0, 1].any(), "the first frame has no previous frame: zero motion"
    assert x[1, 1].max() > 0.02 and x[1, 1].max() > 5 * np.median(x[1, 1])
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_crowd_builds_up_then_thins_out():
    sc = Scenario("crowd", start_count=1, peak_count=30, end_count=2, build_until=0.2, thin_from=0.3)
    _, labels = render_sequence(3, 300, 160, 120, sc)
    counts = np.array([lab["count"] for lab in labels])
    assert counts[:5].max() <= 6
    assert counts.max() >= 20
    assert counts[-5:].max() <= counts.max() / 2
    assert not any(lab["incident"] for lab in labels)


def test_dispersal_is_labelled_from_its_start_and_people_run_off():
    sc = demo_scenario("dispersal", peak_count=20)
    n = 80
    frames, labels = render_sequence(4, n, 160, 120, sc)
    start = int(round(sc.incident_at * (n - 1)))
    inc = [lab["incident"] for lab in labels]
    assert not any(inc[:start]) and inc[start]
    assert labels[-1]["count"] < labels[start]["count"] / 2
    x = sequence_inputs(frames)
    strong = (x[:, 1] > 0.03).sum(axis=(1, 2))      # cells that changed well above sensor noise
    assert strong[start + 1:start + 4].mean() > 2 * strong[start - 6:start - 1].mean(), \
        "running shows as more motion"


def test_fall_is_labelled_and_the_person_ends_up_lying():
    sc = Scenario("fall", 5, 8, 8, incident_at=0.3)
    r = SceneRenderer(9, 60, 160, 120, sc)
    labels = [r.next_frame()[1] for _ in range(60)]
    start = int(round(0.3 * 59))
    assert not any(lab["incident"] for lab in labels[:start])
    assert all(lab["incident"] for lab in labels[start:])
    fallen = [p for p in r.world.people if p.fall_t is not None]
    assert len(fallen) == 1
    from training.scene_draw import person_pixels
    g = person_pixels(r.cam, fallen[0])
    xs = [q[0] for q in g["torso"]]
    ys = [q[1] for q in g["torso"]]
    assert max(xs) - min(xs) > max(ys) - min(ys), "a fallen torso lies horizontally"


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="scenario"):
        render_sequence(1, 5, 64, 48, "riot")
    with pytest.raises(ValueError, match="incident_at"):
        Scenario("fall", 1, 2, 3)
    with pytest.raises(ValueError, match="16x16"):
        render_sequence(1, 5, 8, 8, "calm")
    with pytest.raises(ValueError, match="demo incident"):
        demo_scenario("fire")
