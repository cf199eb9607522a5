"""Malformed and adversarial inference messages at the backend, through a real broker.

`backend-decryptor run` runs as a subprocess (a crash is a process exit, not a caught exception)
with a real protected model in its store; a test client publishes a deterministic mix of hostile
messages (`AdversarialCorpus`, plus issue 15's forgeries in tests/support/forged_messages.py)
interleaved with valid, signed encrypted results of a quiet scene. Expected:
the process survives, every valid result is processed, not one alert is raised (the valid stream
never justifies one, so any alert would be a false alert), and each hostile message is dropped
with the reason its kind predicts. bench/bench_faults.py runs the same with 10,000 messages.
"""
from __future__ import annotations

import pytest

from tests.support.adversarial import AdversarialCorpus, protected_store, publisher, run_campaign, verdict
from tests.support.backend_process import BROKER_QUEUE, BackendProcess
from tests.support.mosquitto import Mosquitto

UNLIMITED = {"per_gateway_rate": None}   # BackendProcess(limits=...): the service's default otherwise


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("adv-model")
    return root, protected_store(root)


def test_300_hostile_messages_among_20_valid_no_crash_no_false_alert_all_valid_processed(model, tmp_path):
    import shutil
    root, (fp, payload, other_payload, other_fp, _, plan) = model
    shutil.copytree(root / "store", tmp_path / "store")
    with Mosquitto(extra_config=BROKER_QUEUE) as broker:
        # no per-gateway limit: one gateway sends 320 messages at once, and each hostile one must be
        # dropped for ITS reason (the limit would turn most into rate_limited; see tests/backend/test_limits.py)
        backend = BackendProcess(tmp_path, broker, limits=UNLIMITED).start()
        client = publisher(broker)
        try:
            corpus = AdversarialCorpus(fp, payload, other_payload, other_fp, plan, seed=6)
            sent = run_campaign(corpus, client, n_bad=300, n_valid=20)
            backend.wait_handled(len(sent), timeout=90)
            v = verdict(backend, sent)
            assert v["alive"], backend.log()
            assert v["valid_processed"] == 20 and v["processed"] == 20, v
            assert v["alerts"] == 0, v
            assert sum(v["rejected"].values()) == 300, v
            assert "internal_error" not in v["rejected"], backend.log()
            for reason, count in v["expected_exact"].items():      # each kind dropped for its reason
                assert v["rejected"].get(reason, 0) >= count, (reason, v)
            assert set(m.kind for m in sent) >= set(AdversarialCorpus.KINDS)
            assert backend.terminate() < 10 and backend.proc.returncode == 0, backend.log()
        finally:
            client.disconnect()
            client.loop_stop()
            backend.kill()
