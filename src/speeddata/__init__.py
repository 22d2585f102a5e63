"""SpeedData: live telemetry over UDP. Avro records in, disk cache, multicast, web, HDF5 out.

The public API is small; names load lazily so ``import speeddata`` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Schema": "speeddata.schema",
    "SchemaError": "speeddata.schema",
    "Config": "speeddata.config",
    "ConfigError": "speeddata.config",
    "load_config": "speeddata.config",
    "SpeedDataError": "speeddata.errors",
    "Validator": "speeddata._validate",
    "Source": "speeddata.source",
    "read": "speeddata.reader",
    "load": "speeddata.reader",
    "release_memory": "speeddata.pivot",
    "Columns": "speeddata.reader",
    "ColumnSet": "speeddata.reader",
    "Tag": "speeddata.tags",
    "add_tag": "speeddata.tags",
    "list_tags": "speeddata.tags",
    "remove_tag": "speeddata.tags",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'speeddata' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
