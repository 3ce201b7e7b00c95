"""Where a sweep's output lives: a local directory or any pyarrow filesystem URI (s3://, gs://, file://).

Experiments, stage caches, Tune's and Ray Train's own files all go under one ``storage`` location, so
a cluster whose nodes share no disk still finds everything, and ``--set storage=s3://bucket/overopt``
moves a whole run. Nothing here imports Ray.

    store = Storage("s3://bucket/overopt")          # or Storage("runs"), Storage("file:///data/runs")
    store.write_text("exp/config.yaml", text)         # atomic: readers see the old file or the new one
    store.uri("exp/tune")                              # what Tune's storage_path takes
    local_directory(store.uri("cache/reference/tiny-1a2b"))  # a node-local directory with the files

Writes are whole-object (an object store has no append): rows are one small JSON file each.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

LOCAL_CACHE = Path(os.environ.get("OVEROPT_LOCAL_CACHE", Path(tempfile.gettempdir()) / "overopt-cache"))


def is_uri(location: str) -> bool:
    return "://" in location


class Storage:
    """One storage location; every path given to a method is relative to it ("a/b.json")."""

    def __init__(self, location: str):
        self.location = location
        # Options after "?" (s3://b/p?endpoint_override=...&region=...) configure the filesystem.
        self.query = location.split("?", 1)[1] if "?" in location else ""
        if is_uri(location):
            self.fs, root = pafs.FileSystem.from_uri(location)
            self.root = root.rstrip("/")
            self.local = isinstance(self.fs, pafs.LocalFileSystem)
        else:
            self.fs, self.root, self.local = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location)), True

    def __repr__(self) -> str:
        return f"Storage({self.location!r})"

    def __reduce__(self):  # travels to Ray workers as its location; the filesystem is rebuilt there
        return (Storage, (self.location,))

    # --- names ------------------------------------------------------------------------------------
    def path(self, relative: str = "") -> str:
        """The filesystem path (no scheme) of ``relative``."""
        return f"{self.root}/{relative}".rstrip("/") if relative else self.root

    def uri(self, relative: str = "") -> str:
        """The location of ``relative`` in the same form (a local path, or a URI with the same options)."""
        if not is_uri(self.location):
            return self.path(relative)
        scheme = self.location.split("://", 1)[0]
        uri = f"file://{self.path(relative)}" if scheme == "file" else f"{scheme}://{self.path(relative).lstrip('/')}"
        return f"{uri}?{self.query}" if self.query else uri

    def ray_storage(self, relative: str = "") -> dict:
        """``storage_path`` + ``storage_filesystem`` for Ray Tune's / Ray Train's RunConfig (and restore)."""
        return {"storage_path": self.path(relative), "storage_filesystem": self.fs}

    def free_bytes(self) -> int | None:
        """Free space where a local location is (or would be created); None for object stores (unbounded)."""
        if not self.local:
            return None
        path = self.root
        while not os.path.exists(path) and os.path.dirname(path) != path:
            path = os.path.dirname(path)
        return shutil.disk_usage(path).free if os.path.isdir(path) else None

    # --- files ------------------------------------------------------------------------------------
    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound

    def makedirs(self, relative: str) -> None:
        self.fs.create_dir(self.path(relative), recursive=True)

    def _atomic_write(self, relative: str, write) -> None:
        target = self.path(relative)
        parent = target.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if not self.local:
            with self.fs.open_output_stream(target) as stream:  # an object PUT is atomic by itself
                write(stream)
            return
        temporary = f"{parent}/.{target.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
        with self.fs.open_output_stream(temporary) as stream:
            write(stream)
        self.fs.move(temporary, target)  # rename: readers never see half a file

    def write_bytes(self, relative: str, data: bytes) -> None:
        self._atomic_write(relative, lambda stream: stream.write(data))

    def write_text(self, relative: str, text: str) -> None:
        self.write_bytes(relative, text.encode())

    def read_bytes(self, relative: str) -> bytes:
        with self.fs.open_input_stream(self.path(relative)) as stream:
            return stream.read()

    def read_text(self, relative: str) -> str:
        return self.read_bytes(relative).decode()

    def write_parquet(self, relative: str, table: pa.Table) -> None:
        self._atomic_write(relative, lambda stream: pq.write_table(table, stream))

    def read_parquet(self, relative: str) -> pa.Table:
        return pq.read_table(self.path(relative), filesystem=self.fs)

    def list(self, relative: str, suffix: str = "", recursive: bool = False) -> list[str]:
        """Relative paths of the files under ``relative`` ending with ``suffix``, sorted; [] if absent."""
        if not self.exists(relative):
            return []
        selector = pafs.FileSelector(self.path(relative), recursive=recursive)
        base = len(self.root) + 1
        return sorted(
            info.path[base:]
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.path.endswith(suffix) and not info.base_name.startswith(".")
        )

    def delete_dir(self, relative: str) -> None:
        if self.exists(relative):
            self.fs.delete_dir(self.path(relative))

    # --- directories ------------------------------------------------------------------------------
    def upload_dir(self, local: str | Path, relative: str) -> None:
        """Copy a local directory's files to ``relative`` (replacing what was there)."""
        self.delete_dir(relative)
        self.makedirs(relative)
        pafs.copy_files(str(local), self.path(relative), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)


def local_directory(location: str) -> str:
    """A local directory with the files of ``location``: a local path (or hub name) as it is; a remote
    URI copied once per node into ``OVEROPT_LOCAL_CACHE`` (a finished copy is marked and reused), so
    ``from_pretrained`` can read it."""
    if not is_uri(location):
        return location
    fs, path = pafs.FileSystem.from_uri(location)
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    target = LOCAL_CACHE / location.split("?", 1)[0].replace("://", "/").lstrip("/")
    if (target / ".overopt-complete").exists():
        return str(target)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    partial.mkdir(parents=True)
    pafs.copy_files(path, str(partial), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    (partial / ".overopt-complete").write_text("")
    try:
        partial.rename(target)
    except OSError:  # another process on this node finished the same copy first
        shutil.rmtree(partial, ignore_errors=True)
    return str(target)


@contextmanager
def local_copy(location: str):
    """Like ``local_directory`` for a directory read once (an evaluation's checkpoint): a remote URI
    is copied into a temporary directory that is removed on exit; a local path is used as it is."""
    if not is_uri(location) or isinstance(pafs.FileSystem.from_uri(location)[0], pafs.LocalFileSystem):
        yield local_directory(location)
        return
    fs, path = pafs.FileSystem.from_uri(location)
    with tempfile.TemporaryDirectory(prefix="overopt-checkpoint-") as target:
        pafs.copy_files(path, target, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield target
