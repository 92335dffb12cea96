"""One read-only LMDB environment per path per process.

py-lmdb >= 2 refuses to open an environment that is already open in the same process
("The environment ... is already open in this process"), and a forked DataLoader worker inherits
that refusal together with the parent's open environments. Every reader in the plugin, and
BasicSR's ``LmdbBackend`` once :mod:`erl_plugin.engine.compat` has patched it, goes through
:func:`open_lmdb`, which hands out the one environment this process (or its parent, before a fork)
opened for a path.
"""

import os
import threading
from typing import Any

import lmdb

_lock = threading.Lock()
_environments: dict[str, tuple[lmdb.Environment, dict[str, Any]]] = {}


def open_lmdb(path: str, **kwargs: Any) -> lmdb.Environment:
    """Return the shared environment for ``path``, opening it on first use.

    Args:
        path: Directory of the LMDB (the folder that holds ``data.mdb``).
        **kwargs: Arguments for ``lmdb.open``. Defaults: ``readonly=True, lock=False,
            readahead=False`` (BasicSR's). A later call for the same path must ask for the same
            arguments, since one process cannot hold two environments on one path.

    Raises:
        FileNotFoundError: ``path`` is not a directory.
        ValueError: the path is already open with different arguments.
    """
    options = {"readonly": True, "lock": False, "readahead": False, **kwargs}
    if not os.path.isdir(path):
        raise FileNotFoundError(f"LMDB not found: {path} is not a directory")
    key = os.path.realpath(path)
    with _lock:
        if key in _environments:
            env, opened_with = _environments[key]
            if opened_with != options:
                raise ValueError(
                    f"LMDB {path} is already open in this process with {opened_with}; "
                    f"cannot open it again with {options}"
                )
            return env
        env = lmdb.open(key, **options)
        _environments[key] = (env, options)
        return env
