"""The edge: nginx in front of the Triton replicas (`infra/nginx/edge.conf`), rendered for one
directory and started there, by `make stack` and by the tests that need one.

Client keys come from `CONVEYOR_EDGE_CLIENT_KEYS` (`name=key,name=key`, or a JSON object of
name → key) or the Prefect Secret block that `CONVEYOR_EDGE_CLIENT_KEYS_BLOCK` names. They are
written to `clients.map` beside the rendered config, readable by its owner only; revoking a key
is rendering without it and `reload` (nginx finishes the requests in flight; idle keep-alive
connections are closed, so a client sending on one at that instant sees an error).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from infra.stack.processes import system_binary
from tasks.core import credentials
from tasks.core.errors import ConveyorError
from tasks.core.names import CANARY_SUFFIX, CANDIDATE_SUFFIX
from tasks.serving import edge_certificate
from tasks.serving.triton_ports import HOST, free_port

TEMPLATE = Path(__file__).parent / "nginx" / "edge.conf"
KEYS_ENV = "CONVEYOR_EDGE_CLIENT_KEYS"
KEYS_BLOCK_ENV = "CONVEYOR_EDGE_CLIENT_KEYS_BLOCK"
# Names go to the access log and a metric label; keys into a config file: both kept to
# characters that need no quoting there. 24 characters of a URL-safe token: ~140 bits.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{24,256}$")
# A balancer worker per core is nginx's advice; two keep the edge's cost on a 2-core host low.
WORKERS = 2
# A replica that refused a connection rests this long before nginx tries it again.
FAIL_TIMEOUT_S = 2
ROUTES = "routes"  # beside nginx.conf: the canary routes nginx includes (edge_routes.py)


class EdgeError(ConveyorError):
    """The edge could not be configured or started."""


@dataclass(frozen=True)
class Upstream:
    http: str  # host:port of one replica
    grpc: str
    weight: int = 1


@dataclass(frozen=True)
class Tls:
    certificate: Path  # what nginx serves
    key: Path
    ca: Path | None = None  # what callers trust; None: the operator's CA, given them apart

    @property
    def trusted(self) -> Path:
        """The file a caller here checks the edge against."""
        return self.ca or self.certificate


def parse_keys(text: str) -> dict[str, str]:
    """`name=key,name=key` or a JSON object: name → key, each checked."""
    text = text.strip()
    if text.startswith("{"):
        pairs = json.loads(text)
    else:
        pairs = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            name, sep, key = item.partition("=")
            if not sep:
                raise EdgeError(
                    f"{KEYS_ENV}: {name!r} has no key; write each client as name=key, "
                    "separated by commas"
                )
            pairs[name.strip()] = key.strip()
    for name, key in pairs.items():
        if not NAME_PATTERN.match(name):
            raise EdgeError(
                f"{KEYS_ENV}: client name {name!r} must be lower-case letters, digits, - or _ "
                "(it labels the access log and the per-client metric)"
            )
        if not isinstance(key, str) or not KEY_PATTERN.match(key):
            raise EdgeError(
                f"{KEYS_ENV}: the key of client {name!r} must be 24 to 256 URL-safe characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
    if len(set(pairs.values())) != len(pairs):
        raise EdgeError(f"{KEYS_ENV}: two clients share a key; give each its own")
    return pairs


def configured_keys() -> dict[str, str]:
    text = credentials.secret(KEYS_ENV, KEYS_BLOCK_ENV)
    if not text:
        raise EdgeError(
            f"the edge needs client keys: set {KEYS_ENV}=name=key,... or name a Secret block "
            f"holding them in {KEYS_BLOCK_ENV}"
        )
    return parse_keys(text)


def render(
    directory: Path,
    upstreams: list[Upstream],
    http_port: int,
    grpc_port: int,
    tls: Tls | None,
    rate_per_s: int,
    burst: int,
    local: bool = True,
) -> str:
    """The edge's nginx.conf. `local`: nginx runs on this host as this user, whose workers must
    see the canary routes conveyor writes under `directory` (as root, nginx would run them as
    `nobody`, which cannot enter a private directory); compose's container keeps its own."""

    def servers(kind: str) -> str:
        return "\n".join(
            f"        server {getattr(u, kind)} weight={u.weight} max_fails=1 "
            f"fail_timeout={FAIL_TIMEOUT_S}s;"
            for u in upstreams
            if u.weight > 0
        )

    tls_lines = (
        f"        ssl_certificate {tls.certificate};\n"
        f"        ssl_certificate_key {tls.key};\n"
        "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        "        ssl_session_cache shared:tls:10m;"
        if tls
        else ""
    )
    owner = pwd.getpwuid(os.geteuid()).pw_name
    values = {
        "USER": f"user {owner};\n" if local and os.geteuid() == 0 else "",
        "WORKERS": str(WORKERS),
        "DIR": str(directory),
        "RATE": str(rate_per_s),
        "BURST": str(burst),
        "HOST": HOST,
        "HTTP_PORT": str(http_port),
        "GRPC_PORT": str(grpc_port),
        "TLS_FLAG": " ssl" if tls else "",
        "TLS": tls_lines,
        "HTTP_SERVERS": servers("http"),
        "GRPC_SERVERS": servers("grpc"),
        "CANDIDATE_RE": re.escape(CANDIDATE_SUFFIX),
        "CANARY": CANARY_SUFFIX,
        "CANARY_RE": re.escape(CANARY_SUFFIX),
        "CANARY_PAD": " " * len(CANARY_SUFFIX),
        # Buckets 1-99 a percent each, the rest 100: a route of share s is its first 100 s.
        "BUCKETS": "\n".join(f"        1% {b};" for b in range(1, 100)) + "\n        * 100;",
    }
    text = TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    left = re.findall(r"^[^#]*?(@[A-Z_]+@)", text, flags=re.MULTILINE)
    if left:
        raise EdgeError(f"{TEMPLATE} has placeholders render() does not fill: {left}")
    return text


