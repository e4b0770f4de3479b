"""Whether a Hugging Face hub model (SigLIP) can be used, decided without waiting on a network that
is not there.

The decision, in order, each step free of network traffic until the last:

1. a local folder (``engine.siglip_model = "/path"``): used as it is;
2. the local Hugging Face cache (``huggingface_hub.try_to_load_from_cache``: its config and its
   weights): used offline, no request at all;
3. ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set: not available, no request;
4. a failed probe remembered in the user's state folder (``hub-probe.json``) less than
   :data:`PROBE_INTERVAL` ago: not available, no request;
5. one probe of the hub: a single HTTP ``HEAD`` with a :data:`PROBE_TIMEOUT` timeout and no
   retries. Unreachable: remembered (step 4) for a day. Reachable: the model is downloaded, once,
   after a one-line message saying so.

``ghostmesh models`` prints the decision and its reason; ``ghostmesh models --probe`` forgets a
remembered failure and probes now.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

#: How long a failed probe is remembered: the hub is asked again at most once a day.
PROBE_INTERVAL = 24 * 3600.0
#: One attempt, this long at most (seconds).
PROBE_TIMEOUT = 3.0
#: Files a usable cached model has: its config and one of its weight files.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class HubDecision:
    """``usable`` False: not loaded (``auto`` warns, a named target is an error); ``source`` is one of
    ``local folder``, ``cache``, ``download`` (usable) or ``offline``, ``remembered``, ``unreachable``
    (not usable); ``reason`` says why, in words."""

    model: str
    usable: bool
    source: str
    reason: str
    probed: bool = False  # whether this decision sent a request to the hub

    @property
    def download(self) -> bool:
        return self.usable and self.source == "download"


def offline_requested(environ: dict | None = None) -> str | None:
    """The variable that asks for offline mode, when one does."""
    env = os.environ if environ is None else environ
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if str(env.get(name, "")).strip().lower() in _TRUE:
            return name
    return None


def cached_model(model: str) -> Path | None:
    """The cached weight file of hub model ``model``, when its config and weights are both cached."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    config = try_to_load_from_cache(model, "config.json")
    if not isinstance(config, str):
        return None
    for name in WEIGHT_FILES:
        found = try_to_load_from_cache(model, name)
        if isinstance(found, str):
            return Path(found)
    return None


def probe_file() -> Path:
    from .daemon import paths

    return paths.state_dir() / "hub-probe.json"


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def remembered_failure(now: float | None = None) -> dict | None:
    """The last probe's record, when it failed less than :data:`PROBE_INTERVAL` ago."""
    try:
        record = json.loads(probe_file().read_text())
    except (OSError, ValueError):
        return None
    now = time.time() if now is None else now
    if not isinstance(record, dict) or record.get("ok") or record.get("endpoint") != endpoint():
        return None
    at = record.get("at")
    if not isinstance(at, (int, float)) or not (0 <= now - at < PROBE_INTERVAL):
        return None
    return record


def _remember(ok: bool, error: str | None = None) -> None:
    path = probe_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"ok": ok, "at": time.time(), "endpoint": endpoint(), "error": error}))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only state folder: we probe again next time, still once and briefly


def forget() -> None:
    try:
        probe_file().unlink()
    except OSError:
        pass


def probe(model: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """One ``HEAD`` of the model's config on the hub, no retries. ``None`` when the hub answered
    (any HTTP status: the network is there), else why not."""
    url = f"{endpoint()}/{model}/resolve/main/config.json"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered; a wrong id or a gated model shows up when transformers loads it
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason


def decide(model: str, *, allow_probe: bool = True, force_probe: bool = False) -> HubDecision:
    """Whether ``model`` (a hub id or a local folder) can be loaded now, and why (module docstring)."""
    local = Path(os.path.expanduser(model))
    if local.is_dir():
        return HubDecision(model, True, "local folder", f"local folder {local}")
    cached = cached_model(model)
    if cached is not None:
        return HubDecision(model, True, "cache", f"in the local Hugging Face cache ({cached.parent})")
    offline = offline_requested()
    if offline:
        return HubDecision(model, False, "offline", f"not in the local Hugging Face cache, and {offline} is set "
                                                    "(no request made)")
    if force_probe:
        forget()
    record = remembered_failure()
    if record is not None:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record["at"]))
        again = time.strftime("%Y-%m-%d %H:%M", time.localtime(record["at"] + PROBE_INTERVAL))
        return HubDecision(model, False, "remembered",
                           f"not in the local Hugging Face cache, and the hub ({endpoint()}) was unreachable at "
                           f"{when} ({record.get('error')}); asked again after {again}, or now with "
                           "`ghostmesh models --probe`")
    if not allow_probe:
        return HubDecision(model, False, "unreachable", "not in the local Hugging Face cache (hub not asked)")
    error = probe(model)
    if error is not None:
        _remember(False, error)
        return HubDecision(model, False, "unreachable",
                           f"not in the local Hugging Face cache, and the hub ({endpoint()}) is unreachable "
                           f"({error}); remembered for a day", probed=True)
    _remember(True)
    return HubDecision(model, True, "download",
                       f"not in the local Hugging Face cache; the hub ({endpoint()}) is reachable: downloading once",
                       probed=True)


def download_failed(error: str) -> None:
    """A download that the probe allowed failed after all: remember it like a failed probe."""
    _remember(False, error)
