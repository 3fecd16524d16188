"""The example scripts' MASTER_PORT check names the process that holds the port."""

from __future__ import annotations

import os
import socket

from mindspeed_llm.runtime.port_check import main


def test_free_port_passes():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main([str(port)]) == 0


def test_busy_port_names_the_holder(capsys):
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main([str(port)]) == 1
    err = capsys.readouterr().err
    assert f"MASTER_PORT {port} is already in use" in err
    assert f"PID {os.getpid()}" in err or "ss -ltnp" in err
