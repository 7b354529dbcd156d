"""Loading a checkpoint never runs code from it, remote checkpoints come over https only, and the converter never
writes over its input.

The hostile file is a real checkpoint of the smoke segmentor whose ``meta`` holds an object whose pickle calls a
function when loaded (a ``__reduce__`` payload that creates a marker file). Every path that loads checkpoints is
tried with it: the backbone's ``init_cfg`` Pretrained, mmengine's loader (what the runner and the inferencers use),
``tools/train.py`` with ``load_from`` and with ``--resume``, ``tools/test.py``, the converter and
``demo/image_demo.py``, and the classifier's ``classifier_from_checkpoint``. Each must fail with the weights-only refusal and leave no marker.
"""
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.runner import checkpoint as mmengine_checkpoint

from _helpers import REPO_ROOT, SMOKE_SEG, TINY_ARCH
from mmoverlock.apis import build_model
from mmoverlock.checkpoint_io import UnsafeCheckpointError, load_checkpoint_file
from mmoverlock.models import OverLoCK, classifier_from_checkpoint

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow

REFUSAL = 'could run code from the file'


class CreateFile:
    """Unpickling this calls ``open(marker, 'w')``: the file appears if the loader runs code from the pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, 'w')


class WriteArrayToFile:
    """Unpickling this calls ``numpy.ndarray.tofile(array, marker)``, reached through ``getattr`` and ``ndarray``,
    both allow-listed for mmengine checkpoints (:mod:`mmoverlock.compat`): an allowed getattr must not become a call."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return np.ndarray.tofile, (np.zeros(1), self.marker)


PAYLOADS = {'open': CreateFile, 'getattr(ndarray, tofile)': WriteArrayToFile}


def _hostile_checkpoint(folder, payload=CreateFile):
    """The smoke segmentor's weights plus an mmengine-like ``meta`` with the payload in it; and the marker path."""
    model, cfg = build_model(SMOKE_SEG, init=False)
    marker = folder / f'code_ran_{payload.__name__}'
    path = folder / f'hostile_{payload.__name__}.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict(epoch=1, iter=2, payload=payload(marker))), path)
    return path, marker


@pytest.fixture(scope='module')
def hostile(tmp_path_factory):
    return _hostile_checkpoint(tmp_path_factory.mktemp('hostile'))


@pytest.mark.parametrize('payload', PAYLOADS.values(), ids=PAYLOADS.keys())
def test_payload_runs_when_unpickled_without_weights_only(tmp_path, payload):
    """The control: each payload is live (so the refusals below are what keeps the marker away)."""
    path, marker = _hostile_checkpoint(tmp_path, payload)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize('payload', PAYLOADS.values(), ids=PAYLOADS.keys())
def test_loaders_refuse_the_payload(tmp_path, payload, monkeypatch):
    # weights-only stays on even when the environment asks torch to turn its default off
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    path, marker = _hostile_checkpoint(tmp_path, payload)
    with pytest.raises(UnsafeCheckpointError, match=REFUSAL):
        load_checkpoint_file(str(path))
    # mmengine's loader: runner.load_checkpoint / resume, load_from, init_detector, DetInferencer, MMSegInferencer
    with pytest.raises(UnsafeCheckpointError, match=REFUSAL):
        mmengine_checkpoint.CheckpointLoader.load_checkpoint(str(path))
    model, _cfg = build_model(SMOKE_SEG, init=False)
    with pytest.raises(UnsafeCheckpointError, match=REFUSAL):
        mmengine_checkpoint.load_checkpoint(model, str(path))
    # the backbone's init_cfg (Pretrained), from a path and from an https URL (its file already in the hub cache,
    # as after the download)
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
    os.link(path, tmp_path / 'hub' / 'checkpoints' / 'hostile.pth')
    for source in (str(path), 'https://example.org/releases/hostile.pth'):
        backbone = OverLoCK(arch=TINY_ARCH, init_cfg=dict(type='Pretrained', checkpoint=source))
        with pytest.raises(UnsafeCheckpointError, match=REFUSAL):
            backbone.init_weights()
    # the timm classifier's loader (tools/analysis_tools/eval_imagenet.py --checkpoint)
    with pytest.raises(UnsafeCheckpointError, match=REFUSAL):
        classifier_from_checkpoint('overlock_xt', str(path))
    assert not marker.exists()


