"""benchmark_models refuses what it cannot compare before building anything, naming the argument."""
import pytest

from _helpers import SMOKE_DET
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
