"""Checkpoint files that never run code when loaded and are never left half-written.

Loading: every checkpoint mmoverlock reads (``init_cfg`` Pretrained, ``load_from`` / ``--resume``, ``tools/test.py``,
the converter, the inferencers of ``demo/image_demo.py``) goes through :func:`load_checkpoint_file`, which calls
``torch.load`` with ``weights_only=True`` explicitly: the restricted unpickler builds tensors, containers and the
types allow-listed in :mod:`mmoverlock.compat`, and refuses everything else, so a file whose pickle would call a
function (a ``__reduce__`` payload) fails with :class:`UnsafeCheckpointError` before any of it runs. Passing the
argument (instead of relying on torch's default since 2.6) keeps it on when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is
set. Remote files are fetched over https only; ``http://`` is refused. ``import mmoverlock`` registers these
loaders (through :func:`mmoverlock.compat.apply_mmengine_fixes`) in mmengine's ``CheckpointLoader`` for local paths and http(s) URLs, which is how mmengine's runner and
mmdet's / mmseg's inferencers load.

Writing: :func:`write_atomic` writes a temporary file in the same folder, flushes and fsyncs it, then renames it over
the destination (``os.replace``), so a process killed at any moment leaves either the old file or the new one, never
a truncated one. :class:`AtomicLocalBackend` is mmengine's local file backend with that write; the checkpoint hook of
:mod:`mmoverlock.engine` saves through it.
"""
import os
import os.path as osp
import pickle
import re
import zipfile
from typing import Optional, Union
from urllib.parse import urlparse

import torch
from mmengine.dist import get_dist_info
from mmengine.fileio import LocalBackend, register_backend
from mmengine.runner import checkpoint as mmengine_checkpoint

#: Name of the file backend that writes atomically (``backend_args=dict(backend=ATOMIC_BACKEND)``).
ATOMIC_BACKEND = 'mmoverlock_atomic_local'
#: Temporary files of :func:`write_atomic`: ``.<name>.<pid>.tmp`` beside the destination.
TEMPORARY_FILE = re.compile(r'^\..+\.\d+\.tmp$')


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects that weights-only loading refuses: loading it could run code from the file."""


def _load_weights_only(file, name: str, map_location=None):
    """``torch.load(file, weights_only=True)``; a refused pickle raises :class:`UnsafeCheckpointError`, a file that
    torch cannot read (truncated, empty) a ``RuntimeError`` naming it."""
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if 'Weights only load failed' not in str(error):  # not a refusal: the bytes are no pickle at all
            raise _unreadable(name, error) from error
        raise UnsafeCheckpointError(f'refusing to load the checkpoint {name}: its pickle {_what_was_refused(error)}, '
                                    f'so loading it could run code from the file (weights-only loading stays on). '
                                    f'If you trust the file, load it yourself and re-save only its state_dict.') \
            from error
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError) as error:
        # torch.load's messages do not name the file; a text or other non-torch file fails with a bare KeyError or
        # IndexError from the legacy format's reader
        raise _unreadable(name, error) from error


def _unreadable(name: str, error: Exception) -> RuntimeError:
    return RuntimeError(f'cannot read the checkpoint {name}: {type(error).__name__}: {error} (a truncated, empty '
                        f'or non-torch file fails this way)')


def _what_was_refused(error: Exception) -> str:
    """The global or the call that torch's weights-only unpickler refused, from its message."""
    message = str(error)
    found = re.search(r'GLOBAL (\S+)', message)
    if found:
        return f'references {found.group(1)}, which is not a tensor, container or allow-listed type'
    found = re.search(r'reduce for unrecognized function (.+?)(?: which belongs|\n|$)', message)
    if found:
        return f'calls {found.group(1)}, which is not an allow-listed function'
    found = re.search(r'Unsupported operand (\S+)', message)
    if found:  # also what a file that is no torch checkpoint at all (e.g. text) gives
        return (f'uses opcode {found.group(1)}, which weights-only unpickling does not accept (a file that is not a '
                f'torch checkpoint at all fails this way too)')
    return 'holds an object that weights-only loading refuses'


def check_remote_url(url: str) -> None:
    """Refuse plain-http URLs: a checkpoint fetched without TLS can be swapped in transit."""
    if url.lower().startswith('http://'):
        raise ValueError(f'refusing to download the checkpoint {url} over plain http (it could be altered in '
                         f'transit); use an https:// URL or a local path')


