"""Where a run lives: `<storage.path>/<name>`, a local folder or a pyarrow file system URI.

`storage.path` is a local folder or a URI that pyarrow understands (s3://bucket/runs,
gs://bucket/runs, file:///shared/runs, ...). Ray's Train and Tune state goes straight there (their
RunConfig's storage_path). This package's own files (spec.json, result.json, the Parquet tables,
best.json, report.md, the plots, the Optuna journal, an in-process run's checkpoint.pt) are written
to a local folder first: the run folder itself when the storage is local, else a local mirror
under ~/.cache/gerne-ray (or $GERNE_RAY_CACHE), which `pull` fills from the storage before a run
or a resume and `push` copies back after each write.

Credentials never go in the URI (`s3://KEY:SECRET@bucket`, `?access_key=...`): a storage path is
printed, logged and written to spec.json, result.json and a submitted job's environment, so such a
URI is refused (`uri_problem`), as is any query string or fragment (pyarrow reads it as options and
drops it from the path, which would lose the run name). pyarrow finds credentials itself (the
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN variables, ~/.aws/credentials and
AWS_PROFILE, an instance role; GOOGLE_APPLICATION_CREDENTIALS for gs://) and an S3-compatible
endpoint (MinIO) from AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3. Those endpoint and region settings
(`storage_settings`, never credentials) travel with a search to its trial processes and with a
submitted job, whose processes may not have inherited this process's environment.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import tempfile
from pathlib import Path

from gerne_ray.errors import GerneError

# Non-secret settings of pyarrow's S3 file system, read from the environment (pyarrow >= 14 reads
# AWS_ENDPOINT_URL, >= 15 also AWS_ENDPOINT_URL_S3): handed on to the processes a run starts.
STORAGE_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
# Query keys that carry a credential (pyarrow's s3 options and the usual spellings of others)
SECRET_KEYS = re.compile(r"key|secret|token|password|passwd|credential|signature|sig$", re.IGNORECASE)
CREDENTIALS_HELP = (
    "give credentials the way pyarrow reads them instead: the environment variables AWS_ACCESS_KEY_ID, "
    "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), a profile in ~/.aws/credentials (AWS_PROFILE) or the "
    "node's instance role; GOOGLE_APPLICATION_CREDENTIALS for gs://"
)


def is_uri(path: str) -> bool:
    """Whether a storage path is a URI (scheme://...) rather than a local folder."""
    return "://" in path


def uri_problem(path: str, field: str = "storage.path") -> str | None:
    """Why a storage URI cannot be used (credentials, a query string), or None; never quotes the URI."""
    if not is_uri(path):
        return None
    scheme, _, rest = path.partition("://")
    mark = re.search(r"[?#]", rest)
    base, query_mark, query = (rest[:mark.start()], mark.group(), rest[mark.end():]) if mark \
        else (rest, "", "")
    authority = base.split("/", 1)[0]
    # '@' anywhere outside a file:// path: a secret may itself hold '/' (AWS secret keys do)
    if "@" in scheme or "@" in (authority if scheme.lower() == "file" else base):
        return (f"{field}: the URI holds a user name or credentials before '@' (user:secret@...); a storage "
                "path is printed, logged and written to spec.json and result.json, so it must not carry "
                f"them (nor any '@'): write it as s3://bucket/path (no user part) and {CREDENTIALS_HELP}")
    if query_mark:
        keys = [part.partition("=")[0] for part in re.split(r"[&;]", query)]
        if any(SECRET_KEYS.search(key) for key in keys):
            return (f"{field}: the URI's query string holds credentials (access_key, secret_key, "
                    "session_token, ...); a storage path is printed, logged and written to spec.json and "
                    f"result.json, so it must not carry them: drop the query and {CREDENTIALS_HELP}")
        return (f"{field}: a query string or fragment ('{query_mark}...') in a storage URI is not supported "
                "(the run name would be lost from the path); write the URI alone (s3://bucket/path) and "
                "set the region with AWS_REGION and an S3-compatible endpoint (MinIO) with AWS_ENDPOINT_URL "
                "in the driver's environment (gerne-ray passes both on to the trials and to a submitted job)")
    return None


def storage_settings() -> dict[str, str]:
    """The non-secret storage settings of this process's environment (endpoint URL, region)."""
    out = {}
    for name in STORAGE_SETTINGS:
        value = os.environ.get(name, "")
        if value and "@" not in value:  # an endpoint written with user:secret@ is not passed on
            out[name] = value
    return out


def apply_storage_settings(settings: dict[str, str]) -> None:
    """Set the storage settings a driver passed on, where this process's environment lacks them."""
    for name, value in settings.items():
        if name in STORAGE_SETTINGS:
            os.environ.setdefault(name, value)


def cache_root() -> Path:
    """Root of the local mirrors of remote run folders."""
    return Path(os.environ.get("GERNE_RAY_CACHE", Path.home() / ".cache" / "gerne-ray"))


class RunFolder:
    """One run folder: where Ray writes (`ray_storage`, `location`) and where this package's files are."""

    def __init__(self, storage: str, name: str) -> None:
        self.storage, self.name = storage, name
        self.fs = None
        problem = uri_problem(storage)
        if problem:
            raise GerneError(problem)
        if is_uri(storage):
            import pyarrow.fs

            try:
                self.fs, base = pyarrow.fs.FileSystem.from_uri(storage)
            except (pyarrow.ArrowInvalid, pyarrow.ArrowException, OSError, ValueError) as err:
                raise GerneError(
                    f"storage.path: {storage!r} is not a file system URI pyarrow can open ({err}); use a "
                    "local folder or s3://bucket/path, gs://bucket/path, file:///path"
                ) from None
            self.remote_dir = posixpath.join(base, name)
            self.ray_storage = storage.rstrip("/")
            self.location = f"{self.ray_storage}/{name}"
            digest = hashlib.sha1(self.ray_storage.encode()).hexdigest()[:16]
            self.local = cache_root() / digest / name
        else:
            self.remote_dir = ""
            self.ray_storage = str(Path(storage).absolute())
            self.local = Path(self.ray_storage) / name
            self.location = str(self.local)

    @classmethod
    def at(cls, location: str | Path) -> RunFolder:
        """The run folder at a location given whole (`<storage>/<name>`, a path or a URI)."""
        text = str(location).rstrip("/")
        if is_uri(text):
            storage, _, name = text.rpartition("/")
            return cls(storage, name)
        path = Path(text).absolute()
        return cls(str(path.parent), path.name)

    @property
    def remote(self) -> bool:
        """Whether the run folder is on a remote (URI) file system."""
        return self.fs is not None

    def check_writable(self) -> None:
        """Fail with one line, before anything runs, when the run folder cannot be written."""
        try:
            if self.remote:
                self.fs.create_dir(self.remote_dir, recursive=True)
                self.local.mkdir(parents=True, exist_ok=True)
                return
            self.local.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.local, prefix=".write-test-"):
                pass
        except OSError as err:
            reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
            raise GerneError(
                f"storage.path: cannot write the run folder {self.location} ({reason}); choose a folder "
                "(or URI) you can write to"
            ) from None

    def pull(self, *names: str) -> None:
        """Copy these files (or folders) of the run from the storage into the local folder, when there."""
        if not self.remote:
            return
        import pyarrow.fs

        for name in names:
            src = posixpath.join(self.remote_dir, name)
            info = self.fs.get_file_info(src)
            if info.type == pyarrow.fs.FileType.NotFound:
                continue
            dest = self.local / name
            is_dir = info.type == pyarrow.fs.FileType.Directory
            (dest if is_dir else dest.parent).mkdir(parents=True, exist_ok=True)
            pyarrow.fs.copy_files(src, str(dest), source_filesystem=self.fs,
                                  destination_filesystem=pyarrow.fs.LocalFileSystem())

    def push(self, *names: str) -> None:
        """Copy these local files (or folders) of the run to the storage."""
        if not self.remote:
            return
        import pyarrow.fs

        for name in names:
            src = self.local / name
            if not src.exists():
                continue
            dest = posixpath.join(self.remote_dir, name)
            self.fs.create_dir(dest if src.is_dir() else posixpath.dirname(dest), recursive=True)
            pyarrow.fs.copy_files(str(src), dest, source_filesystem=pyarrow.fs.LocalFileSystem(),
                                  destination_filesystem=self.fs)
