"""Rules engine, rule overrides, model-card decoding and config error messages (no broker needed)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from backend_decryptor import alerts
from backend_decryptor.config import load_config
from backend_decryptor.readings import OutputError, Reading, read_outputs
from protected_nn.model_card import CardError, parse_card
from backend_decryptor.rules_config import AlertRules, load_rules
from backend_decryptor.yaml_config import ConfigError


def ids():
    counter = itertools.count(1)
    return lambda: f"a{next(counter)}"


def run(rules: AlertRules, camera: str, readings, start=1000.0, dt=1.0):
    """Feed readings (crowd level, incident score) at 1 s steps; return all events and final state."""
    rs = rules.for_camera(camera)
    state, events, new_id = alerts.CameraState(), [], ids()
    for i, (level, score) in enumerate(readings):
        state, evs = alerts.step(rs, state, Reading(level, None, score), start + i * dt, new_id)
        events += evs
    return events, state


def kinds(events):
    return [(e.type, e.event) for e in events]


BASE = AlertRules.model_validate({
    "crowd": {"threshold": 10, "hysteresis": 3, "consecutive": 3, "levels": {"low": 0, "high": 10, "packed": 20}},
    "incident": {"probability": 0.8, "consecutive": 2, "clear_consecutive": 2, "cooldown": 60}})


def test_crowd_raises_only_after_k_consecutive():
    events, state = run(BASE, "c", [(12, None), (12, None), (5, None), (12, None), (12, None)])
    assert events == [] and state.crowd_streak == 2 and state.crowd_alert is None
    events, state = run(BASE, "c", [(12, None), (11, None), (10, None)])
    assert kinds(events) == [("crowd", "raised")] and events[0].level == "high" and state.crowd_alert == "a1"


def test_crowd_hysteresis_holds_then_clears_below_threshold_minus_hysteresis():
    readings = [(12, None)] * 3 + [(9, None), (7.5, None), (7, None), (6.9, None)]
    events, state = run(BASE, "c", readings)
    assert kinds(events) == [("crowd", "raised"), ("crowd", "cleared")]
    assert events[1].time == 1006.0 and events[1].id == events[0].id == "a1"
    assert events[1].level == "low" and state.crowd_alert is None


def test_crowd_level_change_while_active_is_an_update_and_re_raise_gets_new_id():
    readings = [(12, None)] * 3 + [(25, None), (25, None), (1, None)] + [(15, None)] * 3
    events, _ = run(BASE, "c", readings)
    assert kinds(events) == [("crowd", "raised"), ("crowd", "updated"), ("crowd", "cleared"), ("crowd", "raised")]
    assert events[1].level == "packed" and events[1].id == "a1" and events[3].id == "a2"


def test_incident_raise_clear_and_cooldown():
    hi, lo = (None, 0.9), (None, 0.1)
    # raise at t=1001, clear after two lows, new burst inside the 60 s cooldown: no raise
    events, state = run(BASE, "c", [hi, hi, lo, lo, hi, hi, hi])
    assert kinds(events) == [("incident", "raised"), ("incident", "cleared")]
    assert state.incident_cooldown_until == 1001.0 + 60
    # same pattern with readings 40 s apart: the second burst is past the cooldown
    events, _ = run(BASE, "c", [hi, hi, lo, lo, hi, hi], dt=40.0)
    assert kinds(events) == [("incident", "raised"), ("incident", "cleared"), ("incident", "raised")]
    assert events[0].id != events[2].id


def test_incident_single_low_does_not_clear_when_clear_consecutive_is_2():
    events, state = run(BASE, "c", [(None, .9), (None, .9), (None, .1), (None, .9), (None, .1)])
    assert kinds(events) == [("incident", "raised")] and state.incident_alert is not None


def test_state_round_trips_through_json_dict():
    _, state = run(BASE, "c", [(12, .9)] * 3)
    again = alerts.CameraState.from_dict(alerts.CameraState.to_dict(state))
    assert again == state
    assert alerts.CameraState.from_dict(None) == alerts.CameraState()


def test_public_state_carries_labels_not_values():
    _, state = run(BASE, "c", [(17.25, .93)] * 3)
    pub = alerts.public_state("c", None, state)
    assert pub["crowd"]["level"] == "high" and pub["incident"]["active"] is True
    assert "17.25" not in repr(pub) and "0.93" not in repr(pub)


def test_zone_and_camera_overrides_layer_in_order():
    rules = AlertRules.model_validate({
        "crowd": {"threshold": 10, "consecutive": 3},
        "zones": {"platform": {"cameras": ["p1", "p2"], "crowd": {"threshold": 5, "consecutive": 1}}},
        "cameras": {"p2": {"crowd": {"threshold": 8}}, "solo": {"incident": {"probability": 0.5}}}})
    assert rules.for_camera("x").crowd.threshold == 10 and rules.for_camera("x").zone is None
    p1, p2 = rules.for_camera("p1"), rules.for_camera("p2")
    assert (p1.zone, p1.crowd.threshold, p1.crowd.consecutive) == ("platform", 5, 1)
    assert (p2.zone, p2.crowd.threshold, p2.crowd.consecutive) == ("platform", 8, 1)
    assert rules.for_camera("solo").incident.probability == 0.5
    assert kinds(run(rules, "p1", [(6, None)])[0]) == [("crowd", "raised")]
    assert run(rules, "p2", [(6, None)])[0] == []
    assert run(rules, "x", [(6, None)] * 5)[0] == []


def test_rules_reject_inconsistent_zones():
    with pytest.raises(ValueError, match="listed in zones"):
        AlertRules.model_validate({"zones": {"a": {"cameras": ["c"]}, "b": {"cameras": ["c"]}}})
    with pytest.raises(ValueError, match="unknown zone"):
        AlertRules.model_validate({"cameras": {"c": {"zone": "nowhere"}}})


def test_model_card_decoding_kinds():
    card = parse_card("m", {"outputs": [
        {"name": "crowd_count", "index": 0, "kind": "count", "scale": 2.0},
        {"name": "incident", "index": 1, "kind": "logit"},
        {"name": "density", "index": 2, "kind": "class_scores", "size": 3},
        {"name": "p", "index": 5, "kind": "probability"}], "labels": {"density": ["sparse", "busy", "packed"]},
        "input": {"shape": [1, 1, 8, 8]}})
    out = np.array([[3.0, 0.0, 0.1, 0.9, 0.2, 1.7]])
    r = read_outputs(card, out, "crowd_count", "incident")
    assert r.crowd_level == 6.0 and r.incident_score == pytest.approx(0.5)
    r = read_outputs(card, out, "density", "p")
    assert r.crowd_level == 1.0 and r.crowd_labels == ("sparse", "busy", "packed") and r.incident_score == 1.0
    assert BASE.crowd.model_copy(update={"levels": {}}).coarse_level(1.0, list(r.crowd_labels)) == "busy"
    assert read_outputs(card, out, "absent", None) == Reading()
    with pytest.raises(OutputError, match="needs 6 values"):
        read_outputs(card, np.zeros(4), None, "p")
    with pytest.raises(OutputError, match="not finite"):
        read_outputs(card, np.array([np.nan] * 6), "crowd_count", None)
    with pytest.raises(CardError, match="outputs"):
        parse_card("m", {"labels": {}}, need_outputs=True)
    with pytest.raises(CardError, match="kind"):
        parse_card("m", {"outputs": [{"name": "x", "index": 0, "kind": "mystery"}]})


def test_config_errors_name_file_line_and_field(tmp_path):
    cfg = tmp_path / "backend.yaml"
    cfg.write_text("store: s\nmqtt:\n  host: h\n  port: 99999\n  clientid: x\ndecrypt:\n  workers: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    assert f"{cfg}:4: mqtt.port:" in text
    assert f"{cfg}:5: mqtt.clientid: unknown setting" in text
    assert f"{cfg}:7: decrypt.workers:" in text
    cfg.write_text("mqtt: [unclosed\n")
    with pytest.raises(ConfigError, match=r"backend.yaml:2: YAML syntax error"):
        load_config(cfg)


def test_shipped_example_configs_are_valid():
    cfg = load_config("configs/backend.yaml")
    rules = load_rules(cfg.alerts.rules_file)
    assert cfg.checks.allowed_gateways and rules.for_camera("cam-concourse").zone == "platform"
    assert rules.for_camera("cam-platform-1").crowd.threshold == 12
    assert rules.for_camera("cam-concourse").incident.cooldown == 600


def test_rules_file_errors_name_line(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("crowd:\n  threshold: 5\nincident:\n  cooldown: forever\n")
    with pytest.raises(ConfigError, match=r"rules.yaml:4: incident.cooldown:"):
        load_rules(path)
