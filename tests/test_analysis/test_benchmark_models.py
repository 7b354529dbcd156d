"""benchmark_models refuses what it cannot compare before building anything, naming the argument; the calls it times
switch the model's mode once per phase."""
import pytest

from _helpers import SMOKE_DET, assert_one_switch_per_phase
from mmoverlock.analysis import benchmark_models


@pytest.mark.parametrize('kwargs, match', [
    (dict(configs=[]), 'configs is empty'),
    (dict(configs=[SMOKE_DET], phases=['fit']), 'phases must be a non-empty subset'),
    (dict(configs=[SMOKE_DET], phases=[]), 'phases must be a non-empty subset'),
    (dict(configs=[SMOKE_DET], deploy=True), 'deploy-form backbone cannot be trained'),
    (dict(configs=[SMOKE_DET, SMOKE_DET]), 'distinct file names'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        benchmark_models(shape=(64, 64), **kwargs)


@pytest.mark.slow  # builds and trains the smoke detector
def test_model_under_test_switches_mode_once_per_phase(monkeypatch):
    """Like compare_backbones' Runner, the detector benchmark times the step alone: the model changes mode where the
    phase changes, not inside every timed call."""
    from mmoverlock.analysis.benchmark import ModelUnderTest
    under_test = ModelUnderTest(SMOKE_DET, (64, 64))
    under_test.model.train()  # (built in eval mode; start from training so that inference has a switch to make)
    assert_one_switch_per_phase(monkeypatch, under_test.model, under_test.infer, under_test.train_step)
