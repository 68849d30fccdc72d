"""Where the embedded Triton answers: its endpoint, the ports chosen once per state directory
and claimed again by every restart, and gRPC clients that connect afresh to a server restarted
on them."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from tasks.core.errors import ConveyorError
from tasks.core.settings import Settings

if TYPE_CHECKING:
    import tritonclient.grpc as grpcclient

HOST = "127.0.0.1"
PORTS_FILE = "ports.json"  # chosen once per state directory, reused by every restart


class Endpoint(BaseModel):
    """How to reach a Triton server: HTTP and gRPC as host:port, without a scheme.

    `key_file` is where the embedded server's control key is kept (a reference, never the key:
    endpoints travel in task results). Unset, the key comes from the environment or a Secret
    block (see `tasks.core.credentials`)."""

    http: str
    grpc: str
    key_file: str | None = None
    # The edge in front of the replicas: TLS checked against this CA file (None: plain), and
    # conveyor's client key sent with every request (`credentials.edge_headers`).
    via_edge: bool = False
    tls_ca_file: str | None = None


class TritonServerError(ConveyorError):
    """The embedded Triton could not be started, found or stopped."""


class PortInUseError(TritonServerError):
    """A configured port is already taken."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def claim_port(port: int, variable: str, chosen_in: Path | None = None) -> int:
    """`port`, checked free; `chosen_in`: the ports file it was chosen in by an earlier start."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # What Triton's own listeners set: connections of a killed server left in TIME_WAIT do
        # not hold the port, a listener of another process does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            why = (
                f"chosen in {chosen_in} when this state directory's Triton first started, so "
                "that its clients keep their address across restarts"
                if chosen_in
                else f"{variable}={port}"
            )
            fix = (
                f"delete {chosen_in} to have new ports chosen (its clients then need the new ones)"
                if chosen_in
                else f"choose another port, or set {variable}=0 for a free one"
            )
            raise PortInUseError(
                f"port {port} on {HOST} is already in use ({why}); stop what holds it "
                f"(`ss -ltnp 'sport = :{port}'` shows it), or {fix}"
            ) from exc
    return port


def kept_ports(settings: Settings) -> dict[str, int]:
    """The server's ports: the configured ones, else those chosen when this state directory's
    server first started (kept in `PORTS_FILE`), else free ones, then kept. A server that is
    restarted (killed, `conveyor triton down/up`, supervised back) answers where it did."""
    path = settings.triton_dir / PORTS_FILE
    try:
        kept = {k: int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        kept = {}
    configured = {
        "http": (settings.triton_http_port, "CONVEYOR_TRITON_HTTP_PORT"),
        "grpc": (settings.triton_grpc_port, "CONVEYOR_TRITON_GRPC_PORT"),
        "metrics": (settings.triton_metrics_port, "CONVEYOR_TRITON_METRICS_PORT"),
    }
    ports: dict[str, int] = {}
    for name, (port, variable) in configured.items():
        if port:
            ports[name] = claim_port(port, variable)
        elif kept.get(name):
            ports[name] = claim_port(kept[name], variable, chosen_in=path)
        else:
            ports[name] = free_port()
    if ports != kept:
        path.write_text(json.dumps(ports))
    return ports


def grpc_client(url: str, root_certificates: str | None = None) -> grpcclient.InferenceServerClient:
    """A gRPC client with a subchannel of its own. gRPC shares subchannels per address across a
    process, with their reconnect back-off: a client made for a Triton restarted on its kept
    ports would inherit the dead server's "connection refused" for up to the back-off (seconds)
    and fail at once. tritonclient's default message sizes and keepalive are kept."""
    import tritonclient.grpc as grpcclient

    keepalive = grpcclient.KeepAliveOptions()
    return grpcclient.InferenceServerClient(
        url,
        ssl=root_certificates is not None,
        root_certificates=root_certificates,
        channel_args=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ],
    )
