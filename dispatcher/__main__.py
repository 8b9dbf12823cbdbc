"""`python -m dispatcher`: check the configuration, create or migrate the database, then
become the gunicorn server (gevent workers, see server.py). A bad setting or a database
that cannot be opened stops here, with one line naming the problem, before any server
process starts."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile

from common.config import Config, ConfigError, print_config_error
from common.logs import setup_logging

log = logging.getLogger("dispatcher")


def redacted(url: str) -> str:
    """DATABASE_URL without its password, for logs."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def prepare(config: Config) -> int:
    """Create or migrate the schema and import TASK_MODULES, in a child process: the
    server processes patch the standard library for gevent before they import a database
    driver, so this one never imports one (psycopg picks its way of waiting at import).
    Returns the exit status: 0, or 2 / 3 after printing the one line that says why."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = _prepare(config)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _prepare(config: Config) -> int:
    from .scheduler import BadScheduleFile
    from .storage import open_storage

    try:
        storage = open_storage(config)
        try:
            import tasks

            tasks.load_modules(config.modules)
            if config.schedules_file:
                _apply_schedules(storage, config, tasks.registry)
        finally:
            storage.close()
    except (ConfigError, ImportError) as exc:
        return print_config_error(exc)
    except BadScheduleFile as exc:  # one line naming the file and the problem
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the database refused: one line, no traceback
        print(f"cannot start: {exc} ({redacted(config.database_url)})", file=sys.stderr)
        return 3
    return 0


def _apply_schedules(storage, config: Config, registry) -> None:
    """SCHEDULES_FILE, applied before any server process fires a tick."""
    import time

    from .scheduler import apply_schedules_file

    created, updated = apply_schedules_file(storage, config, registry, now=time.time())
    log.info(
        "SCHEDULES_FILE %s: %d schedules created, %d updated",
        config.schedules_file,
        len(created),
        len(updated),
    )


METRICS_PREFIX = "taskqueue-metrics-"


def metrics_directory() -> str:
    """A fresh, empty directory for Prometheus's multiprocess files, named after this
    process; those of dispatchers no longer running (killed with -9, so they could not
    remove theirs) are removed first."""
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        if not name.startswith(METRICS_PREFIX):
            continue
        pid = name[len(METRICS_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: alive
        return True
    return True


def main() -> int:
    try:
        config = Config.from_env()
        config.check_tls()
        config.check_tokens_file()
    except ConfigError as exc:
        return print_config_error(exc)
    setup_logging(config.log_level, config.log_format)
    status = prepare(config)
    if status:
        return status
    from .server import Server, raise_open_files_limit

    raise_open_files_limit(config.dispatcher_connections, config.dispatcher_processes)
    host = config.dispatcher_host
    log.info(
        "dispatcher starting on %s://%s:%d (%d processes, up to %d connections each), database %s",
        "https" if config.tls_cert_file else "http",
        host,
        config.dispatcher_port,
        config.dispatcher_processes,
        config.dispatcher_connections,
        redacted(config.database_url),
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not (
        config.api_token or config.api_tokens_file
    ):
        log.warning(
            "listening on %s without API_TOKEN or API_TOKENS_FILE: anyone who can reach "
            "this port can use the API and the dashboard",
            host,
        )
    # Prometheus's multiprocess mode: a fresh, empty directory per start, made before
    # the server forks and before anything imports prometheus_client (it reads the
    # variable at import); removed when the server stops.
    metrics_dir = metrics_directory()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    owner = os.getpid()
    try:
        Server(config).run()
    finally:
        # only here: a server process ending by SystemExit unwinds through this frame
        # too (it was forked inside run()), and the others still write to the directory
        if os.getpid() == owner:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
