"""`python -m worker WORKER_ID [--concurrency N] [--queues a,b] [--prefetch N|auto] [--burst]`."""

from __future__ import annotations

import argparse
import gc
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .worker import Worker


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="start_worker.sh", description="Run one worker.")
    p.add_argument("worker_id", help="a name for this worker, e.g. worker-1")
    p.add_argument("--concurrency", help="tasks run at once (WORKER_CONCURRENCY)")
    p.add_argument("--queues", help="comma list of queues, in order (WORKER_QUEUES)")
    p.add_argument("--prefetch", help="tasks claimed ahead: a number or auto (WORKER_PREFETCH)")
    p.add_argument(
        "--burst",
        action="store_true",
        help="run what its queues have ready now, then exit: 0 when every task it took "
        "completed or failed by itself, 1 when the dispatcher could not be reached",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # Start-up only creates objects that live for good: no collection until they are
    # frozen (W1 times four workers from launch; this is ~7 % of their imports).
    gc.disable()
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        worker = _prepare(args)
    finally:
        gc.freeze()  # start-up's objects live for good: full collections skip them
        gc.enable()
    return worker if isinstance(worker, int) else worker.run(burst=args.burst)


def _prepare(args: argparse.Namespace) -> Worker | int:
    """The Worker, ready to run, or the exit status of a bad start."""
    from common.config import Config, ConfigError, print_config_error
    from common.logs import set_fields, setup_logging

    overrides = {
        "WORKER_CONCURRENCY": args.concurrency,
        "WORKER_QUEUES": args.queues,
        "WORKER_PREFETCH": args.prefetch,
    }
    try:
        config = Config.from_env()
        changed = {k: v for k, v in overrides.items() if v is not None}
        if changed:
            env = {**config.to_env(), **changed}
            config = Config.from_env(env)
        if not args.worker_id.strip() or len(args.worker_id) > 200:
            raise ConfigError("WORKER_ID must be 1 to 200 characters")
        import tasks

        tasks.load_modules(config.modules)  # the pool processes load them again
    except (ConfigError, ImportError) as exc:
        return print_config_error(exc)
    setup_logging(config.log_level, config.log_format)
    set_fields(worker_id=args.worker_id)
    from .worker import Worker

    worker = Worker(config, args.worker_id)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: worker.stop("interrupted"))
    return worker


if __name__ == "__main__":
    sys.exit(main())
