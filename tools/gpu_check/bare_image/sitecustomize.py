"""Imports as on the bare GPU image, for the dry run of tools/gpu_check.sh.

Put this folder on PYTHONPATH and set ``MMOVERLOCK_IMAGE_PACKAGES`` to a list of distribution names (one a line,
``#`` comments): every Python process then refuses to import a top-level module from a ``site-packages`` folder
unless its distribution is on the list, or the module lives in a folder named in ``MMOVERLOCK_CARRIED`` (the
carried wheels, installed with ``pip --target``). The requirements of listed distributions count as listed (the
image is a consistent environment; only their versions differ from this one's). The repository and the standard
library stay importable. So the dry run imports what the GPU run imports with only what that machine will have, and
names any missing package.
"""
import importlib.abc
import importlib.machinery
import importlib.metadata
import os
import os.path as osp
import re
import sys


def _normalise(name):
    return re.sub(r'[-_.]+', '-', name).lower()


def _requirements(dist_name):
    """Names of the unconditional requirements of an installed distribution (none when it is not installed)."""
    try:
        requires = importlib.metadata.requires(dist_name) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    return [re.match(r'[A-Za-z0-9._-]+', r).group(0) for r in requires if 'extra ==' not in r]


def _closure(names):
    """The distributions and, transitively, what they require: a consistent image has those too."""
    todo, seen = list(names), set()
    while todo:
        name = _normalise(todo.pop())
        if name not in seen:
            seen.add(name)
            todo += _requirements(name)
    return seen


class _BareImageFinder(importlib.abc.MetaPathFinder):
    """Raise ModuleNotFoundError for top-level modules that the bare image would not have."""

    def __init__(self, allowed, carried):
        self.allowed = _closure(allowed)
        self.carried = [osp.realpath(p) for p in carried]
        self.owners = None  # top-level name -> distributions, read on first use

    def find_spec(self, fullname, path=None, target=None):
        if path is not None or '.' in fullname:
            return None  # submodules follow their package
        spec = importlib.machinery.PathFinder.find_spec(fullname)
        if spec is None:
            return None
        origin = osp.realpath(spec.origin or next(iter(spec.submodule_search_locations or []), ''))
        parts = origin.split(os.sep)
        if 'site-packages' not in parts or any(origin.startswith(c + os.sep) for c in self.carried):
            return None
        # The folder right under site-packages names the owner, also for modules vendored inside another package.
        top = parts[parts.index('site-packages') + 1].split('.')[0]
        if self.owners is None:
            self.owners = importlib.metadata.packages_distributions()
        dists = self.owners.get(top, [top])
        if any(_normalise(d) in self.allowed for d in dists):
            return None
        raise ModuleNotFoundError(
            f"No module named '{fullname}' on the bare GPU image (distribution {', '.join(dists)} is neither in "
            f"tools/gpu_check/image_packages.txt nor carried in tools/gpu_check/wheels.txt)", name=fullname)


def _install():
    listing = os.environ.get('MMOVERLOCK_IMAGE_PACKAGES')
    if not listing:
        return
    with open(listing) as f:
        allowed = {_normalise(line.split('#')[0].strip()) for line in f if line.split('#')[0].strip()}
    carried = [p for p in os.environ.get('MMOVERLOCK_CARRIED', '').split(os.pathsep) if p]
    sys.meta_path.insert(0, _BareImageFinder(allowed, carried))


_install()
