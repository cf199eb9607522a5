#!/usr/bin/env bash
# A configuration that passes both check-configs on a fresh clone, with every path under ./local:
#   - protects the shipped model (models/crowd_incident.onnx) into local/store (once; ~10-30 s),
#   - exports the signed bundle local/model.bundle (+ local/model.bundle.owner.pub),
#   - makes the gateway's signing key local/signing.key (`edge-agent keygen`),
#   - writes local/edge.yaml and local/backend.yaml from configs/*.yaml with local paths, a broker
#     on 127.0.0.1:1883 without TLS or password (loopback only), and the key listed for the gateway,
#   - runs `edge-agent check-config` and `backend-decryptor check-config` on them.
# Usage: scripts/local-example.sh [DIR]   (default ./local; METRICS_PORT=9464 picks the ports)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="$(mkdir -p "${1:-local}" && cd "${1:-local}" && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
edge=("$py" -m edge_agent.cli)
backend=("$py" -m backend_decryptor.cli)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

if [ ! -f "$dir/store/index.sqlite" ]; then
    "${backend[@]}" protect "$repo/models/crowd_incident.onnx" --model-id crowd_incident --store "$dir/store"
fi
"${backend[@]}" export crowd_incident --store "$dir/store" --out "$dir/model.bundle"
[ -f "$dir/signing.key" ] || "${edge[@]}" keygen --out "$dir/signing.key" --gateway-id gw-harbour-01
cp "$repo/configs/alert-rules.yaml" "$dir/alert-rules.yaml"

METRICS_PORT="${METRICS_PORT:-9464}" "$py" - "$repo" "$dir" <<'PY'
import os, sys
from pathlib import Path
import yaml
from protected_nn.gateway_key import load_private_key, public_key_text

repo, out = Path(sys.argv[1]), Path(sys.argv[2])
port = int(os.environ["METRICS_PORT"])
broker = {"host": "127.0.0.1", "port": 1883}          # loopback: no TLS, no password needed

edge = yaml.safe_load((repo / "configs/edge.yaml").read_text())
edge.pop("signing_key_credential", None)
edge.update(bundle="model.bundle", owner_public_key="model.bundle.owner.pub", signing_key_file="signing.key",
            model_id="crowd_incident", state_dir="state", spool={"directory": "state/spool"},
            metrics_address=f"127.0.0.1:{port}", workers=2)
for key in ("tls", "username", "password_credential", "password_file"):
    edge["mqtt"].pop(key, None)
edge["mqtt"].update(broker)
(out / "edge.yaml").write_text("# written by scripts/local-example.sh from configs/edge.yaml\n"
                               + yaml.safe_dump(edge, sort_keys=False))

gateway = edge["gateway_id"]
backend = yaml.safe_load((repo / "configs/backend.yaml").read_text())
backend.update(store="store", state_db="state/backend.db")
for key in ("tls", "username", "password_file"):
    backend["mqtt"].pop(key, None)
backend["mqtt"].update(broker)
backend["checks"].update(
    allowed_gateways=[gateway],
    gateway_keys={gateway: public_key_text(load_private_key(out / "signing.key"))},
    gateway_cameras={gateway: [c["id"] for c in edge["cameras"]]})
backend["alerts"]["rules_file"] = "alert-rules.yaml"
backend["metrics"] = {"listen": f"127.0.0.1:{port + 1}"}
(out / "backend.yaml").write_text("# written by scripts/local-example.sh from configs/backend.yaml\n"
                                  + yaml.safe_dump(backend, sort_keys=False))
PY

"${edge[@]}" check-config "$dir/edge.yaml"
"${backend[@]}" check-config "$dir/backend.yaml"
echo "local example: $dir/edge.yaml and $dir/backend.yaml pass check-config"
