"""``save_chart``: the benchmark tools' charts as palette PNGs, the same picture in fewer bytes."""
import io

import numpy as np
import pytest

from mmoverlock.analysis.visualization import save_chart

matplotlib = pytest.importorskip('matplotlib')
matplotlib.use('Agg')
plt = pytest.importorskip('matplotlib.pyplot')
Image = pytest.importorskip('PIL.Image')


def _bar_chart():
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, title in zip(axes, ('inference time / ConvNeXt-T', 'training step time / ConvNeXt-T')):
        for i, name in enumerate(('convnext', 'overlock', 'swin')):
            ax.bar([j + i * 0.25 for j in range(2)], [1.0, 1.5 + i / 3], 0.25, label=name)
        ax.axhline(1, color='k', lw=0.8)
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    return fig


def test_chart_is_a_palette_png_that_looks_the_same_in_fewer_bytes(tmp_path):
    fig = _bar_chart()
    path = tmp_path / 'chart.png'
    save_chart(fig, str(path), dpi=110)
    full = io.BytesIO()
    fig.savefig(full, format='png', dpi=110)
    plt.close(fig)
    with Image.open(path) as saved, Image.open(full) as original:
        assert saved.format == 'PNG' and saved.mode == 'P'
        assert saved.size == original.size
        difference = np.abs(np.asarray(saved.convert('RGB'), dtype=np.int16)
                            - np.asarray(original.convert('RGB'), dtype=np.int16))
    assert difference.mean() < 1.0 and np.percentile(difference, 99.9) <= 16
    assert path.stat().st_size < 0.6 * len(full.getvalue())
