"""How a setting is declared (:func:`knob`) and the rules of the URLs it may hold: where this
project sends things (the endpoint, the webhook, the UI's links) is https, or plain http to
loopback only, never a link-local or metadata address, never with a user name or password."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field


def knob(default: Any, env: str, description: str, *, secret: bool = False, **bounds: Any) -> Any:
    """A setting: a pydantic field that knows its environment variable."""
    return Field(
        default,
        description=description,
        json_schema_extra={"env": env, "secret": secret},
        repr=not secret,
        **bounds,
    )


class InvalidEndpointError(ValueError):
    """The configured endpoint is unusable (bad URL, or plain http to a remote host)."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# Where a cloud machine's metadata service answers (its credentials among them): never a
# destination of anything this project sends.
METADATA_HOSTS = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "100.100.100.200"}
)


def is_link_local(host: str) -> bool:
    """A link-local or cloud metadata address (169.254.169.254, fd00:ec2::254, ...)."""
    if host.lower().rstrip(".") in METADATA_HOSTS:
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_link_local or address == ipaddress.ip_address("fd00:ec2::254")


def check_link(env: str, url: str, *, looks_like: str = "https://HOST/PATH") -> str:
    """A URL this project sends to or shows in alerts: https, or plain http to loopback only,
    never to a link-local or metadata address, never with a user or password in it (it is
    shown in logs and the UI). The messages name ``env``, never the URL's path."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise ValueError(f"{env} is not a valid URL ({exc})") from None
    if parts.username or parts.password:
        raise ValueError(f"{env} must not carry a user name or password")
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(
            f"{env} must look like {looks_like} "
            f"(got scheme {parts.scheme or 'none'!r} and host {host or 'none'!r})"
        )
    if is_link_local(host):
        raise ValueError(
            f"{env} points at a link-local or cloud metadata address ({host}): refused"
        )
    if parts.scheme == "http" and not is_loopback(host):
        raise ValueError(
            f"{env} uses plain http to {host!r}: what it carries would cross the network in "
            "clear text; use https (plain http is allowed only to a loopback address)"
        )
    return url


def check_endpoint(url: str) -> str:
    """Accept ``https://host/path``, or ``http://`` only to a loopback host; the id and appId
    go in their own settings, never in the URL."""
    if "?" in url or "#" in url:
        raise InvalidEndpointError(
            "CDR_API_URL must not carry a query string: the id goes in CDR_API_ID"
        )
    try:
        return check_link("CDR_API_URL", url, looks_like="https://HOST/201511v3/getCdr")
    except ValueError as exc:
        raise InvalidEndpointError(str(exc)) from None
