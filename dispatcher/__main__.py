"""`python -m dispatcher`: check the configuration, create or migrate the database, then
become the gunicorn server (gthread workers). A bad setting stops here, with one line
naming the key, before any server process starts."""

from __future__ import annotations

import gc
import logging
import re
import sys

from gunicorn.app.base import BaseApplication

from common.config import Config, ConfigError
from common.logs import setup_logging

from .errors import DatabaseUnavailable

log = logging.getLogger("dispatcher")


class Server(BaseApplication):
    def __init__(self, config: Config):
        self.queue_config = config
        super().__init__()

    def load_config(self) -> None:
        c = self.queue_config
        settings = {
            "bind": f"{c.dispatcher_host}:{c.dispatcher_port}",
            "workers": c.dispatcher_processes,
            "threads": c.dispatcher_threads,
            "worker_class": "gthread",
            "keepalive": 75,
            "timeout": 60,
            "graceful_timeout": 10,
            "loglevel": c.log_level.lower(),
            "proc_name": "taskqueue-dispatcher",
            "control_socket_disable": True,  # one shared path would clash between dispatchers
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from .app import create_app  # in each server process, after the fork

        app = create_app(self.queue_config)
        # What start-up made lives for good: out of the collector's sight, a full
        # collection walks only what requests make (it took ~13 ms of a 1,000-task
        # submission otherwise, once every few calls).
        gc.freeze()
        return app


def redacted(url: str) -> str:
    """DATABASE_URL without its password, for logs."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def main() -> int:
    try:
        config = Config.from_env()
        setup_logging(config.log_level)
        from .storage import open_storage

        open_storage(config).close()  # create the schema once, before the fork
        import tasks

        tasks.load_modules(config.modules)  # a bad TASK_MODULES stops here, not in a fork
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"configuration error: TASK_MODULES: {exc}", file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:
        print(f"cannot start: {exc} ({redacted(config.database_url)})", file=sys.stderr)
        return 3
    host = config.dispatcher_host
    where = redacted(config.database_url)
    log.info(
        "dispatcher starting on http://%s:%d (%d processes x %d threads), database %s",
        host,
        config.dispatcher_port,
        config.dispatcher_processes,
        config.dispatcher_threads,
        where,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not config.api_token:
        log.warning(
            "listening on %s without API_TOKEN: anyone who can reach this port can use the API",
            host,
        )
    Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
