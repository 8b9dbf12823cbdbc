"""A task's statuses, as the SPEC names them, for every part that shows or checks them.

Standard library only and no imports of the project, so the CLIs can use it without
pulling in the dispatcher (or Flask).
"""

FINISHED = ("completed", "failed", "cancelled")  # final: no transition leaves them
# waiting: submitted with dependencies not all completed (never claimed until pending)
STATUSES = ("waiting", "pending", "in_progress", *FINISHED)
