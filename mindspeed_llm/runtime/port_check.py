"""Is MASTER_PORT free? ``python -m mindspeed_llm.runtime.port_check PORT`` (used by the example scripts).

torchrun's agent binds MASTER_PORT before any of our code runs, so a stale training process still
holding it makes the next launch fail with an obscure rendezvous error. The scripts call this first:
it exits 0 when the port can be bound, else prints which process holds it and exits 1.
"""

from __future__ import annotations

import socket
import sys


def port_is_free(port: int, host: str = "0.0.0.0") -> bool:
    """True when a listening socket can be bound to ``port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_holder(port: int) -> str | None:
    """``PID n (command line)`` of the process listening on ``port``, when the OS lets us see it."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, PermissionError):
        return None
    for conn in connections:
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            try:
                cmd = " ".join(psutil.Process(conn.pid).cmdline()) or psutil.Process(conn.pid).name()
            except psutil.Error:
                cmd = "?"
            return f"PID {conn.pid} ({cmd[:200]})"
    return None


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 if the port is free, 1 (with a message naming the holder) if not."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m mindspeed_llm.runtime.port_check MASTER_PORT", file=sys.stderr)
        return 2
    port = int(argv[0])
    if port_is_free(port):
        return 0
    holder = port_holder(port)
    who = (
        f"held by {holder}"
        if holder
        else f"held by another process (run `ss -ltnp | grep :{port}` to see it)"
    )
    print(f"error: MASTER_PORT {port} is already in use, {who}. A previous training run may still be alive: "
          f"stop it (kill <PID>) or set another MASTER_PORT.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
