"""The backend's view of the store (StoreCatalog on a real store folder and SQLite index):
a retired key stops being accepted and a re-protected model's new card applies, both without a
restart; results of the old key keep the card they were made for."""
from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from backend_decryptor.catalog import StoreCatalog
from backend_decryptor.readings import ImplausibleOutput, check_plausible
from backend_decryptor.store import Store
from tests.support.fake_models import fake_artifacts
from tests.support.process import eventually

INTERVAL = 0.2


def protected(seed: int, count_max: float):
    card = {"outputs": [{"name": "crowd_count", "index": 0, "kind": "count", "max": count_max}]}
    artifacts = dataclasses.replace(fake_artifacts(seed), model_card=json.dumps(card).encode())
    return SimpleNamespace(artifacts=artifacts, secret_key=b"SECRET-%d" % seed, report={})


def test_reprotected_models_new_card_applies_without_restart(tmp_path):
    store = Store(tmp_path / "store")
    fp1 = store.add_model("crowd", protected(1, count_max=50), "0" * 64)
    catalog = StoreCatalog(store.root, refresh_interval=INTERVAL)
    assert catalog.card("crowd").outputs[0].max == 50
    fp2 = store.add_model("crowd", protected(2, count_max=200), "0" * 64)     # re-protect, wider range
    assert eventually(lambda: catalog.card("crowd").outputs[0].max == 200)
    # A result under the new key is checked against the new card, one under the old key against its own.
    check_plausible(catalog.card("crowd", fp2), np.array([120.0]))
    with pytest.raises(ImplausibleOutput):
        check_plausible(catalog.card("crowd", fp1), np.array([120.0]))


def test_retired_key_stops_being_accepted_without_restart(tmp_path):
    store = Store(tmp_path / "store")
    fp1 = store.add_model("crowd", protected(1, 50), "0" * 64)
    fp2 = store.add_model("crowd", protected(2, 50), "0" * 64)
    catalog = StoreCatalog(store.root, refresh_interval=INTERVAL)
    assert catalog.knows("crowd", fp1) and catalog.knows("crowd", fp2)
    Store(store.root).retire("crowd", "1")          # another process: the owner's command
    assert eventually(lambda: not catalog.knows("crowd", fp1))
    assert catalog.knows("crowd", fp2)
