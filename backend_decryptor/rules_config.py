"""Alert rules (configs/alert-rules.yaml): defaults, then per-zone, then per-camera overrides.

    crowd:    {output: crowd_count, threshold: 20, hysteresis: 5, consecutive: 3, levels: {...}}
    incident: {output: incident, probability: 0.8, consecutive: 2, cooldown: 5m}
    zones:    {platform: {cameras: [cam-1], crowd: {threshold: 40}}}
    cameras:  {cam-2: {zone: concourse, incident: {probability: 0.9}}}

A camera's effective rule = default, updated by its zone's override, updated by its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, ValidationError, model_validator

from protected_nn.config_words import SettingError
from service_common.settings import Seconds, StrictModel as Strict
from service_common.yaml_loader import load_yaml_model


class CrowdRule(Strict):
    enabled: bool = Field(True, description="evaluate the crowd rule at all")
    output: str = Field("crowd_count", description="model-card output holding the crowd level (count or density class)")
    threshold: float = Field(20.0, description="level at or above which the crowd counts as too high")
    hysteresis: float = Field(2.0, ge=0, description="an active alert clears only below threshold - hysteresis")
    consecutive: int = Field(3, ge=1, le=1000, description="inferences in a row at or above threshold to raise")
    levels: dict[str, float] = Field(
        default_factory=dict,
        description="coarse level published in state and alerts: label -> lowest level it covers; "
                    "empty = the model card's class labels, or normal/high around the threshold")

    @model_validator(mode="after")
    def _sane(self):
        # An alert clears below threshold - hysteresis: at or below zero a crowd level (a count or
        # a class number) never gets there. (A negative threshold is some other scale: not judged.)
        if self.threshold >= 0 and self.hysteresis > 0 and self.hysteresis >= self.threshold:
            raise SettingError(("hysteresis",), f"hysteresis {self.hysteresis:g} is not below threshold "
                               f"{self.threshold:g}: the alert would never clear (it clears below threshold - "
                               "hysteresis)")
        labels = list(self.levels)
        for lower, upper in zip(labels, labels[1:]):
            if self.levels[upper] <= self.levels[lower]:
                raise SettingError(("levels", upper), f"levels must rise in the order given: {upper} "
                                   f"({self.levels[upper]:g}) is not above {lower} ({self.levels[lower]:g})")
        return self

    def coarse_level(self, level: float, class_labels: list[str] | None = None) -> str:
        """The label that may leave the backend, never the level itself."""
        if self.levels:
            chosen = min(self.levels, key=self.levels.get)
            for label, bound in sorted(self.levels.items(), key=lambda kv: kv[1]):
                if level >= bound:
                    chosen = label
            return chosen
        if class_labels and 0 <= int(level) < len(class_labels):
            return class_labels[int(level)]
        return "high" if level >= self.threshold else "normal"


class IncidentRule(Strict):
    enabled: bool = Field(True, description="evaluate the incident rule at all")
    output: str = Field("incident", description="model-card output holding the incident score (logit or probability)")
    probability: float = Field(0.8, gt=0, le=1, description="score at or above which an inference counts as an incident")
    consecutive: int = Field(2, ge=1, le=1000, description="inferences in a row at or above probability to raise")
    clear_consecutive: int = Field(1, ge=1, le=1000, description="inferences in a row below probability to clear")
    cooldown: Seconds = Field(300.0, ge=0, description="after a raise, no new incident alert for this long (capture time)")


class CrowdOverride(Strict):
    enabled: bool | None = Field(None, description="override of crowd.enabled")
    threshold: float | None = Field(None, description="override of crowd.threshold")
    hysteresis: float | None = Field(None, ge=0, description="override of crowd.hysteresis")
    consecutive: int | None = Field(None, ge=1, le=1000, description="override of crowd.consecutive")
    levels: dict[str, float] | None = Field(None, description="override of crowd.levels")


class IncidentOverride(Strict):
    enabled: bool | None = Field(None, description="override of incident.enabled")
    probability: float | None = Field(None, gt=0, le=1, description="override of incident.probability")
    consecutive: int | None = Field(None, ge=1, le=1000, description="override of incident.consecutive")
    clear_consecutive: int | None = Field(None, ge=1, le=1000, description="override of incident.clear_consecutive")
    cooldown: Seconds | None = Field(None, ge=0, description="override of incident.cooldown")


class ZoneRules(Strict):
    cameras: list[str] = Field(default_factory=list, description="cameras in this zone")
    crowd: CrowdOverride | None = Field(None, description="crowd rule changes for the zone's cameras")
    incident: IncidentOverride | None = Field(None, description="incident rule changes for the zone's cameras")


class CameraRules(Strict):
    zone: str | None = Field(None, description="zone of this camera (alternative to listing it under zones)")
    crowd: CrowdOverride | None = Field(None, description="crowd rule changes for this camera")
    incident: IncidentOverride | None = Field(None, description="incident rule changes for this camera")


@dataclass(frozen=True)
class CameraRuleSet:
    camera: str
    zone: str | None
    crowd: CrowdRule
    incident: IncidentRule


class AlertRules(Strict):
    crowd: CrowdRule = Field(default_factory=CrowdRule, description="default crowd rule")
    incident: IncidentRule = Field(default_factory=IncidentRule, description="default incident rule")
    zones: dict[str, ZoneRules] = Field(default_factory=dict, description="per-zone overrides")
    cameras: dict[str, CameraRules] = Field(default_factory=dict, description="per-camera overrides")

    @model_validator(mode="after")
    def _zones_consistent(self):
        owner: dict[str, str] = {}
        for zone, spec in self.zones.items():
            for cam in spec.cameras:
                if cam in owner and owner[cam] != zone:
                    raise ValueError(f"camera {cam} is listed in zones {owner[cam]} and {zone}")
                owner[cam] = zone
        for cam, spec in self.cameras.items():
            if spec.zone is not None:
                if spec.zone not in self.zones:
                    raise ValueError(f"cameras.{cam}.zone: unknown zone {spec.zone!r}")
                if cam in owner and owner[cam] != spec.zone:
                    raise ValueError(f"camera {cam} is in zone {owner[cam]} but cameras.{cam}.zone says {spec.zone}")
        # Validate every effective combination now, not on the first message from that camera,
        # blaming the override that makes it invalid: zones first (defaults + zone), then cameras.
        for name in self.zones:
            self._check_layer(("zones", name), self.crowd, self.incident, [self.zones[name]])
        for cam in sorted(set(owner) | set(self.cameras)):
            zone = self.zone_of(cam)
            if cam in self.cameras:
                self._check_layer(("cameras", cam), self.crowd, self.incident,
                                  ([self.zones[zone]] if zone else []) + [self.cameras[cam]])
        return self

    @staticmethod
    def _check_layer(where: tuple, crowd: "CrowdRule", incident: "IncidentRule", layers: list) -> None:
        for kind, rule in (("crowd", crowd), ("incident", incident)):
            try:
                _merged(rule, [getattr(layer, kind) for layer in layers])
            except ValidationError as exc:
                err = exc.errors()[0]
                inner = tuple(err["loc"]) + tuple(getattr((err.get("ctx") or {}).get("error"), "loc", ()))
                raise SettingError(where + (kind,) + inner, err["msg"].removeprefix("Value error, ")) from None

    def zone_of(self, camera: str) -> str | None:
        spec = self.cameras.get(camera)
        if spec and spec.zone:
            return spec.zone
        return next((z for z, s in self.zones.items() if camera in s.cameras), None)

    def for_camera(self, camera: str) -> CameraRuleSet:
        zone = self.zone_of(camera)
        crowd, incident = self.crowd, self.incident
        layers = [self.zones[zone]] if zone else []
        if camera in self.cameras:
            layers.append(self.cameras[camera])
        return CameraRuleSet(camera, zone, _merged(crowd, [layer.crowd for layer in layers]),
                             _merged(incident, [layer.incident for layer in layers]))


def _merged(rule, overrides: list):
    """`rule` updated by each override in turn (None = no change), validated as a whole."""
    for override in overrides:
        if override is not None:
            rule = type(rule).model_validate({**rule.model_dump(), **override.model_dump(exclude_none=True)})
    return rule


def load_rules(path: str | Path) -> AlertRules:
    """ConfigError naming file, line and field on any problem."""
    return load_yaml_model(path, AlertRules, hint=" (check the spelling; see docs/backend.md)", allow_empty=True)
