"""The alert rules engine: one camera's state + one reading -> new state + alert events.

Pure and deterministic (the clock is the inference's capture time, ids come from an injectable
factory), so the unit tests drive it directly and a restart continues from the persisted state
instead of re-raising.

Crowd:    level >= threshold for `consecutive` inferences in a row -> raised; while active, a change
          of the coarse level label (at or above threshold) -> updated; level < threshold - hysteresis
          -> cleared; in between, the alert simply stays active.
Incident: score >= probability for `consecutive` in a row -> raised, unless within `cooldown` of
          the previous raise; score < probability for `clear_consecutive` in a row -> cleared.

Every event of one alert carries its number `event_no` (1 = raised, then 2, 3, ... for each
update, the clear last), counted in the persisted camera state, so a consumer that keeps per
alert id only the highest-numbered event it has seen has the true current level whatever the
broker duplicates (at-least-once) or reorders.
"""
from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from backend_decryptor.readings import Reading
from backend_decryptor.rules_config import CameraRuleSet


@dataclass(frozen=True)
class CameraState:
    crowd_streak: int = 0
    crowd_alert: str | None = None
    crowd_raised_at: float | None = None
    crowd_level: str | None = None       # coarse label last seen (published)
    incident_streak: int = 0
    incident_clear_streak: int = 0
    incident_alert: str | None = None
    incident_raised_at: float | None = None
    incident_cooldown_until: float = float("-inf")
    updated_at: float | None = None      # capture time of the last reading
    crowd_events: int = 0                # events of the active crowd alert so far (its last event_no)
    incident_events: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["incident_cooldown_until"] == float("-inf"):
            d["incident_cooldown_until"] = None
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "CameraState":
        if not d:
            return cls()
        d = dict(d)
        if d.get("incident_cooldown_until") is None:
            d["incident_cooldown_until"] = float("-inf")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class AlertEvent:
    """One step of an alert's lifecycle; everything here may leave the backend."""
    id: str
    camera: str
    zone: str | None
    type: str          # crowd | incident
    event: str         # raised | updated | cleared
    level: str         # coarse label (crowd) or "incident"
    time: float        # capture time of the inference that caused the event
    raised_at: float
    meta: dict = field(default_factory=dict)  # event_no, and non-decrypted context: gateway, model id, sequence


# Kept in the history, never published: the sequence number tells an observer exactly which
# inference (which probe of a gateway using the backend as a decryption oracle) caused an event.
UNPUBLISHED_META = frozenset({"sequence"})


def new_alert_id() -> str:
    return uuid.uuid4().hex


def _crowd(rules: CameraRuleSet, s: CameraState, r: Reading, t: float, new_id) -> tuple[CameraState, list]:
    rule = rules.crowd
    if not rule.enabled or r.crowd_level is None:
        return s, []
    level = r.crowd_level
    label = rule.coarse_level(level, list(r.crowd_labels) if r.crowd_labels else None)
    events = []
    streak = s.crowd_streak + 1 if level >= rule.threshold else 0
    alert, raised_at = s.crowd_alert, s.crowd_raised_at
    # A state persisted before event numbers existed: its active alert has had at least its raise.
    number = max(s.crowd_events, 1) if alert is not None else 0

    def ev(kind: str) -> AlertEvent:
        return AlertEvent(alert, rules.camera, rules.zone, "crowd", kind, label, t, raised_at,
                          {"event_no": number})

    if alert is None and streak >= rule.consecutive:
        alert, raised_at, number = new_id(), t, 1
        events.append(ev("raised"))
    elif alert is not None and level < rule.threshold - rule.hysteresis:
        number += 1
        events.append(ev("cleared"))
        alert, raised_at, number = None, None, 0
    elif alert is not None and level >= rule.threshold and label != s.crowd_level:
        number += 1
        events.append(ev("updated"))
    return replace(s, crowd_streak=streak, crowd_alert=alert, crowd_raised_at=raised_at, crowd_level=label,
                   crowd_events=number), events


def _incident(rules: CameraRuleSet, s: CameraState, r: Reading, t: float, new_id) -> tuple[CameraState, list]:
    rule = rules.incident
    if not rule.enabled or r.incident_score is None:
        return s, []
    hit = r.incident_score >= rule.probability
    streak = s.incident_streak + 1 if hit else 0
    clear_streak = 0 if hit else s.incident_clear_streak + 1
    alert, raised_at, cooldown_until = s.incident_alert, s.incident_raised_at, s.incident_cooldown_until
    number = max(s.incident_events, 1) if alert is not None else 0
    events = []
    if alert is None and streak >= rule.consecutive and t >= cooldown_until:
        alert, raised_at, cooldown_until, number = new_id(), t, t + rule.cooldown, 1
        events.append(AlertEvent(alert, rules.camera, rules.zone, "incident", "raised", "incident", t, raised_at,
                                 {"event_no": number}))
    elif alert is not None and clear_streak >= rule.clear_consecutive:
        events.append(AlertEvent(alert, rules.camera, rules.zone, "incident", "cleared", "clear", t, raised_at,
                                 {"event_no": number + 1}))
        alert, raised_at, number = None, None, 0
    return replace(s, incident_streak=streak, incident_clear_streak=clear_streak, incident_alert=alert,
                   incident_raised_at=raised_at, incident_cooldown_until=cooldown_until,
                   incident_events=number), events


def step(rules: CameraRuleSet, state: CameraState, reading: Reading, t: float,
         new_id: Callable[[], str] = new_alert_id) -> tuple[CameraState, list[AlertEvent]]:
    """Apply one inference (captured at `t`) to a camera's state."""
    state, crowd_events = _crowd(rules, state, reading, t, new_id)
    state, incident_events = _incident(rules, state, reading, t, new_id)
    return replace(state, updated_at=t), crowd_events + incident_events


def public_state(camera: str, zone: str | None, state: CameraState) -> dict:
    """The retained per-camera state: coarse labels and alert ids only, never decoded values
    (publish.Publisher adds the `dropped` summary)."""
    return {
        "camera": camera,
        "zone": zone,
        "time": state.updated_at,
        "crowd": {"level": state.crowd_level, "alert": state.crowd_alert},
        "incident": {"active": state.incident_alert is not None, "alert": state.incident_alert},
    }


def alert_json(ev: AlertEvent, public: bool = True) -> dict:
    """The published alert message (docs/backend.md "Alert JSON"); `public=False` adds what only the
    history keeps (the operator's `backend-decryptor alerts --json`)."""
    meta = {k: v for k, v in ev.meta.items() if not public or k not in UNPUBLISHED_META}
    return {"id": ev.id, "camera": ev.camera, "zone": ev.zone, "type": ev.type, "event": ev.event,
            "level": ev.level, "time": ev.time, "raised_at": ev.raised_at, **meta}
