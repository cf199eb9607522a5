"""Which models and key fingerprints the backend can decrypt, and their model cards.

`StoreCatalog` reads the protected model store (backend_decryptor/store.py) and re-reads it at
most every `refresh_interval` seconds (when asked, never on its own), so a newly protected model,
a rotated key or a retired one is picked up without a restart, while a flood of messages with
made-up ids costs at most one store scan per interval. Every key version the store has not retired
is accepted: after a key rotation, messages under the old fingerprint keep decrypting until the
owner runs `backend-decryptor models retire`. Model cards are per key version: a result is
checked against the card of the key it was encrypted under, so a re-protected model's new card
(say, new plausibility bounds) applies to its results from the first one on, and the results of
the old key still draining keep the card they were made for.

`StaticCatalog` is a fixed table, for the plumbing tests and the benchmark.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from protected_nn import result_auth
from protected_nn.model_card import ModelCard, parse_card


class StaticCatalog:
    def __init__(self, models: dict[str, tuple[list[str], dict]], secret_keys: dict | None = None):
        """models: model id -> (fingerprints, model card dict); secret_keys: (model id, fingerprint)
        -> secret key bytes, for the result keys of envelope v3 (none: v3 envelopes are refused)."""
        self._fps = {m: set(fps) for m, (fps, _) in models.items()}
        self._secret_keys = dict(secret_keys or {})
        self._cards = {m: parse_card(m, card, need_outputs=True) for m, (_, card) in models.items()}

    def fingerprints(self, model_id: str) -> set[str] | None:
        """None if the model is unknown."""
        return self._fps.get(model_id)

    def card(self, model_id: str, fingerprint: str | None = None) -> ModelCard:
        return self._cards[model_id]

    def result_key(self, model_id: str, fingerprint: str):
        secret = self._secret_keys.get((model_id, fingerprint))
        return result_auth.model_result_key(secret, fingerprint) if secret else None


class StoreCatalog:
    def __init__(self, store_root: str | Path, refresh_interval: float = 2.0):
        from backend_decryptor.store import Store  # owned by the store work; imported lazily
        # The store is created by `protect`, never by the service: a wrong path fails at start.
        self._store = Store(store_root, create=False)
        self._interval = refresh_interval
        self._lock = threading.Lock()
        self._fps: dict[str, set[str]] = {}
        self._active: dict[str, str] = {}
        self._cards: dict[tuple[str, str], ModelCard] = {}   # (model id, fingerprint) -> card
        self._loaded_at = float("-inf")
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not force and now - self._loaded_at < self._interval:
                return
            self._loaded_at = now
            fps = {}
            for model_id in self._store.model_ids():
                fps[model_id] = set(self._store.fingerprints(model_id))
                self._active[model_id] = self._store.active_fingerprint(model_id)
            self._fps = fps
            self._cards = {k: c for k, c in self._cards.items() if k[1] in fps.get(k[0], ())}

    def fingerprints(self, model_id: str) -> set[str] | None:
        self._refresh()  # rate-limited: a retired key stops being accepted within the interval
        return self._fps.get(model_id)

    def knows(self, model_id: str, fingerprint: str) -> bool:
        fps = self.fingerprints(model_id)
        return fps is not None and fingerprint in fps

    def card(self, model_id: str, fingerprint: str | None = None) -> ModelCard:
        """The card of that key version (default: the model's active one)."""
        self._refresh()
        fingerprint = fingerprint or self._active.get(model_id) or self._store.active_fingerprint(model_id)
        key = (model_id, fingerprint)
        card = self._cards.get(key)
        if card is None:
            card = parse_card(model_id, self._store.model_card(model_id, fingerprint), need_outputs=True)
            self._cards[key] = card
        return card


    def result_key(self, model_id: str, fingerprint: str):
        """The result key (protected_nn/result_auth.py) of a key version this store holds, else None."""
        if not self.knows(model_id, fingerprint):
            return None
        return result_auth.model_result_key(self._store.secret_key(model_id, fingerprint), fingerprint)


def knows(catalog, model_id: str, fingerprint: str) -> bool:
    """Works for both catalogs (StoreCatalog re-reads the store on a miss)."""
    if hasattr(catalog, "knows"):
        return catalog.knows(model_id, fingerprint)
    fps = catalog.fingerprints(model_id)
    return fps is not None and fingerprint in fps