def write(directory: Path, config: str, keys: Mapping[str, str]) -> Path:
    """The config and its private key map, checked by `nginx -t` before anything uses them."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    # Canary routes: conveyor writes them here (CONVEYOR_EDGE_ROUTES_DIR) during a release.
    (directory / ROUTES).mkdir(exist_ok=True)
    write_keys(directory, keys)
    path = directory / "nginx.conf"
    path.write_text(config)
    checked = subprocess.run(
        [nginx_binary(), "-t", "-q", "-e", "stderr", "-c", str(path), "-p", str(directory)],
        capture_output=True,
        text=True,
    )
    if checked.returncode != 0:
        raise EdgeError(f"nginx refused {path}: {checked.stderr.strip()}")
    return path


def write_keys(directory: Path, keys: Mapping[str, str]) -> None:
    """The key → name map nginx includes, readable by its owner only from its first byte."""
    clients = directory / "clients.map"
    fd = os.open(clients, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.writelines(f'"Bearer {key}" {name};\n' for name, key in sorted(keys.items()))


def nginx_binary() -> str:
    return system_binary("nginx", "nginx")


def self_signed(directory: Path) -> Tls:
    """The edge's certificate for 127.0.0.1 and localhost, signed by a CA of its own that
    callers trust (`tasks.serving.edge_certificate`): made once per directory, the certificate
    renewed when it is due, so a stack that starts again never serves an expired one."""
    made = edge_certificate.ensure(directory)
    return Tls(certificate=made.certificate, key=made.key, ca=made.ca)


def start(directory: Path, log: Path) -> subprocess.Popen[bytes]:
    """nginx in the foreground of its own session (`daemon off`), so the caller owns the pid."""
    with log.open("ab") as handle:
        return subprocess.Popen(
            [
                nginx_binary(),
                "-e",
                "stderr",
                "-c",
                str(directory / "nginx.conf"),
                "-p",
                str(directory),
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def reload(directory: Path) -> None:
    """New config (keys, weights): nginx's old workers finish the requests they hold, and close
    their idle keep-alive connections (a client that sends on one as it closes sees an error)."""
    pid = int((directory / "nginx.pid").read_text())
    os.kill(pid, signal.SIGHUP)


def wait_ready(url: str, timeout_s: float = 30.0, context: object = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context):  # type: ignore[arg-type]
                return
        except urllib.error.HTTPError:
            return  # nginx answers: up
        except OSError as exc:
            if time.monotonic() > deadline:
                raise EdgeError(f"the edge did not answer {url} in {timeout_s:.0f} s") from exc
            time.sleep(0.1)


@contextlib.contextmanager
def serve(
    directory: Path,
    upstreams: list[Upstream],
    keys: Mapping[str, str],
    tls: Tls | None,
    rate_per_s: int,
    burst: int,
) -> Iterator[tuple[int, int]]:
    """An edge for the duration of the block, on free ports: (http port, grpc port)."""
    directory.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port = free_port(), free_port()
    write(
        directory, render(directory, upstreams, http_port, grpc_port, tls, rate_per_s, burst), keys
    )
    process = start(directory, directory / "nginx.log")
    try:
        scheme = "https" if tls else "http"
        context = ssl.create_default_context(cafile=str(tls.trusted)) if tls else None
        wait_ready(f"{scheme}://{HOST}:{http_port}/v2/health/live", context=context)
        yield http_port, grpc_port
    finally:
        process.terminate()
        process.wait(15)


def main(argv: list[str] | None = None) -> None:
    """`python -m infra.edge render`: the config compose's edge mounts (see docker-compose.yml)."""
    parser = argparse.ArgumentParser(description="Render the edge's nginx config and key map.")
    commands = parser.add_subparsers(dest="command", required=True)
    r = commands.add_parser("render")
    r.add_argument("--dir", type=Path, required=True, help="where nginx sees the files")
    r.add_argument("--out", type=Path, required=True, help="where to write them here")
    r.add_argument("--replica", action="append", required=True, help="http/grpc host:port each")
    r.add_argument("--tls-cert", type=Path, required=True)
    r.add_argument("--tls-key", type=Path, required=True)
    r.add_argument("--http-port", type=int, default=8443)
    r.add_argument("--grpc-port", type=int, default=8444)
    r.add_argument("--rate", type=int, default=100, help="requests/s per client")
    r.add_argument("--burst", type=int, default=200)
    args = parser.parse_args(argv)
    try:
        keys = configured_keys()
        upstreams = [Upstream(*replica.split("/", 1)) for replica in args.replica]
        # The paths nginx reads are the container's; the files are written here.
        tls = Tls(args.dir / args.tls_cert.name, args.dir / args.tls_key.name)
        config = render(
            args.dir,
            upstreams,
            args.http_port,
            args.grpc_port,
            tls,
            args.rate,
            args.burst,
            local=False,
        )
    except (EdgeError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    (args.out / ROUTES).mkdir(parents=True, exist_ok=True)
    (args.out / "nginx.conf").write_text(config)
    write_keys(args.out, keys)
    print(f"wrote {args.out / 'nginx.conf'} and {args.out / 'clients.map'} (mode 0600)")


if __name__ == "__main__":
    main()
