"""Which models and key fingerprints the backend can decrypt, and their model cards.

`StoreCatalog` reads the protected model store (backend_decryptor/store.py) and re-reads it when a
message names a model or fingerprint it has not seen (at most every `refresh_interval` seconds),
so a newly protected model or a rotated key is picked up without a restart, while a flood of
messages with made-up ids costs at most one store scan per interval. Every fingerprint the store
still holds for a model is accepted: after a key rotation, messages under the old fingerprint keep
decrypting until the owner removes the old key from the store.

`StaticCatalog` is a fixed table, for the plumbing tests and the benchmark.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from backend_decryptor.model_card import ModelCard, parse_card


class StaticCatalog:
    def __init__(self, models: dict[str, tuple[list[str], dict]]):
        """models: model id -> (fingerprints, model card dict)."""
        self._fps = {m: set(fps) for m, (fps, _) in models.items()}
        self._cards = {m: parse_card(m, card) for m, (_, card) in models.items()}

    def fingerprints(self, model_id: str) -> set[str] | None:
        """None if the model is unknown."""
        return self._fps.get(model_id)

    def card(self, model_id: str) -> ModelCard:
        return self._cards[model_id]


class StoreCatalog:
    def __init__(self, store_root: str | Path, refresh_interval: float = 2.0):
        from backend_decryptor.store import Store  # owned by the store work; imported lazily
        # The store is created by `protect`, never by the service: a wrong path fails at start.
        self._store = Store(store_root, create=False)
        self._interval = refresh_interval
        self._lock = threading.Lock()
        self._fps: dict[str, set[str]] = {}
        self._cards: dict[str, ModelCard] = {}
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
            self._fps = fps
            self._cards = {m: c for m, c in self._cards.items() if m in fps}

    def fingerprints(self, model_id: str) -> set[str] | None:
        fps = self._fps.get(model_id)
        if fps is None:
            self._refresh()
            fps = self._fps.get(model_id)
        return fps

    def knows(self, model_id: str, fingerprint: str) -> bool:
        fps = self.fingerprints(model_id)
        if fps is not None and fingerprint not in fps:
            self._refresh()
            fps = self._fps.get(model_id)
        return fps is not None and fingerprint in fps

    def card(self, model_id: str) -> ModelCard:
        card = self._cards.get(model_id)
        if card is None:
            card = parse_card(model_id, self._store.model_card(model_id))
            self._cards[model_id] = card
        return card


def knows(catalog, model_id: str, fingerprint: str) -> bool:
    """Works for both catalogs (StoreCatalog re-reads the store on a miss)."""
    if hasattr(catalog, "knows"):
        return catalog.knows(model_id, fingerprint)
    fps = catalog.fingerprints(model_id)
    return fps is not None and fingerprint in fps
