"""One topic grammar for the whole system (service_common.topics): what a gateway publishes on is
what the backend subscribes to and parses, under any prefix; the availability words are the ones
dashboards are told to expect."""
from __future__ import annotations

import json

import pytest

from backend_decryptor.checks import MessageChecker, Rejected
from backend_decryptor.config import ChecksConfig, HomeAssistantConfig
from backend_decryptor.publish import Publisher
from edge_agent.config import MqttConfig
from service_common.topics import OFFLINE, ONLINE, TopicError, Topics
from service_common.transport import MemoryTransport, filter_of


@pytest.mark.parametrize("prefix", ["fhe-edge", "site-a/floor-2", "/x/"])
def test_every_built_topic_parses_back_and_matches_the_backend_subscriptions(prefix):
    t = Topics(prefix)
    assert t.parse_infer(t.infer("gw-1", "cam.7")) == ("gw-1", "cam.7")
    assert t.parse_backend_availability(t.backend_availability("backend-2")) == "backend-2"
    from paho.mqtt.client import topic_matches_sub
    assert topic_matches_sub(filter_of(t.infer_subscription("backend")), t.infer("gw-1", "cam-1"))
    assert topic_matches_sub(t.backend_availability_filter, t.backend_availability("b"))
    assert not topic_matches_sub(filter_of(t.infer_subscription("backend")), t.status("gw-1", "cam-1"))


@pytest.mark.parametrize("topic", ["fhe-edge/infer/gw-1", "fhe-edge/infer/gw-1/cam/extra", "other/infer/gw/cam",
                                   "fhe-edge/status/gw/cam", "fhe-edgeX/infer/gw/cam", ""])
def test_anything_else_is_not_a_result_topic(topic):
    with pytest.raises(TopicError):
        Topics("fhe-edge").parse_infer(topic)
    assert Topics("fhe-edge").parse_backend_availability(topic) is None


def test_the_backend_checker_reads_the_gateways_topics_through_the_same_grammar():
    checker = MessageChecker(ChecksConfig(), "site/a", catalog=None, seen=lambda *a: False)
    assert checker.topic_ids(Topics("site/a").infer("gw-1", "cam-1")) == ("gw-1", "cam-1")
    with pytest.raises(Rejected) as exc:
        checker.topic_ids(Topics("site/b").infer("gw-1", "cam-1"))
    assert exc.value.reason == "bad_topic"


def test_the_gateway_publisher_builds_its_topics_from_the_shared_grammar(tmp_path):
    from edge_agent.metrics import Metrics
    from edge_agent.publisher import Publisher as GatewayPublisher
    from edge_agent.spool import Spool
    pub = GatewayPublisher(MqttConfig(host="127.0.0.1", topic_prefix="site/a"), "gw-9", Spool(tmp_path, 1 << 20),
                           Metrics())
    assert pub.availability_topic == Topics("site/a").gateway_availability("gw-9")
    pub.submit_result("cam-1", b"x")
    assert pub._incoming.get_nowait()[0] == Topics("site/a").infer("gw-9", "cam-1")


def test_home_assistant_is_told_the_gateways_availability_topics_and_words():
    transport = MemoryTransport()
    pub = Publisher(transport, "site/a", HomeAssistantConfig(enabled=True), state_interval=10)
    pub.state("cam-1", {"camera": "cam-1"}, gateway="gw-1")
    configs = [json.loads(m.payload) for m in transport.sent("homeassistant/")]
    assert configs and all(c["payload_available"] == ONLINE and c["payload_not_available"] == OFFLINE
                           for c in configs)
    t = Topics("site/a")
    assert configs[0]["availability"] == [{"topic": t.status("gw-1", "cam-1")},
                                          {"topic": t.gateway_availability("gw-1")}]
    assert transport.retained[t.state("cam-1")]
