"""Ray's token authentication, from the client side (Ray-free: runs before ``import ray``).

Ray 2.60 turns token authentication on by default: a cluster started with a token refuses
every client without it, after a 20-second retry loop. raytune-torch finds the token, hands it
to Ray through the environment (``RAY_AUTH_MODE=token`` plus the token's file or value) before
Ray is imported, and checks it against the cluster at once, so a missing or wrong token is a
clear error in well under a second. The token itself is never printed.

Where the token comes from, first found wins:

1. ``--token-file PATH`` (``token_file=``),
2. ``RAY_AUTH_TOKEN`` (the token itself),
3. ``RAY_AUTH_TOKEN_PATH`` (a file),
4. ``~/.ray/auth_token`` (the file Ray writes when it creates a cluster).

``RAY_AUTH_MODE=disabled`` opts out (for clusters started without authentication).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

from .exceptions import ClusterError

__all__ = ["Token", "find_token", "client_env", "check_dashboard", "auth_headers", "LOOKED_IN"]

LOOKED_IN = "--token-file, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token"


@dataclass(frozen=True)
class Token:
    value: str = ""
    source: str = ""  # where it came from, for messages (never the value)

    def __bool__(self) -> bool:
        return bool(self.value)

    def __repr__(self) -> str:  # never show the value
        return f"Token(source={self.source!r})"


def _read(path: str, what: str) -> str:
    try:
        with open(os.path.expanduser(path)) as fh:
            value = fh.read().strip()
    except OSError as exc:
        raise ClusterError(f"cannot read the Ray token file {path!r} ({what}): {exc.strerror}") from None
    if not value:
        raise ClusterError(f"the Ray token file {path!r} ({what}) is empty")
    return value


def find_token(token_file: str | os.PathLike | None = None) -> Token:
    """The client's token and where it came from; an empty :class:`Token` when there is none."""
    if token_file:
        return Token(_read(str(token_file), "--token-file"), f"--token-file {token_file}")
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return Token(os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN")
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path = os.environ["RAY_AUTH_TOKEN_PATH"]
        return Token(_read(path, "RAY_AUTH_TOKEN_PATH"), f"RAY_AUTH_TOKEN_PATH {path}")
    default = os.path.expanduser("~/.ray/auth_token")
    if os.path.isfile(default):
        return Token(_read(default, "Ray's default"), default)
    return Token()


def disabled() -> bool:
    return os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled"


def client_env(token_file: str | os.PathLike | None = None) -> Token:
    """Prepare this process (and the Ray it will import) to talk to a cluster: with a token
    found, ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` (for ``--token-file``) are set.
    Returns the token (empty when none was found or authentication is disabled)."""
    if disabled():
        return Token()
    token = find_token(token_file)
    if token:
        os.environ["RAY_AUTH_MODE"] = "token"
        if token_file:
            os.environ["RAY_AUTH_TOKEN_PATH"] = os.path.abspath(os.path.expanduser(str(token_file)))
            os.environ.pop("RAY_AUTH_TOKEN", None)
    return token


def auth_headers(token: Token) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.value}"} if token else {}


def refused(address: str, token: Token) -> ClusterError:
    """The error for a cluster that refused this client's credentials."""
    if not token:
        return ClusterError(
            f"the Ray cluster at {address} requires token authentication and no token was found (looked in "
            f"{LOOKED_IN}); copy the cluster's token (the head node's ~/.ray/auth_token) and pass it with "
            f"--token-file PATH or RAY_AUTH_TOKEN_PATH")
    return ClusterError(
        f"the Ray cluster at {address} refused the token from {token.source}; use the token of that cluster "
        f"(the head node's ~/.ray/auth_token)")


def check_dashboard(address: str, token: Token, timeout_s: float = 10.0) -> dict:
    """Ask the dashboard (Jobs API) at ``address`` for its version with the token. Returns the
    version answer.

    Raises:
        ClusterError: nothing answers, it is not a Ray dashboard, or the token is missing or wrong.
    """
    url = address.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ClusterError(f"--address {address!r} is not a Ray dashboard URL: give http://HEAD:8265 (reach a remote "
                           f"cluster through `ray dashboard CLUSTER.yaml` or `kubectl port-forward`, then "
                           f"http://127.0.0.1:8265)")
    request = urllib.request.Request(f"{url}/api/version", headers=auth_headers(token))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise refused(url, token) from None
        raise ClusterError(f"{url} answered HTTP {exc.code} to /api/version: is it a Ray dashboard?") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClusterError(f"no Ray dashboard answers at {url} ({reason}); is the cluster up and the port forwarded "
                           f"(`ray dashboard CLUSTER.yaml`, `kubectl port-forward svc/HEAD-svc 8265:8265`)?") from None
    try:
        return json.loads(body)
    except ValueError:
        raise ClusterError(f"{url}/api/version did not answer JSON: is it a Ray dashboard?") from None
