"""Fixtures of the worker-loop tests (a dispatcher served in a thread; see served_dispatcher.py)."""

from __future__ import annotations

from served_dispatcher import gate_task, served, workers

__all__ = ["gate_task", "served", "workers"]
