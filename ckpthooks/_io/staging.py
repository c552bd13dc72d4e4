"""Loading a remote checkpoint from one verified download.

Verifying a remote checkpoint reads all of its bytes, and loading it reads them again: two
downloads. When the backend loads a local copy exactly as it loads the original
(:attr:`~ckpthooks.CheckpointIO.loads_from_local_copy`), :meth:`~ckpthooks._store.CheckpointStore.load`
downloads the object once into a temporary file of the *staging folder*, checks its size and
checksum against the manifest, and loads the copy (memory-mapped, with the torch backend). The
copy's name is removed as soon as the load returns; tensors mapped from it keep its data until
they are freed.

The staging folder is ``$CKPTHOOKS_STAGING_DIR`` when set, else the system's temporary folder.
Where it has too little free space for the checkpoint (plus :data:`HEADROOM`), the load checks the
remote object and then reads it, as without staging. A copy is named like the temporary files of
a save (``.ckpthooks-staged.ckpt.ckpthooks-tmp-<pid>-<token>-<n>``): one that a killed process left
is removed by the next staging in that folder once its process is gone (see
:func:`ckpthooks._io.durable.is_leftover`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ckpthooks._io import paths
from ckpthooks._io.durable import is_leftover, temp_name_for
from ckpthooks._io.hashing import available_algorithms, hash_local_file
from ckpthooks._io.retry import call_with_retry
from ckpthooks.exceptions import CorruptCheckpointError

if TYPE_CHECKING:
    from ckpthooks._manifest import Manifest

log = logging.getLogger(__name__)

#: Environment variable naming the folder remote checkpoints are downloaded into before a load.
STAGING_DIR_ENV = "CKPTHOOKS_STAGING_DIR"
#: Free space the staging folder keeps besides a copy; with less, the load reads the remote object.
HEADROOM = 256 << 20
#: What the staged copies' names start with.
PREFIX = ".ckpthooks-staged.ckpt"


def _remove_stale_copies(folder: str) -> None:
    """Delete the staged copies in ``folder`` whose process is gone (a kill during a load)."""
    for name in os.listdir(folder):
        if name.startswith(PREFIX) and is_leftover(folder, name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
                log.info("removed %s, a copy left by a load that was interrupted", os.path.join(folder, name))


def staging_folder() -> str:
    """Where remote checkpoints are downloaded to before they are loaded."""
    return os.environ.get(STAGING_DIR_ENV) or tempfile.gettempdir()


def can_stage(manifest: Manifest) -> bool:
    """Whether a checkpoint with this manifest can be checked from a local copy (its checksum
    algorithm is available here)."""
    return bool(manifest.checksum) and manifest.algorithm in available_algorithms()


@contextlib.contextmanager
def verified_copy(
    path: str, manifest: Manifest, storage_options: Mapping[str, Any] | None = None
) -> Iterator[str | None]:
    """Download the remote checkpoint ``path`` once into the staging folder and check it against
    ``manifest``; yield the copy's local path, removed on exit.

    Yields ``None`` (nothing downloaded) when the staging folder lacks the room. Raises
    :class:`~ckpthooks.CorruptCheckpointError` naming ``path`` when the bytes do not match the
    manifest, :class:`~ckpthooks.StorageError` when the download keeps failing.
    """
    from ckpthooks._catalog import check_digest, check_size

    folder = staging_folder()
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        log.info("loading %s without a local copy: staging folder %s: %s", path, folder, exc)
        free = -1
    if free < manifest.size + HEADROOM:
        if free >= 0:
            log.info(
                "loading %s without a local copy: %s has %d MiB free, the checkpoint needs %d MiB",
                path, folder, free >> 20, (manifest.size + HEADROOM) >> 20,
            )  # fmt: skip
        yield None
        return
    try:
        _remove_stale_copies(folder)
        copy = temp_name_for(os.path.join(folder, PREFIX[1:]))
        os.close(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        log.warning("loading %s without a local copy: cannot write to staging folder %s: %s", path, folder, exc)
        yield None
        return
    try:
        fs = paths.filesystem(path, storage_options)
        target = paths.fs_path(fs, path)
        fs.invalidate_cache(target)  # a cached listing may predate the write
        try:
            call_with_retry(lambda: fs.get_file(target, copy), action="read", path=path)
        except FileNotFoundError as exc:
            raise CorruptCheckpointError(f"{path} is missing although its manifest commits it") from exc
        size, digest = hash_local_file(copy, str(manifest.algorithm))
        check_size(path, size, manifest)
        check_digest(path, digest, manifest)
        yield copy
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(copy)
