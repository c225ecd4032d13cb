"""``connect()``: one entry point to a real CARLA server or the embedded simulator.

Client code calls only carla.Client methods on what ``connect`` returns, so it runs unchanged
on both. A missing server must fail fast with ONE readable line (CARLA's own client blocks for
the whole timeout and then raises a generic RuntimeError), and ``auto`` must decide in under
2 s: a TCP connect to host:port is refused instantly when nothing listens, and only when
something does listen do we spend up to the probe timeout on a real RPC.
"""
from __future__ import annotations

import logging
import socket

import carla

logger = logging.getLogger(__name__)

SIMS = ("auto", "carla", "embedded")
AUTO_PROBE_TIMEOUT_S = 2.0


class CarlaConnectionError(ConnectionError):
    """No CARLA server answered at host:port (message is one line, fit for a CLI)."""


def _port_open(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _check_versions(client) -> str:
    server, mine = client.get_server_version(), client.get_client_version()
    if server != mine:
        logger.warning("CARLA client %s and server %s differ; the API may not match", mine, server)
    return server


def _connect_carla(host: str, port: int, timeout: float):
    if not _port_open(host, port, min(timeout, AUTO_PROBE_TIMEOUT_S)):
        raise CarlaConnectionError(f"no CARLA server at {host}:{port} (connection refused or unreachable); "
                                   f"start CarlaUE4 or use --sim embedded")
    client = carla.Client(host, port)
    client.set_timeout(timeout)
    try:
        _check_versions(client)
    except RuntimeError as err:
        raise CarlaConnectionError(f"CARLA server at {host}:{port} did not answer within {timeout:g} s "
                                   f"({str(err).splitlines()[0]})") from None
    return client


def _connect_embedded(timeout: float):
    import carla_embedded  # local import: only the embedded path needs it

    client = carla_embedded.Client()
    client.set_timeout(timeout)
    return client


def connect(sim: str = "auto", host: str = "127.0.0.1", port: int = 2000, timeout: float = 10.0):
    """Return a carla.Client-compatible client.

    Args:
        sim: ``carla`` (a real server, required), ``embedded`` (the built-in simulator; host and
            port are ignored) or ``auto`` (a CARLA server if one answers at host:port within
            2 s, else embedded).
        host, port: the CARLA server.
        timeout: client timeout for every call, s.

    Raises:
        ValueError: unknown ``sim``.
        CarlaConnectionError: ``sim="carla"`` and no server answers.
    """
    if sim not in SIMS:
        raise ValueError(f"unknown sim {sim!r}; valid: {', '.join(SIMS)}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 s, got {timeout}")
    if sim == "carla":
        return _connect_carla(host, port, timeout)
    if sim == "embedded":
        return _connect_embedded(timeout)
    if _port_open(host, port, AUTO_PROBE_TIMEOUT_S):
        try:
            client = _connect_carla(host, port, min(timeout, AUTO_PROBE_TIMEOUT_S))
        except CarlaConnectionError as err:
            logger.info("sim=auto: using the embedded simulator: %s", err)
            return _connect_embedded(timeout)
        client.set_timeout(timeout)
        logger.info("sim=auto: using the CARLA server at %s:%d (it answered)", host, port)
        return client
    logger.info("sim=auto: using the embedded simulator (no CARLA server at %s:%d)", host, port)
    return _connect_embedded(timeout)


def sim_kind(client) -> str:
    """``carla`` for a real carla.Client, else ``embedded`` (for the manifest's ``sim`` column)."""
    return "carla" if type(client) is carla.Client else "embedded"
