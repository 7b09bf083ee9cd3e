import socket
from pathlib import Path

import pytest

from daemon.app import _Notifier


def test_systemd_notify_ready_and_watchdog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = _Notifier()
    notifier.send("READY=1")
    notifier.watchdog()
    notifier.watchdog()  # within a second of the last one: not sent again
    notifier.send("STOPPING=1")
    got = [listener.recv(256) for _ in range(3)]
    assert got == [b"READY=1", b"WATCHDOG=1", b"STOPPING=1"]
    listener.close()
