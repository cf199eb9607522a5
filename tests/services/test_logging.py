"""Both services log in one format with a time stamp (issue 16: the backend's lines had none, so
a foreground run or `journalctl -o cat` could not be read against the gateway's)."""
from __future__ import annotations

import re
import subprocess
import sys

SCRIPT = r'''
import logging, sys
from {module} import configure_logging
configure_logging("INFO")
logging.getLogger("x.y").warning("hello")
'''
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING x\.y: hello$")


def test_both_services_configure_the_same_timestamped_format():
    for module in ("edge_agent.daemon_cli", "backend_decryptor.service_cli"):
        out = subprocess.run([sys.executable, "-c", SCRIPT.format(module=module)], capture_output=True,
                             text=True, timeout=60, check=True)
        assert LINE.match(out.stderr.strip()), (module, out.stderr)
