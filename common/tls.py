"""TLS on the client side (docs/SECURITY.md): what an https dispatcher is verified
against, and how a failed verification reads in the logs."""

from __future__ import annotations

import ssl


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """What https connections to a dispatcher verify against: the PEM bundle `ca_file`
    (DISPATCHER_CA_FILE) when given, else the system's store. Certificate and host name
    are always checked. ValueError when `ca_file` holds no certificate."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"DISPATCHER_CA_FILE {ca_file!r}: no PEM certificates ({exc})") from None


def certificate_failure(exc: BaseException) -> str:
    """The "certificate verify failed: ..." text of an unreachable dispatcher, or ""."""
    text = str(exc)
    marker = "certificate verify failed"
    at = text.find(marker)
    if at < 0:
        return ""
    return text[at:].split(" (_ssl.c", 1)[0]
