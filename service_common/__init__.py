"""What the two services (edge_agent, the gateway daemon; backend_decryptor, the owner's
backend) share, so that neither imports the other and no rule exists twice:

- settings.py     the strict base model, `Seconds`, file settings resolved against the config file
- yaml_loader.py  YAML -> pydantic with FILE:LINE: field errors, duplicate keys, renamed keys
- broker.py       the broker settings (one naming scheme) and reading the broker password
- mqtt_client.py  the one paho-mqtt client factory (callback API v2, MQTT 5, TLS, will, reconnect)
- topics.py       every MQTT topic, built and parsed; the availability words
- transport.py    publish / subscribe / ack / stop, as the backend's parts use it (MQTT or memory)
- mqtt_link.py    that interface over a real broker
- notify.py       systemd's notify protocol and watchdog
- cli.py          the command-line contract: `error: ...` lines, exit codes, log format
- preflight.py    what check-config and run check before starting (files, ports), FILE:LINE: leads

No Pyfhel here (the gateway imports all of it); the library's own config wording (durations,
unknown-key messages) stays in protected_nn.config_words, which model cards use too.
"""
