"""Schemathesis against a live dispatcher, from the dispatcher's own GET /openapi.json.

It generates requests from the document (valid ones, and ones that break it on purpose),
follows the documented links (a new task's id to GET, cancel, retry), and checks every
answer: no 5xx, the status is documented, the body matches its schema, invalid input is
refused, the token is enforced, a wrong method is a 405 with an Allow header.

Not checked: `positive_data_acceptance` (a schema-valid task may still be refused: its
payload is judged by its task type, with rules JSON Schema cannot state, e.g. primes'
start <= limit) and `object_level_authorization` (one token, no per-user objects).

The dispatcher runs with MAX_WAIT_SECONDS=0.5 so generated long polls stay short. Run by
hand with more examples: ST_MAX_EXAMPLES=200 ST_SEED=7 pytest tests/integration/test_schemathesis.py
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.pg import fresh_schema_url

pytestmark = pytest.mark.integration

TOKEN = "schemathesis-token"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "use_after_free",
    "ensure_resource_availability",
    "ignored_auth",
)


# A body over MAX_REQUEST_BYTES is refused with 413, which schemathesis does not count as
# a refusal of invalid data unless told (a batch above MAX_BATCH can be both).
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]
"""


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    """DATABASE_URL for the dispatcher: a file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/tasks.db"
    else:
        with fresh_schema_url() as url:
            yield url


def test_schemathesis_finds_no_5xx_and_no_answer_off_the_document(database, make_cluster, tmp_path):
    # `database` comes first: its schema is dropped after the dispatcher has stopped
    cluster = make_cluster(
        DATABASE_URL=database,
        API_TOKEN=TOKEN,
        MAX_WAIT_SECONDS="0.5",
        WORKER_POLL_INTERVAL="0.5",
        LOG_LEVEL="WARNING",
    )
    dispatcher = cluster.start_dispatcher()
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{cluster.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        os.environ.get("ST_MAX_EXAMPLES", "12"),
        "--seed",
        os.environ.get("ST_SEED", "20261123"),
        # one at a time: schemathesis's threads can trip a CPython 3.11 ast race
        # ("AST constructor recursion depth mismatch") inside hypothesis
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--output-truncate",
        "false",
    ]
    run = subprocess.run(
        command,
        cwd=tmp_path,  # anything schemathesis writes stays in the test's directory
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"{output[-20000:]}\n--- dispatcher log ---\n{dispatcher.log(60)}"
    assert "unexpected error" not in dispatcher.log(10_000), dispatcher.log(200)
