"""The Hugging Face hub, reached only where the operator allows it, and failing at once when it cannot be.

A serving process must not download what any caller names: a model id in a request would be a
download of gigabytes, on the request's time, from wherever the hub's name points. So
:class:`HubAccess` says which hub ids may be downloaded (none by default; ``*`` for any, as
``chronoserve serve --allow-hub``), and what the local Hugging Face cache already holds is
loaded without the network (``local_files_only``), allowed or not.

Offline, ``huggingface_hub`` retries a download with backoff for tens of seconds before it
fails (35 ``Retrying in Ns`` lines, 24 s, measured here). Before a download
:meth:`HubAccess.check_reachable` opens one TCP connection to the hub's endpoint (or to the
HTTPS proxy, if one is set) with a short timeout, so an unreachable hub fails at once with
:class:`~chronoserve.errors.ModelLoadError` marked ``permanent``: answered without
``Retry-After``, and not retried by clients.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from chronoserve import errors
from chronoserve.models.materialize import CONFIG_FILE, WEIGHTS_FILE

#: Seconds to wait for the hub's endpoint to accept a connection before a download.
PROBE_SECONDS = 3.0
#: ``--allow-hub`` with no ids: any hub id.
ANY = "*"
_DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class HubAccess:
    """Which hub ids may be downloaded: ``allowed`` ids (``*``: any); empty (the default): none."""

    allowed: tuple[str, ...] = ()

    @classmethod
    def of(cls, allowed: bool | str | Iterable[str] | None) -> HubAccess:
        """From ``True`` (any), ``False``/``None`` (none), ``"*"`` or ids (a comma-separated string, or an iterable)."""
        if allowed is True:
            return cls((ANY,))
        if not allowed:
            return cls()
        items = allowed.split(",") if isinstance(allowed, str) else allowed
        return cls(tuple(dict.fromkeys(i.strip() for i in items if i.strip())))

    @property
    def any(self) -> bool:
        return ANY in self.allowed

    def allows(self, *ids: str | None) -> bool:
        """Whether a model known by any of ``ids`` (its hub id, its catalog name) may be downloaded."""
        return self.any or any(i is not None and i in self.allowed for i in ids)

    def refusal(self, name: str, hub_id: str) -> errors.HubNotAllowed:
        """The error for a model that needs a download this process may not make."""
        return errors.HubNotAllowed(
            name,
            f"model {name!r} is not on this machine (it is {hub_id} on the Hugging Face hub), and this "
            "server does not download models: the operator allows it with --allow-hub "
            f"{hub_id} (or --allow-hub for any), or puts a copy in the local Hugging Face cache",
        )

    def check_reachable(self, model: str, timeout: float = PROBE_SECONDS) -> None:
        """Raise a permanent :class:`~chronoserve.errors.ModelLoadError` at once if a download of
        ``model`` cannot work: ``HF_HUB_OFFLINE`` is set, or the hub (or the HTTPS proxy) does not
        accept a connection within ``timeout`` seconds."""
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            raise errors.ModelLoadError(model, "it needs a download and HF_HUB_OFFLINE is set", permanent=True)
        endpoint = os.environ.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT
        proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
        target = urlsplit(proxy or endpoint)
        host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
        what = f"the HTTPS proxy {proxy}" if proxy else f"the Hugging Face hub ({endpoint})"
        if not host:
            raise errors.ModelLoadError(model, f"it needs a download and {what} has no host", permanent=True)
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            raise errors.ModelLoadError(
                model, f"it needs a download and {what} is not reachable from here: {exc}", permanent=True
            ) from None

    def fetch_config(self, repo_id: str) -> Path:
        """``config.json`` of hub repo ``repo_id``, downloaded (the caller checked :meth:`allows`)."""
        self.check_reachable(repo_id)
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(repo_id, CONFIG_FILE))
        except Exception as exc:
            raise errors.UnknownModel(repo_id, f"hub repo {repo_id!r} has no {CONFIG_FILE}: {exc}") from None


def looks_like_hub_id(name: str) -> bool:
    """``owner/name``, neither part empty nor a path step (what a hub id looks like)."""
    parts = name.split("/")
    return len(parts) == 2 and all(p and p not in (".", "..") for p in parts)


def cached_config(repo_id: str) -> Path | None:
    """``config.json`` of hub repo ``repo_id`` if the local Hugging Face cache holds it."""
    if not looks_like_hub_id(repo_id):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, CONFIG_FILE)
    except Exception:
        return None
    return Path(found) if isinstance(found, str) else None


def cached_weights(repo_id: str) -> bool:
    """True if the local Hugging Face cache holds hub repo ``repo_id``'s config and safetensors weights."""
    if cached_config(repo_id) is None:
        return False
    from huggingface_hub import try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(repo_id, WEIGHTS_FILE), str):
            return True
        index = try_to_load_from_cache(repo_id, f"{WEIGHTS_FILE}.index.json")
        if not isinstance(index, str):
            return False
        with open(index, encoding="utf-8") as f:
            shards = set(json.load(f)["weight_map"].values())
        return all(isinstance(try_to_load_from_cache(repo_id, shard), str) for shard in shards)
    except Exception:
        return False
