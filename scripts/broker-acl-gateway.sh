#!/bin/sh
# Print the Mosquitto ACL block of one gateway: its exact result and camera-status topics.
#     scripts/broker-acl-gateway.sh GATEWAY_ID CAMERA_ID... >> /etc/mosquitto/fhe-edge/acl
# then `systemctl reload mosquitto` (the ACL is re-read on SIGHUP). Ids: 1..64 chars of
# [A-Za-z0-9._-] (the envelope's alphabet), so no MQTT wildcard can slip into the ACL.
# PREFIX (default fhe-edge) = the gateways' mqtt.topic_prefix.
set -eu
prefix=${PREFIX:-fhe-edge}
valid() { printf '%s' "$1" | grep -Eq '^[A-Za-z0-9._-]{1,64}$'; }
if [ $# -lt 2 ]; then
    echo "usage: $0 GATEWAY_ID CAMERA_ID..." >&2
    exit 2
fi
gateway=$1
shift
valid "$gateway" || { echo "error: gateway id '$gateway': expected 1..64 chars of [A-Za-z0-9._-]" >&2; exit 2; }
for camera in "$@"; do
    valid "$camera" || { echo "error: camera id '$camera': expected 1..64 chars of [A-Za-z0-9._-]" >&2; exit 2; }
done
echo
echo "user $gateway"
for camera in "$@"; do
    echo "topic write $prefix/infer/$gateway/$camera"
    echo "topic write $prefix/status/$gateway/$camera"
done
