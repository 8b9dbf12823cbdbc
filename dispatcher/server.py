"""The HTTP server: gunicorn's arbiter over gevent worker processes.

Each server process serves every connection in a greenlet of its own, so a client that
is slow to send its request, or a long poll held for 30 s, costs a few kilobytes of
memory and not a thread: a few hundred of them leave `/health`, submissions and the
other workers' claims answered at once (docs/RELIABILITY.md has the figures).

What a client gets, on top of gunicorn's gevent worker:
- a new connection must send its request head within DISPATCHER_READ_TIMEOUT, and a
  kept-alive one its next request head within that time of its first byte (it may stay
  idle up to KEEPALIVE_S before that); a body may pause at most DISPATCHER_READ_TIMEOUT
  between two reads (a 408, see app.py). Slower clients are cut off.
- a body the application did not read is drained up to DRAIN_MAX_BYTES, then the
  connection is closed (so an unauthenticated client cannot make us read its upload);
- errors gunicorn answers itself (a malformed request line or header, a bad
  Content-Length, a request line or header over the limits) are JSON `{"error": ...}`
  like every other error.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import resource
import ssl
import sys
import time
from functools import partial

import gevent
from gevent import socket as gsocket
from gunicorn import glogging, http, util
from gunicorn.app.base import BaseApplication
from gunicorn.workers.ggevent import GeventWorker

from common import logs
from common.config import Config

log = logging.getLogger("dispatcher")

KEEPALIVE_S = 75  # an idle kept-alive connection is closed after this
BOOT_RETRY_S = 20.0  # a process started while the database is away waits this long
BOOT_RETRY_PAUSE_S = 1.0
DRAIN_MAX_BYTES = 65536  # unread body discarded to keep a connection; more: close it


class Server(BaseApplication):
    def __init__(self, config: Config):
        self.queue_config = config
        super().__init__()

    def load_config(self) -> None:
        c = self.queue_config
        settings = {
            "bind": f"{c.dispatcher_host}:{c.dispatcher_port}",
            "workers": c.dispatcher_processes,
            "worker_class": "dispatcher.server.Worker",
            "worker_connections": c.dispatcher_connections,
            "keepalive": KEEPALIVE_S,
            "timeout": 60,
            "graceful_timeout": 10,
            "loglevel": c.log_level.lower(),
            "proc_name": "taskqueue-dispatcher",
            "control_socket_disable": True,  # one shared path would clash between dispatchers
            "logger_class": GunicornLogger,  # its lines in LOG_FORMAT too (no access log)
            "child_exit": child_exit,
        }
        if c.tls_cert_file:  # HTTPS only (checked at start: Config.check_tls)
            settings["certfile"] = c.tls_cert_file
            settings["keyfile"] = c.tls_key_file
            settings["ssl_context"] = tls_context
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from .app import create_app  # in each server process, after the fork
        from .storage.errors import DatabaseUnavailable

        # A process gunicorn starts again (one died) while the database is away must not
        # fail its boot: gunicorn stops every process on a boot error. It tries for
        # BOOT_RETRY_S, then exits as a process that died, and gunicorn starts another.
        deadline = time.monotonic() + BOOT_RETRY_S
        while True:
            try:
                app = create_app(self.queue_config)
                break
            except DatabaseUnavailable as exc:
                if time.monotonic() > deadline:
                    log.error("server process %d gives up for now: %s", os.getpid(), exc)
                    sys.exit(1)  # not a boot error (3): gunicorn replaces the process
                log.warning("server process %d waits for the database: %s", os.getpid(), exc)
                time.sleep(BOOT_RETRY_PAUSE_S)
        # What start-up made lives for good: out of the collector's sight, a full
        # collection walks only what requests make (it took ~13 ms of a 1,000-task
        # submission otherwise, once every few calls).
        gc.freeze()
        return app


def tls_context(config, default_ssl_context_factory) -> ssl.SSLContext:
    """gunicorn's server context (TLS_CERT_FILE, TLS_KEY_FILE), TLS 1.2 at least, with
    the handshake left to Worker.handle: there it has DISPATCHER_READ_TIMEOUT like a
    request head, and a failed one (plain HTTP, a client that does not trust us) closes
    the connection with a DEBUG line instead of a traceback per connection."""
    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.wrap_socket = partial(context.wrap_socket, do_handshake_on_connect=False)
    return context


def child_exit(server, worker) -> None:
    """A server process ended: its live-gauge files go (prometheus_client's multiprocess
    mode). Not through metrics.py: importing it here would make the arbiter's own
    counter files."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


