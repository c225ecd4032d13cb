"""connect(): sim selection, fast one-line failures, version warnings; the shared CARLA CLI flags."""
import argparse
import logging
import socket
import time

import pytest

import carla
import carla_client
from carla_client import connection
from carla_client.cli import add_carla_args, parse_res


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unknown_sim_names_valid_choices():
    with pytest.raises(ValueError, match="unknown sim 'unreal'; valid: auto, carla, embedded"):
        carla_client.connect("unreal")


def test_carla_without_server_fails_fast_with_one_line_naming_host_port():
    port = free_port()
    t0 = time.perf_counter()
    with pytest.raises(carla_client.CarlaConnectionError) as err:
        carla_client.connect("carla", host="127.0.0.1", port=port, timeout=5.0)
    assert time.perf_counter() - t0 < 2.0
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "\n" not in msg


def test_carla_with_a_silent_listener_times_out_within_the_timeout():
    # something accepts TCP on the port but never speaks CARLA's RPC
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        port = srv.getsockname()[1]
        t0 = time.perf_counter()
        with pytest.raises(carla_client.CarlaConnectionError) as err:
            carla_client.connect("carla", port=port, timeout=1.0)
        assert time.perf_counter() - t0 < 4.0
        assert f"127.0.0.1:{port}" in str(err.value) and "\n" not in str(err.value)


def test_auto_without_server_picks_embedded_and_says_why(caplog):
    port = free_port()
    caplog.set_level(logging.INFO, logger="carla_client.connection")
    t0 = time.perf_counter()
    client = carla_client.connect("auto", port=port)
    assert time.perf_counter() - t0 < 2.0
    assert carla_client.sim_kind(client) == "embedded"
    assert any("embedded" in r.message and f":{port}" in r.message for r in caplog.records)


def test_embedded_client_has_the_client_api():
    client = carla_client.connect("embedded", host="ignored", port=1)
    for name in ("get_world", "load_world", "get_available_maps", "set_timeout", "get_client_version",
                 "get_server_version"):
        assert callable(getattr(client, name))
    assert any(m.endswith("Town02") for m in client.get_available_maps())


def test_version_mismatch_is_one_warning(caplog):
    class FakeClient:
        def get_server_version(self):
            return "0.9.14"

        def get_client_version(self):
            return carla.Client("127.0.0.1", 1).get_client_version()

    caplog.set_level(logging.WARNING)
    connection._check_versions(FakeClient())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "0.9.14" in warnings[0].getMessage()


@pytest.mark.parametrize("text,expected", [("800x600", (800, 600)), ("160X120", (160, 120))])
def test_parse_res(text, expected):
    assert parse_res(text) == expected


@pytest.mark.parametrize("text", ["800", "800x", "axb", "0x600", "800x600x3"])
def test_parse_res_rejects(text):
    with pytest.raises(ValueError, match="800x600|range"):
        parse_res(text)


def test_add_carla_args_defaults_and_errors(capsys):
    p = add_carla_args(argparse.ArgumentParser(prog="tool"))
    a = p.parse_args([])
    assert (a.sim, a.host, a.port, a.res, a.sync) == ("auto", "127.0.0.1", 2000, (800, 600), True)
    a = p.parse_args(["--sim", "embedded", "--res", "320x240", "--sync", "--seed", "3"])
    assert (a.sim, a.res, a.sync, a.seed) == ("embedded", (320, 240), True, 3)
    with pytest.raises(SystemExit):
        p.parse_args(["--res", "big"])
    assert "not WIDTHxHEIGHT" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # every loop here is synchronous: --async is refused, not ignored
        p.parse_args(["--async"])
    assert "synchronous mode" in capsys.readouterr().err
