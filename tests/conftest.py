"""Shared fixtures. Every test runs with the network blocked (loopback excepted)."""

from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

# Keep test artefacts out of the repository's runs/ and data/ folders. The folder holds
# about 2 GB of smoke checkpoints by the end of a session: it is removed when the test
# process exits, unless DYNAMICDET_KEEP_TEST_FILES=1 (then its path is printed).
_TMP = Path(tempfile.mkdtemp(prefix="dynamicdet-tests-"))


def _remove_test_folder(path: Path = _TMP) -> None:
    if os.environ.get("DYNAMICDET_KEEP_TEST_FILES") == "1":
        print(f"\ntest files kept in {path}")
        return
    shutil.rmtree(path, ignore_errors=True)


atexit.register(_remove_test_folder)
os.environ.setdefault("DYNAMICDET_HOME", str(_TMP / "home"))
os.environ.setdefault("DYNAMICDET_DATA", str(_TMP / "data"))
os.environ.setdefault("DYNAMICDET_RESULTS", str(_TMP / "results"))


class NetworkBlocked(RuntimeError):
    pass


def _is_loopback(host) -> bool:
    if host in (None, "localhost", "", b"localhost"):
        return True
    try:
        return ipaddress.ip_address(host if isinstance(host, str) else host.decode()).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Make any non-loopback connection or DNS lookup raise: proves the offline path."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(host):
            raise NetworkBlocked(f"network access attempted: connect({address!r})")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            raise NetworkBlocked(f"network access attempted: getaddrinfo({host!r})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield


@pytest.fixture(scope="session")
def smoke_cfg():
    """The smoke config with its dataset generated and converted (once per session)."""
    # imported here, not at the top: importing dynamicdet configures ultralytics' folders from
    # DYNAMICDET_HOME, which this file sets first
    from dynamicdet.config import load_config
    from dynamicdet.data.coco import prepare_dataset
    from dynamicdet.data.synthetic import generate_from_config

    cfg = load_config("smoke")
    generate_from_config(cfg)
    prepare_dataset(cfg)
    return cfg


def other_value(value):
    """A different value of the same type as a config field's ``value`` (for tests of hashes and cache keys;
    nothing validates it)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_other"
    return [*value, value[0]] if value else [1]