def load_checkpoint_file(filename: str, map_location=None):
    """Load a checkpoint file (local path or https URL) with weights-only unpickling.

    Args:
        filename (str): A local path, an ``https://`` URL (downloaded once into torch's hub cache, ``checkpoints/``)
            or another mmengine scheme (``open-mmlab://``, ``s3://``, ...; handed to mmengine's loader).
        map_location (optional): As for ``torch.load``. Defaults to ``None``.

    Returns:
        The loaded object (usually a dict).

    Raises:
        UnsafeCheckpointError: The file's pickle holds objects weights-only loading refuses.
        ValueError: ``filename`` is an ``http://`` URL.
        FileNotFoundError: No local file ``filename``.
        RuntimeError: A file that torch cannot read (truncated, empty, not a torch file); the message names it.
    """
    filename = str(filename)
    if re.match(r'^https?://', filename, flags=re.IGNORECASE):
        return _load_from_https(filename, map_location)
    if '://' in filename:
        return mmengine_checkpoint.CheckpointLoader.load_checkpoint(filename, map_location=map_location)
    return _load_from_local(filename, map_location)


def _load_from_local(filename: str, map_location=None):
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file {filename} not found')
    return _load_weights_only(filename, filename, map_location)


def _load_from_https(url: str, map_location=None, model_dir: Optional[str] = None, progress: bool = False):
    """Download once into ``model_dir`` (default: torch's hub cache, ``checkpoints/``; rank 0 first, the other ranks
    then read the cache, as mmengine does) and load weights-only."""
    check_remote_url(url)
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    cached = osp.join(model_dir, osp.basename(urlparse(url).path))

    def fetch():
        if not osp.exists(cached):
            os.makedirs(model_dir, exist_ok=True)
            torch.hub.download_url_to_file(url, cached, progress=progress)  # to a temporary file, then renamed

    rank, world_size = get_dist_info()
    if rank == 0:
        fetch()
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:  # another node's cache
            fetch()
    return _load_weights_only(cached, url, map_location)


def register_checkpoint_loaders() -> None:
    """Route mmengine's ``CheckpointLoader`` for local paths and http(s) URLs through the weights-only loaders, and
    register :class:`AtomicLocalBackend` as the file backend ``ATOMIC_BACKEND``. Called by
    :func:`mmoverlock.compat.apply_mmengine_fixes`.

    mmengine's own ``open-mmlab://`` / ``torchvision://`` / ``mmcls://`` loaders call its module-level
    ``load_from_http``, which is replaced too, so the URLs they resolve are held to the same rules.
    """
    loader = mmengine_checkpoint.CheckpointLoader
    loader.register_scheme(prefixes='', loader=_load_from_local, force=True)
    loader.register_scheme(prefixes=('http://', 'https://'), loader=_load_from_https, force=True)
    mmengine_checkpoint.load_from_http = _load_from_https
    register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)  # what the checkpoint hook saves through


def is_complete_checkpoint(path: str) -> bool:
    """Whether ``path`` is a whole ``torch.save`` file: a zip archive whose central directory (written last) reads
    and that holds the pickle. A file cut off by a killed writer lacks the directory. Folders (sharded checkpoints)
    count as complete."""
    if osp.isdir(path):
        return True
    if not osp.isfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith('data.pkl') for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def write_atomic(path: Union[str, os.PathLike], data: Union[bytes, str]) -> None:
    """Write ``data`` to ``path`` so that a reader (or a killed writer) sees the old file or the new one, never a part.

    The bytes go to ``.<name>.<pid>.tmp`` in the same folder, are flushed and fsynced, and the temporary file is
    renamed over ``path`` (atomic on POSIX and Windows); the folder is fsynced afterwards so the rename survives a
    crash of the machine as well.
    """
    path = osp.abspath(os.fspath(path))
    folder, name = osp.split(path)
    os.makedirs(folder, exist_ok=True)
    temporary = osp.join(folder, f'.{name}.{os.getpid()}.tmp')
    payload = data.encode('utf-8') if isinstance(data, str) else data
    try:
        with open(temporary, 'wb') as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if osp.exists(temporary):
            os.remove(temporary)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    if os.name != 'posix':  # Windows cannot open a folder for fsync; its rename is durable once it returns
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temporary_files(folder: str) -> list:
    """Delete the leftovers of writes that :func:`write_atomic` did not finish (a killed process); return them."""
    if not osp.isdir(folder):
        return []
    removed = [osp.join(folder, name) for name in os.listdir(folder) if TEMPORARY_FILE.match(name)]
    for path in removed:
        os.remove(path)
    return removed


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose writes are atomic (:func:`write_atomic`)."""

    def put(self, obj: bytes, filepath) -> None:
        write_atomic(filepath, obj)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        write_atomic(filepath, obj.encode(encoding))
