"""The decryption worker's model cache: one Store per worker, opened without creating it, whose
`owner_model` cache loads each key version once (keys are slow to load) however many results."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from backend_decryptor.decrypt_pool import DecryptPool, StoreDecryptor
from backend_decryptor.store import Store, StoreError, UnknownKeyError
from protected_nn import api
from tests.support.tiny_models import frame_model


class Counting:
    """Counts calls of a real callable and calls it (a spy, not a stand-in)."""

    def __init__(self, real):
        self.real, self.calls = real, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


@pytest.fixture(scope="module")
def tiny_keys(tmp_path_factory):
    """Two key versions of one tiny model (protected, not yet stored), each with a real result."""
    folder = tmp_path_factory.mktemp("cache")
    onnx_path = frame_model(folder / "tiny.onnx")
    x = np.full((1, 2, 8, 8), 0.5, np.float32)
    keys = []
    for _ in range(2):
        prot = api.protect(onnx_path)
        keys.append((prot, api.EdgeModel(prot.artifacts).infer(x)))
    return keys


def test_each_key_is_loaded_once_per_worker_however_many_results(tiny_keys, tmp_path, monkeypatch):
    (first, first_result), (second, second_result) = tiny_keys
    Store(tmp_path / "store").add_model("tiny", first, "0" * 64)
    stores = Counting(Store.__init__)
    loads = Counting(api.OwnerModel)
    monkeypatch.setattr(Store, "__init__", lambda self, *a, **k: stores(self, *a, **k))
    monkeypatch.setattr(api, "OwnerModel", loads)
    # what a worker receives: the decryptor pickled by the pool (workers: 0 runs the same code)
    decryptor = pickle.loads(pickle.dumps(StoreDecryptor(tmp_path / "store")))
    pool = DecryptPool(decryptor, workers=0)                  # preloads the first key
    try:
        # a key rotation while the worker runs: the new key is loaded on its first result
        Store(tmp_path / "store").add_model("tiny", second, "0" * 64)
        results = {first.artifacts.key_fingerprint: first_result, second.artifacts.key_fingerprint: second_result}
        for _ in range(3):
            for fp, payload in results.items():
                out = pool.result(pool.submit("tiny", fp, payload))
                assert np.allclose(out.reshape(-1), [0.5, 0.5], atol=1e-2)
    finally:
        pool.close()
    assert stores.calls == 2                      # the worker's one, and the add_model above;
    #                                               before: one more per key loaded after start
    assert loads.calls == 2                       # once per key; the 6 results hit the cache


def test_a_missing_store_is_an_error_not_a_new_empty_store(tmp_path):
    decryptor = StoreDecryptor(tmp_path / "no-store")
    with pytest.raises(StoreError, match="does not exist"):
        decryptor.preload()
    assert not (tmp_path / "no-store").exists()   # before: created (create=True) in every worker


def test_a_key_retired_through_the_store_leaves_its_cache(tiny_keys, tmp_path):
    (first, _), (second, _) = tiny_keys
    store = Store(tmp_path / "store")
    old = store.add_model("tiny", first, "0" * 64)
    store.add_model("tiny", second, "0" * 64)
    store.owner_model("tiny", old)
    store.retire("tiny", old)
    assert ("tiny", old) not in store._owner_models
    with pytest.raises(UnknownKeyError, match="retired"):
        store.owner_model("tiny", old)