def test_https_checkpoints_load_from_the_hub_cache(tmp_path, monkeypatch):
    """The control for the https case above: a plain weights file under the same URL loads."""
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path))
    (tmp_path / 'checkpoints').mkdir()
    torch.save(dict(state_dict=dict(weight=torch.ones(2))), tmp_path / 'checkpoints' / 'weights.pth')
    loaded = load_checkpoint_file('https://example.org/releases/weights.pth')
    assert torch.equal(loaded['state_dict']['weight'], torch.ones(2))


def _tool(args, cwd):
    return subprocess.Popen([sys.executable, osp.join(REPO_ROOT, args[0])] + [str(a) for a in args[1:]], cwd=cwd,
                            env=dict(os.environ, OMP_NUM_THREADS='1'), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_tools_refuse_the_payload(shapes_workdir, tmp_path, hostile):
    path, marker = hostile
    work = tmp_path / 'work'
    commands = {
        'train.py load_from': ['tools/train.py', SMOKE_SEG, '--work-dir', work / 'load_from', '--cfg-options',
                               f'load_from={path}'],
        'train.py --resume': ['tools/train.py', SMOKE_SEG, '--work-dir', work / 'resume', '--resume', path],
        'test.py': ['tools/test.py', SMOKE_SEG, path, '--work-dir', work / 'test'],
        'convert_checkpoint.py': ['tools/model_converters/convert_checkpoint.py', path, work / 'converted.pth'],
        'image_demo.py': ['demo/image_demo.py', 'data/generated/ade/held_out', SMOKE_SEG, path, '--out-dir',
                          work / 'demo'],
    }
    # all at once: most of each run is importing the stack
    running = {name: _tool(args, shapes_workdir) for name, args in commands.items()}
    outputs = {name: proc.communicate(timeout=600)[0] for name, proc in running.items()}
    for name, proc in running.items():
        assert proc.returncode != 0 and 'UnsafeCheckpointError' in outputs[name] and REFUSAL in outputs[name], \
            f'{name} exited {proc.returncode}:\n{outputs[name][-4000:]}'
    assert not marker.exists()
    assert not (work / 'converted.pth').exists()


# ---------------------------------------------------------------- https only


@pytest.mark.parametrize('load', [
    lambda url: load_checkpoint_file(url),
    lambda url: mmengine_checkpoint.CheckpointLoader.load_checkpoint(url),
    lambda url: mmengine_checkpoint.load_from_http(url),  # what open-mmlab:// and torchvision:// resolve through
    lambda url: OverLoCK(arch='t', init_cfg=dict(type='Pretrained', checkpoint=url)).init_weights(),
], ids=['load_checkpoint_file', 'CheckpointLoader', 'load_from_http', 'init_cfg'])
def test_plain_http_urls_are_refused(load):
    # the authors' release path over http: refused before any connection is made
    with pytest.raises(ValueError, match='over plain http.*use an https:// URL'):
        load('http://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_t_in1k_224.pth')


# ---------------------------------------------------------------- the converter and its input


def test_converter_never_writes_over_its_input(tmp_path):
    source = tmp_path / 'release.pth'
    torch.save(dict(state_dict=dict(weight=torch.ones(3))), source)
    before = source.read_bytes()
    (tmp_path / 'link.pth').symlink_to(source)
    os.link(source, tmp_path / 'hardlink.pth')
    converter = 'tools/model_converters/convert_checkpoint.py'
    targets = [source, tmp_path / '.' / 'release.pth', tmp_path / 'link.pth', tmp_path / 'hardlink.pth',
               tmp_path / 'converted.pth']  # the last, another path, is the control: it converts
    running = [_tool([converter, source, target], tmp_path) for target in targets]
    outputs = [proc.communicate(timeout=600)[0] for proc in running]
    for target, proc, out in zip(targets[:-1], running, outputs):
        assert proc.returncode != 0 and 'never writes over its input' in out, f'{target}:\n{out[-3000:]}'
    assert running[-1].returncode == 0, outputs[-1][-3000:]
    assert source.read_bytes() == before
    assert torch.equal(torch.load(targets[-1], weights_only=True)['state_dict']['weight'], torch.ones(3))
