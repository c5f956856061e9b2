"""`gerne-ray submit`: send a search to a Ray cluster's job API (JobSubmissionClient).

The spec is validated here first, then travels in the job's runtime_env as JSON (the environment
variable GERNE_RAY_SPEC) beside the working directory (uploaded by Ray; it honours .gitignore and
is capped at 512 MiB); the job's entrypoint is `python -m gerne_ray.cli tune env:GERNE_RAY_SPEC`,
which runs on the cluster with the uploaded package. Results go to `storage.path`, which must be
somewhere the cluster writes and you can read: an absolute path on the head's (shared) file system,
or a URI (s3://, gs://, ...); a relative path would land in the job's temporary copy of the
working directory, so it is refused.

Token authentication (Ray 2.59+): the job client sends the cluster's token only when
RAY_AUTH_MODE=token. When a token is available (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
~/.ray/auth_token) and RAY_AUTH_MODE is unset, submit turns it on. The token is never printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from gerne_ray.errors import GerneError
from gerne_ray.spec import JobSpec, SpecLike, load_spec
from gerne_ray.storage import storage_settings

SPEC_ENV = "GERNE_RAY_SPEC"
TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def entrypoint() -> str:
    """The job's command on the cluster."""
    return f"python -m gerne_ray.cli tune env:{SPEC_ENV}"


def check_storage_for_cluster(spec: JobSpec) -> None:
    """Refuse a relative local storage path: on the cluster it would be the job's temporary folder."""
    path = spec.storage.path
    if "://" not in path and not Path(path).is_absolute():
        raise GerneError(
            f"storage.path: {path!r} is relative; a submitted job runs in a temporary copy of the working "
            "directory on the cluster, so its results would be lost there; use an absolute path on the "
            "cluster's shared file system or a URI such as s3://bucket/runs (--set storage.path=...)"
        )


def enable_token_auth() -> bool:
    """Turn on the client's token authentication when a token is at hand; return whether it is on."""
    if os.environ.get("RAY_AUTH_MODE"):
        return os.environ["RAY_AUTH_MODE"] == "token"
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or TOKEN_FILE.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
        return True
    return False


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as err:  # connection refused, bad URL, authentication: one line, no traceback
        text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise GerneError(
            f"--address: cannot reach the Ray job API at {address} ({text[:300]}); pass the dashboard "
            "address (http://<head>:8265, through `ray dashboard cluster.yaml` for a cloud cluster) and, "
            "with token authentication, the cluster's token (RAY_AUTH_TOKEN)"
        ) from None


def submit(spec: SpecLike, address: str | None = None, wait: bool = False,
           overrides: list[str] | None = None, working_dir: str | Path = ".") -> tuple[str, str | None]:
    """Submit `gerne-ray tune` of the spec as a Ray job; return its id and, with wait, its final status."""
    spec = load_spec(spec, overrides)
    check_storage_for_cluster(spec)
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise GerneError(
            "--address: give the cluster's job API address (http://<head>:8265) or set RAY_ADDRESS"
        )
    working_dir = Path(working_dir)
    if not working_dir.is_dir():
        raise GerneError(f"--working-dir: {working_dir} is not a folder")
    enable_token_auth()
    client = _client(address)
    job_id = client.submit_job(
        entrypoint=entrypoint(),
        submission_id=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        # the storage's endpoint and region go along (never credentials: the cluster's nodes have their own)
        runtime_env={"working_dir": str(working_dir),
                     "env_vars": {**storage_settings(), SPEC_ENV: json.dumps(spec.model_dump(mode="json"))}},
        metadata={"gerne_ray_job": spec.name},
    )
    print(f"submitted job {job_id} to {address}: gerne-ray tune {spec.name}, results in "
          f"{spec.storage.path}/{spec.name}", flush=True)
    if not wait:
        return job_id, None
    asyncio.run(_follow(client, job_id))
    status = str(client.get_job_status(job_id).value)
    print(f"job {job_id}: {status}", flush=True)
    return job_id, status


async def _follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        sys.stdout.write(lines)
        sys.stdout.flush()


def spec_from_env(name: str) -> dict:
    """The spec a submitted job carries in an environment variable (JSON)."""
    text = os.environ.get(name)
    if not text:
        raise GerneError(f"spec env:{name}: the environment variable {name} is not set; pass a spec file")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise GerneError(f"spec env:{name}: not valid JSON ({err.msg})") from None
    if not isinstance(raw, dict):
        raise GerneError(f"spec env:{name}: the top level is not a mapping")
    return raw
