"""Kept for the code that imports the SQLite state from here: it lives in backend_decryptor/storage/."""
from backend_decryptor.storage.base import StoredAlert
from backend_decryptor.storage.sqlite import StateDB

__all__ = ["StateDB", "StoredAlert"]
