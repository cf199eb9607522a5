"""What both services share lives in service_common, once (issue 12): neither service imports the
other, the shared package imports neither, and the config vocabulary is the same objects on both
sides."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imported_packages(package: str) -> set[str]:
    found = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package,forbidden", [("edge_agent", {"backend_decryptor"}),
                                               ("backend_decryptor", {"edge_agent"}),
                                               ("service_common", {"edge_agent", "backend_decryptor"}),
                                               ("protected_nn", {"edge_agent", "backend_decryptor", "service_common"})])
def test_no_service_imports_the_other(package, forbidden):
    assert not imported_packages(package) & forbidden


def test_one_config_vocabulary_for_both_services():
    import backend_decryptor.config as backend
    import backend_decryptor.rules_config as rules
    import edge_agent.config as edge
    from service_common.broker import BrokerSettings
    from service_common.settings import StrictModel
    from service_common.yaml_loader import ConfigError
    assert edge.ConfigError is backend.ConfigError is ConfigError and issubclass(ConfigError, ValueError)
    for model in (edge.EdgeConfig, edge.CameraConfig, backend.BackendConfig, backend.ChecksConfig, rules.AlertRules):
        assert issubclass(model, StrictModel), model
    assert issubclass(edge.MqttConfig, BrokerSettings) and issubclass(backend.MQTTConfig, BrokerSettings)
    from protected_nn.config_words import parse_duration
    durations = [edge.MqttConfig.model_fields["resume_delay_s"], backend.MQTTConfig.model_fields["session_expiry"],
                 rules.IncidentRule.model_fields["cooldown"]]
    for field in durations:                                         # one Seconds type, one duration parser
        assert [getattr(m, "func", None) for m in field.metadata if hasattr(m, "func")] == [parse_duration]
