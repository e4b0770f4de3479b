"""Where the daemon keeps things, from platformdirs (XDG variables honoured on Linux).

The ledger and the lock live in the user *state* folder (they must outlive a reboot); the control
socket in the user *runtime* folder (private to the user, cleared at logout); the log in the user
log folder.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import platformdirs

APP_NAME = "ghostmesh"


def state_dir() -> Path:
    return platformdirs.user_state_path(APP_NAME)


def log_dir() -> Path:
    return platformdirs.user_log_path(APP_NAME)


def runtime_dir() -> Path:
    # platformdirs warns when XDG_RUNTIME_DIR is unset and falls back to a private /tmp folder; the
    # fallback is fine for us (we create it 0700 and check it), so the warning is not the user's concern.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return platformdirs.user_runtime_path(APP_NAME)


def ledger_path() -> Path:
    return state_dir() / "ledger.sqlite3"


def lock_path() -> Path:
    return state_dir() / "daemon.lock"


def socket_path() -> Path:
    return runtime_dir() / "control.sock"


def log_path() -> Path:
    return log_dir() / "ghostmesh.log"


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it accessible to this user only."""
    path.mkdir(parents=True, exist_ok=True)
    if os.name == "posix":
        os.chmod(path, 0o700)
    return path
