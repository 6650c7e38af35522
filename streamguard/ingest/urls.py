"""Camera URLs: parsed once, strictly, and never shown with a credential in them.

A camera URL carries credentials in its userinfo (`rtsp://user:pass@host/x`) or, on many cheap
cameras, in its path or query (`rtsp://host/user=admin&password=x&channel=1`). `CameraUrl.shown`
is the URL fit for listings, logs and errors: no userinfo, and every credential-like `key=value`
blanked. Parsing refuses what FFmpeg and this module could read differently (an `@` or `#` after
the host, control characters, a port out of range) with an `InvalidCameraUrl` whose message
never quotes the URL, so an error can never echo a password.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass

CAMERA_SCHEMES = ("rtsp", "rtsps")
MAX_URL_CHARS = 2048
# `key=value` pairs in a path or query whose value is a credential.
_CREDENTIAL = re.compile(
    r"(?i)(?<![a-z0-9_])(user(?:name)?|usr|login|pass(?:word|wd)?|pwd|psw|auth|token|secret"
    r"|(?:api_?)?key|access_token)=([^&;/?#]*)"
)
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_ENCODE_HINT = (
    "percent-encode '@' (%40), '/' (%2F), '?' (%3F), '#' (%23) and ':' (%3A) in the user name and password"
)


class InvalidCameraUrl(ValueError):
    """A camera URL that cannot be used; the message says why without quoting the URL."""


class UnsupportedScheme(InvalidCameraUrl):
    def __init__(self, scheme: str):
        shown = repr(scheme[:16]) if scheme.isascii() and scheme.isalnum() else "none"
        super().__init__(f"a camera needs an rtsp:// or rtsps:// URL; got scheme {shown}")


@dataclass(frozen=True)
class CameraUrl:
    url: str  # as given, credentials included: what FFmpeg opens, never shown
    scheme: str
    host: str  # lower case; an IPv6 address without its brackets
    port: int | None
    rest: str  # path and query, credentials included

    @property
    def shown(self) -> str:
        """The URL without userinfo and with every credential-like `key=value` blanked."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{host}{port}{redact_credentials(self.rest)}"


def parse_camera_url(url: str) -> CameraUrl:
    """Split an rtsp:// or rtsps:// URL; `InvalidCameraUrl` (never quoting it) when it is bad."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidCameraUrl(f"the URL has {len(url)} characters; the limit is {MAX_URL_CHARS}")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise InvalidCameraUrl("the URL holds a space, NUL or another control character; percent-encode it")
    scheme, separator, remainder = url.partition("://")
    if not separator or scheme.lower() not in CAMERA_SCHEMES:
        raise UnsupportedScheme(scheme if separator else "")
    end = next((i for i, c in enumerate(remainder) if c in "/?#"), len(remainder))
    authority, rest = remainder[:end], remainder[end:]
    if "#" in rest:
        raise InvalidCameraUrl(f"a camera URL has no #fragment: {_ENCODE_HINT}")
    if "@" in rest:
        raise InvalidCameraUrl(f"the URL has an '@' after its host: {_ENCODE_HINT}")
    host, port = _host_and_port(authority.rpartition("@")[2])
    return CameraUrl(url=url, scheme=scheme.lower(), host=host, port=port, rest=rest)


def shown_url(url: str) -> str:
    """`CameraUrl.shown` of any string: a URL that does not parse shows as its scheme only."""
    try:
        return parse_camera_url(url).shown
    except InvalidCameraUrl:
        scheme = url.partition("://")[0]
        return f"{scheme if scheme.isascii() and scheme.isalnum() else 'an'} URL that does not parse"


async def allowed_destination(camera: CameraUrl, allow: Sequence[str], timeout_s: float = 5.0) -> bool:
    """Whether `camera`'s host is one `allow` lists: a listed host name, or every address it
    resolves to inside a listed address or CIDR. A name that does not resolve (in time) is not
    allowed. Nothing connects to the camera here."""
    if camera.host in {entry.lower() for entry in allow}:
        return True
    networks = []
    for entry in allow:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:  # a host name, compared above
            continue
    try:
        found = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(camera.host, camera.port, type=socket.SOCK_STREAM),
            timeout_s,
        )
    except (OSError, TimeoutError):
        return False
    addresses = {ipaddress.ip_address(info[4][0].partition("%")[0]) for info in found}
    return bool(addresses) and all(any(a in network for network in networks) for a in addresses)


def redact_credentials(text: str) -> str:
    """Blank the value of every credential-like `key=value` (`password=***`)."""
    return _CREDENTIAL.sub(r"\1=***", text)


def _host_and_port(host_port: str) -> tuple[str, int | None]:
    if host_port.startswith("["):
        address, bracket, after = host_port[1:].partition("]")
        try:
            host = str(ipaddress.IPv6Address(address)) if bracket else ""
        except ValueError:
            host = ""
        if not host:
            raise InvalidCameraUrl(f"the URL's host is not a valid [IPv6] address; {_ENCODE_HINT}")
        if after and not after.startswith(":"):
            raise InvalidCameraUrl(f"the URL's host is followed by stray characters; {_ENCODE_HINT}")
        port = after[1:] if after else None
    else:
        host, colon, port_text = host_port.partition(":")
        port = port_text if colon else None
        if not host:
            raise InvalidCameraUrl("the URL has no host")
        if not _HOST_NAME.fullmatch(host):
            raise InvalidCameraUrl(f"the URL's host is not a host name or address; {_ENCODE_HINT}")
    if port is None or port == "":
        return host.lower(), None
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidCameraUrl(f"the URL's port is not a number from 1 to 65535; {_ENCODE_HINT}")
    return host.lower(), int(port)
