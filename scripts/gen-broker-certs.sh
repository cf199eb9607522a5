#!/bin/sh
# Certificates for the locked-down broker (configs/mosquitto/): a private CA, the broker's server
# certificate, and optional client certificates (mutual TLS), all with openssl, EC P-256 keys.
#
#     scripts/gen-broker-certs.sh OUT_DIR [CLIENT_NAME...]
#     scripts/gen-broker-certs.sh /etc/mosquitto/fhe-edge backend gw-harbour-01 dashboard
#
# Writes OUT_DIR/ca.crt ca.key server.crt server.key and <name>.crt <name>.key per client.
# The server certificate is valid for localhost and 127.0.0.1 plus every name/address in
# BROKER_HOSTNAMES (space separated, e.g. BROKER_HOSTNAMES="mqtt.city.example 10.20.0.2").
# Copy ca.crt to every gateway/backend/dashboard (their `tls.ca_file`); ca.key signs nothing else
# and should be moved offline once the certificates exist. Keys are created mode 0600.
# An existing CA in OUT_DIR is reused (so adding a client later does not invalidate the others).
set -eu

if [ $# -lt 1 ]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
OUT=$1
shift
DAYS=${CERT_DAYS:-825}
mkdir -p "$OUT"
umask 077

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -f "$OUT/ca.key" ] || [ ! -f "$OUT/ca.crt" ]; then
    key "$OUT/ca.key"
    openssl req -x509 -new -key "$OUT/ca.key" -sha256 -days "$((DAYS * 4))" \
        -subj "/CN=fhe-edge broker CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$OUT/ca.crt"
fi

# sign NAME EXTFILE: a certificate for NAME signed by the CA, with the extensions in EXTFILE
sign() {
    key "$OUT/$1.key"
    openssl req -new -key "$OUT/$1.key" -subj "/CN=$1" -out "$OUT/$1.csr"
    openssl x509 -req -in "$OUT/$1.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" -CAcreateserial \
        -days "$DAYS" -sha256 -extfile "$2" -out "$OUT/$1.crt" 2>/dev/null
    rm -f "$OUT/$1.csr"
}

EXT=$(mktemp)
trap 'rm -f "$EXT"' EXIT

SAN="DNS:localhost,IP:127.0.0.1"
for host in ${BROKER_HOSTNAMES:-}; do
    case $host in
        *[!0-9.]*) SAN="$SAN,DNS:$host" ;;
        *) SAN="$SAN,IP:$host" ;;
    esac
done
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$SAN" > "$EXT"
sign server "$EXT"

printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' > "$EXT"
for name in "$@"; do
    case $name in
        ca|server|*/*|'') echo "refusing client name '$name'" >&2; exit 2 ;;
    esac
    sign "$name" "$EXT"
done

chmod 644 "$OUT"/*.crt
echo "certificates in $OUT: ca.crt server.crt${*:+ (clients: $*)}"
