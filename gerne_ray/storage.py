"""Where a run lives: `<storage.path>/<name>`, a local folder or a pyarrow file system URI.

`storage.path` is a local folder or a URI that pyarrow understands (s3://bucket/runs,
gs://bucket/runs, file:///shared/runs, ...). Ray's Train and Tune state goes straight there (their
RunConfig's storage_path). This package's own files (spec.json, result.json, the Parquet tables,
best.json, report.md, the plots, the Optuna journal, an in-process run's checkpoint.pt) are written
to a local folder first: the run folder itself when the storage is local, else a local mirror
under ~/.cache/gerne-ray (or $GERNE_RAY_CACHE), which `pull` fills from the storage before a run
or a resume and `push` copies back after each write.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
from pathlib import Path

from gerne_ray.errors import GerneError


def is_uri(path: str) -> bool:
    """Whether a storage path is a URI (scheme://...) rather than a local folder."""
    return "://" in path


def cache_root() -> Path:
    """Root of the local mirrors of remote run folders."""
    return Path(os.environ.get("GERNE_RAY_CACHE", Path.home() / ".cache" / "gerne-ray"))


class RunFolder:
    """One run folder: where Ray writes (`ray_storage`, `location`) and where this package's files are."""

    def __init__(self, storage: str, name: str) -> None:
        self.storage, self.name = storage, name
        self.fs = None
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