class GunicornLogger(glogging.Logger):
    """gunicorn's error log (start, stop, worker boots and crashes) in LOG_FORMAT: with
    `json`, each of its lines is a JSON object like ours. Its access log stays off."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        if logs.json_mode():
            for handler in self.error_log.handlers:
                logs.use_format(handler, "json")


def raise_open_files_limit(connections: int, processes: int) -> None:
    """Lift the soft limit on open files towards the hard one: every connection is a
    descriptor, and the default soft limit (often 1,024) is below DISPATCHER_CONNECTIONS
    times the processes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections * processes + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def _client_gone(exc: OSError) -> bool:
    """The client closed or reset its connection (over TLS: without a close_notify)."""
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return True
    return exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF)


def _pending(client) -> int:
    """Bytes a TLS connection has decrypted but not yet handed out (0 without TLS)."""
    pending = getattr(client, "pending", None)
    return pending() if pending is not None else 0


class HeadTimeout(Exception):
    """The client did not send its request head in time."""


class Worker(GeventWorker):
    """gunicorn's gevent worker with read time-outs, bounded drains and JSON errors."""

    def init_process(self) -> None:
        self.read_timeout = float(self.app.queue_config.dispatcher_read_timeout)
        util.write_error = write_json_error  # gunicorn's own answers (see handle_error)
        super().init_process()

    def handle_quit(self, sig, frame) -> None:
        """SIGINT or SIGQUIT (Ctrl-C reaches every process of the group, and the arbiter
        sends SIGQUIT too): exit at once, as gunicorn's quick shutdown does, but without
        its sys.exit() in a spawned greenlet, which gevent reports as a traceback."""
        self.alive = False

        def leave() -> None:
            self.cfg.worker_int(self)
            gevent.sleep(0.1)
            os._exit(0)  # nothing left to flush: results are committed before answered

        gevent.spawn(leave)

    def handle(self, listener, client, addr) -> None:
        """Serve one connection's requests (HTTP/1.x) until it closes or times out."""
        client.setblocking(1)
        client.settimeout(self.read_timeout)  # each read and write of this connection
        if not self._handshake(client, addr):
            return
        parser = http.get_parser(self.cfg, client, addr)
        name = listener.getsockname()
        req = None
        idle = self.read_timeout  # a new connection sends its request at once
        graceful = True
        try:
            while self.alive or req is None:
                req = None
                # (with TLS, bytes already decrypted wait in the SSL object: pending())
                if not parser.unreader.buf.getbuffer().nbytes and not _pending(client):
                    try:
                        gsocket.wait_read(client.fileno(), timeout=idle)
                    except TimeoutError:
                        break
                with gevent.Timeout(self.read_timeout, HeadTimeout):
                    req = next(parser)
                self.handle_request(name, req, client, addr)
                deadline = time.monotonic() + self.read_timeout
                if not parser.finish_body(deadline=deadline, max_bytes=DRAIN_MAX_BYTES):
                    break
                idle = self.cfg.keepalive
        except HeadTimeout:
            write_json_error(client, 408, "Request Timeout", self._slow_message("request head"))
        except (StopIteration, http.errors.NoMoreData):
            pass
        except TimeoutError:  # a read of the body stalled while draining it
            graceful = False
        except OSError as exc:
            graceful = False
            if not _client_gone(exc):
                self.log.exception("socket error serving a request")
        except Exception as exc:
            self.handle_error(req, client, addr, exc)
        finally:
            if graceful:
                util.close_graceful(client, timeout=1.0, max_drain=DRAIN_MAX_BYTES)
            else:
                util.close(client)

    def _handshake(self, client, addr) -> bool:
        """With TLS, the handshake (see tls_context), within DISPATCHER_READ_TIMEOUT;
        False (and the connection closed) when it fails. Without TLS: True."""
        do_handshake = getattr(client, "do_handshake", None)
        if do_handshake is None:
            return True
        try:
            do_handshake()
        except OSError as exc:  # ssl.SSLError, a time-out, a reset
            self.log.debug("TLS handshake with %s failed: %s", addr, exc)
            util.close(client)
            return False
        return True

    def _slow_message(self, what: str) -> str:
        return f"{what} not received within {self.read_timeout:g} s (DISPATCHER_READ_TIMEOUT)"


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's util.write_error, answering JSON instead of an HTML page."""
    message = mesg or reason
    if status_int >= 500:
        message = "internal error; see the dispatcher log"
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"X-Request-ID: {logs.new_request_id()}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    try:
        util.write_nonblock(sock, head.encode("latin-1") + body)
    except OSError:
        pass
