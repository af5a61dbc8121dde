"""Loaded models kept in memory for the playground: a thread-safe LRU cache with a
memory budget.

    from core.inference.cache import ModelCache, default_budget
    cache = ModelCache(default_budget())
    model, tokenizer = cache.get(models.find("starter"))

Entries are keyed by model id plus the folder (and, for an adapter, its base's
folder) with their inode and modification time, so a model whose files were
replaced, or a data home that was swapped, loads again instead of serving stale
weights; a rename only changes the name shown. Size = parameter + buffer bytes
of the loaded model. When a load would go over the budget, the least recently
used models are unloaded first; a single model bigger than the budget still
loads, alone, and is flagged. Loading uses `generate.load` (CUDA when present).
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from core.inference import generate
from core.models import registry as models
from storage.db import data_home

GiB = 2**30


def default_budget() -> int:
    """Bytes: 40% of the machine's memory, at most 4 GiB."""
    import psutil

    return min(4 * GiB, int(0.4 * psutil.virtual_memory().total))


@dataclass
class Entry:
    model_id: int
    name: str
    key: tuple
    model: Any
    tokenizer: Any
    bytes: int
    device: str
    last_used: float
    """time.time() of the latest get()."""
    over_budget: bool = False
    """Bigger than the whole budget: loaded alone."""


def model_bytes(model) -> int:
    """Memory held by a loaded model: its parameters and buffers (shared tensors once)."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _folder_key(path: Optional[str]) -> tuple:
    folder = data_home() / (path or "")
    try:
        st = folder.stat()
    except OSError:
        return (str(folder), None, None)
    return (str(folder), st.st_ino, st.st_mtime_ns)


def cache_key(row) -> tuple:
    """What makes a loaded model current: id, folder (+ base folder for an adapter)."""
    base = models.get(row.parent_id).path if row.source == "adapter" and row.parent_id else None
    return (row.id, _folder_key(row.path), _folder_key(base) if base else None)


def _estimate(row) -> int:
    """Bytes a load will take, before loading: the files on disk (fp32 weights load at
    about their size; an adapter also loads its base)."""
    size = row.size_bytes or 0
    if row.source == "adapter" and row.parent_id:
        size += models.get(row.parent_id).size_bytes or 0
    return size


class ModelCache:
    """(model, tokenizer) by registered model, least recently used evicted first."""

    def __init__(self, budget_bytes: int) -> None:
        self._lock = threading.RLock()
        self._entries: dict[int, Entry] = {}  # by model id, oldest use first
        self._loading: dict[int, threading.Lock] = {}
        self.budget = int(budget_bytes)

    # --- reading -------------------------------------------------------------

    def get(self, row) -> tuple[Any, Any]:
        """The loaded model and tokenizer of a model row, loading it if needed
        (ValueError, saying why, for a model that cannot be used now)."""
        why = generate.usable(row)
        if why:
            raise ValueError(why)
        key = cache_key(row)
        hit = self._touch(row, key)
        if hit is not None:
            return hit.model, hit.tokenizer
        with self._lock:
            loading = self._loading.setdefault(row.id, threading.Lock())
        with loading:  # one load per model at a time; a second caller waits for it
            hit = self._touch(row, key)
            if hit is not None:
                return hit.model, hit.tokenizer
            self.unload(row.id)  # an outdated copy (files replaced)
            self._make_room(_estimate(row))
            model, tokenizer = generate.load(row)
            size = model_bytes(model)
            entry = Entry(row.id, row.name, key, model, tokenizer, size, str(model.device), time.time(), size > self.budget)
            with self._lock:
                self._entries[row.id] = entry
                self._make_room(0)
            return model, tokenizer

    def is_loaded(self, row) -> bool:
        key = cache_key(row)
        with self._lock:
            entry = self._entries.get(row.id)
            return entry is not None and entry.key == key

    def entries(self) -> list[dict[str, Any]]:
        """What is loaded, most recently used first."""
        with self._lock:
            rows = list(reversed(self._entries.values()))
        return [
            {
                "model_id": e.model_id,
                "name": e.name,
                "mb": e.bytes / 2**20,
                "last_used": e.last_used,
                "device": e.device,
                "over_budget": e.over_budget,
            }
            for e in rows
        ]

    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.bytes for e in self._entries.values())

    # --- changing ------------------------------------------------------------

    def set_budget(self, budget_bytes: int) -> list[str]:
        """A new budget; returns the names of the models unloaded to meet it."""
        with self._lock:
            self.budget = int(budget_bytes)
            return self._make_room(0)

    def unload(self, model_id: int) -> bool:
        """Drop a model from memory; False when it was not loaded."""
        with self._lock:
            entry = self._entries.pop(model_id, None)
        if entry is None:
            return False
        _free(entry)
        return True

    def clear(self) -> None:
        with self._lock:
            ids = list(self._entries)
        for model_id in ids:
            self.unload(model_id)

    def _touch(self, row, key: tuple) -> Optional[Entry]:
        with self._lock:
            entry = self._entries.get(row.id)
            if entry is None or entry.key != key:
                return None
            entry.last_used, entry.name = time.time(), row.name
            self._entries[row.id] = self._entries.pop(row.id)  # now the most recent
            return entry

    def _make_room(self, incoming: int) -> list[str]:
        """Unload least recently used models until `incoming` more bytes fit in the
        budget (the most recent model always stays when nothing is incoming)."""
        evicted = []
        with self._lock:
            while self._entries:
                used = sum(e.bytes for e in self._entries.values())
                if used + incoming <= self.budget or (incoming == 0 and len(self._entries) == 1):
                    break
                oldest = next(iter(self._entries))
                evicted.append(self._entries[oldest].name)
                self.unload(oldest)
            for entry in self._entries.values():
                entry.over_budget = entry.bytes > self.budget
        return evicted


def _free(entry: Entry) -> None:
    """Release an unloaded model's memory now (a stream still running keeps its own
    reference and frees it when it ends)."""
    on_cuda = entry.device.startswith("cuda")
    entry.model = entry.tokenizer = None
    gc.collect()
    if on_cuda:
        import torch

        torch.cuda.empty_cache()
