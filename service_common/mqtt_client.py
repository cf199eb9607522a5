"""The one place a paho-mqtt client is made: callback API v2, MQTT 5, TLS with the broker's
certificate always verified, user and password, a retained `offline` last will on the client's
availability topic, and reconnection with a bounded back-off (paho reconnects by itself once
`loop_start` runs; the caller re-publishes what a new connection needs in its on_connect)."""
from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from service_common.broker import BrokerSettings
from service_common.topics import OFFLINE


def make_client(broker: BrokerSettings, *, client_id: str, will_topic: str, password: str | None = None,
                manual_ack: bool = False, reconnect_max_s: float = 30.0) -> mqtt.Client:
    """A client for `broker`, not connected yet (connect_async + loop_start are the caller's, who
    sets the callbacks first). `manual_ack`: QoS 1 messages stay unacknowledged until
    `client.ack(mid, qos)` (the backend acknowledges only what it has fully handled)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                    manual_ack=manual_ack)
    tls = broker.tls
    if tls is not None:
        c.tls_set(ca_certs=str(tls.ca_file) if tls.ca_file else None,
                  certfile=str(tls.cert_file) if tls.cert_file else None,
                  keyfile=str(tls.key_file) if tls.key_file else None, cert_reqs=ssl.CERT_REQUIRED)
        c.tls_insecure_set(tls.insecure)
    if broker.username:
        c.username_pw_set(broker.username, password)
    c.will_set(will_topic, OFFLINE, qos=1, retain=True)
    c.reconnect_delay_set(1, max(1, int(reconnect_max_s)))
    return c
