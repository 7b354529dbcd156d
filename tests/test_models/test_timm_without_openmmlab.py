"""``timm.create_model('overlock_*')`` in an environment without OpenMMLab: a subprocess in which importing mmengine,
mmcv, mmdet or mmseg fails, as where they are not installed."""
import os
import os.path as osp
import subprocess
import sys

import pytest

# Runs a subprocess that builds every variant: left out of `make test-fast`.
pytestmark = pytest.mark.slow

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

SCRIPT = r'''
import importlib.abc
import sys

HIDDEN = ('mmengine', 'mmcv', 'mmdet', 'mmseg')


class HideOpenMMLab(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in HIDDEN:
            raise ModuleNotFoundError(f'No module named {name!r} (hidden by the test)', name=name)
        return None


sys.meta_path.insert(0, HideOpenMMLab())

import timm
import torch

import mmoverlock
import mmoverlock.models

model = timm.create_model('overlock_t', num_classes=10, aux_head=True)
x = torch.randn(2, 3, 64, 64)
with torch.no_grad():
    assert model.eval()(x).shape == (2, 10)
main, aux = model.train()(x)
assert main.shape == aux.shape == (2, 10)
features = timm.create_model('overlock_xt', features_only=True, depth=[1, 1, 1, 1], sub_depth=[2, 2]).eval()
with torch.no_grad():
    assert [f.shape[1] for f in features(x)] == [56, 112, 340, 420]
assert not hasattr(mmoverlock.models, 'OverLoCK')
loaded = sorted(name for name in sys.modules if name.split('.')[0] in HIDDEN)
assert not loaded, loaded
print('ok')
'''


def test_timm_models_need_neither_mmengine_nor_mmcv():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run([sys.executable, '-c', SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr[-3000:]
