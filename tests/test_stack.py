"""The installed stack works on current torch: a real mmengine Runner job that saves, resumes and load_froms a
checkpoint with torch's default ``weights_only``; mmcv's compiled ops; the pinned versions, which come from one
source, ``requirements/*.txt``, and agree wherever they appear. (mmoverlock's own extension is checked in
tests/test_ops.)"""
import importlib.metadata
import os
import os.path as osp
import re

import pytest
import torch
from torch import nn

import mmoverlock  # noqa: F401  (applies the compatibility fixes)
from _helpers import REPO_ROOT


def _toy_runner(work_dir, max_epochs, **kwargs):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class ToyRegressor(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 1)

        def forward(self, inputs, targets, mode='tensor'):
            pred = self.linear(inputs)
            if mode == 'loss':
                return dict(loss=((pred.squeeze(-1) - targets) ** 2).mean())
            return pred

    torch.manual_seed(0)
    xs = torch.randn(32, 4)
    data = [dict(inputs=x, targets=x.sum()) for x in xs]
    return Runner(
        model=ToyRegressor(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=data, sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=8, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        randomness=dict(seed=0), **kwargs)


def test_runner_checkpoint_resume_and_load_from(tmp_path):
    assert torch.__version__ >= '2.6', 'this test is about the weights_only default of torch >= 2.6'
    runner = _toy_runner(tmp_path / 'a', max_epochs=2)
    runner.train()
    ckpt = tmp_path / 'a' / 'epoch_2.pth'
    assert ckpt.is_file()
    # Every global the checkpoint needs is allow-listed; plain torch.load (weights_only default) reads it.
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt))
    allowed = {f'{g.__module__}.{g.__qualname__}' for g in torch.serialization.get_safe_globals()}
    assert set(unsafe) <= allowed, f'not allow-listed: {set(unsafe) - allowed}'
    state = torch.load(str(ckpt))
    assert state['meta']['epoch'] == 2 and 'message_hub' in state

    resumed = _toy_runner(tmp_path / 'a', max_epochs=3, resume=True)
    resumed.train()
    assert resumed.epoch == 3 and osp.isfile(tmp_path / 'a' / 'epoch_3.pth')
    assert resumed.message_hub.get_info('epoch') is not None

    loaded = _toy_runner(tmp_path / 'b', max_epochs=1, load_from=str(ckpt))
    loaded.load_or_resume()
    assert torch.equal(loaded.model.linear.weight, state['state_dict']['linear.weight'])


def test_mmcv_compiled_ops():
    from mmcv.ops import RoIAlign, nms

    feats = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(1, 2, 16, 16)
    rois = torch.tensor([[0, 0., 0., 7., 7.]])
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feats, rois)
    assert out.shape == (1, 2, 2, 2)
    # Averages over each quarter of the 8x8 box rise with row/column, as the input does.
    assert out[0, 0, 1, 1] > out[0, 0, 0, 0] and out[0, 1, 0, 0] > out[0, 0, 1, 1]
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2] and dets.shape == (2, 5)


def read_requirements(name):
    """The requirement lines of ``requirements/<name>.txt`` (comments and blank lines dropped)."""
    with open(osp.join(REPO_ROOT, 'requirements', f'{name}.txt')) as f:
        return [line.split('#', 1)[0].strip() for line in f if line.split('#', 1)[0].strip()]


def exact_pins():
    """``{distribution: version}`` for every ``name==version`` line of ``requirements/*.txt``."""
    pins = {}
    for name in sorted(os.listdir(osp.join(REPO_ROOT, 'requirements'))):
        for line in read_requirements(name[:-len('.txt')]):
            if '==' in line:
                dist, version = line.split('==')
                assert dist not in pins, f'{dist} is pinned twice'
                pins[dist] = version
    return pins


def test_installed_versions_equal_the_pins():
    pins = exact_pins()
    assert {'torch', 'mmcv', 'mmengine', 'mmdet', 'mmsegmentation', 'timm'} <= set(pins)
    installed = {dist: importlib.metadata.version(dist).split('+')[0] for dist in pins}  # 2.14.1+cu130 -> 2.14.1
    assert installed == pins


def test_setup_extras_are_the_requirement_files():
    """The installed mmoverlock's metadata (written by setup.py) lists exactly the files' requirements."""
    by_extra = {}
    for requirement in importlib.metadata.requires('mmoverlock'):
        spec, _, marker = requirement.partition(';')
        extra = re.search(r'extra == "(\w+)"', marker)
        by_extra.setdefault(extra.group(1) if extra else None, []).append(spec.strip())
    assert by_extra == {None: read_requirements('runtime'), 'mm': read_requirements('mminstall'),
                        'tests': read_requirements('tests')}


def test_pins_are_written_in_one_place():
    """The set-up script and setup.py read the files; no version of a pinned package is spelled out in them, and
    README's version table and the GPU check's wheels agree with the files."""
    pins = exact_pins()
    for script in ('tools/setup_env.sh', 'setup.py'):
        with open(osp.join(REPO_ROOT, script)) as f:
            text = f.read()
        assert not [v for v in set(pins.values()) if v in text], f'{script} spells out a pinned version'

    with open(osp.join(REPO_ROOT, 'README.md')) as f:
        readme = f.read()
    start = readme.index('| package | version |')  # the version table, wherever the README puts it
    table = readme[start:readme.index('\n\n', start)]
    in_table = {}
    for row in re.findall(r'^\| ([^|]+) \| ([^|]+) \|', table, flags=re.M):
        names, versions = (cell.strip().split(' / ') for cell in row)
        if len(names) == len(versions):
            in_table.update(zip(names, versions))
    assert {dist: in_table[dist] for dist in pins if dist in in_table} == {
        dist: version for dist, version in pins.items() if dist in in_table}
    assert set(pins) - set(in_table) <= {'openmim'}, 'a pinned package is missing from README\'s version table'

    with open(osp.join(REPO_ROOT, 'tools', 'gpu_check', 'wheels.txt')) as f:
        wheels = dict(line.split('#')[0].strip().split('==') for line in f if line.split('#')[0].strip())
    shared = set(wheels) & set(pins)
    assert 'mmengine' in shared and {dist: wheels[dist] for dist in shared} == {dist: pins[dist] for dist in shared}
