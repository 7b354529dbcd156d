"""What the visualisation tools (``tools/analysis_tools/visualize_erf.py``, ``visualize_contmix.py``) share: the
input-size argument, the bundled images, the CPU's name for their timing lines; and how the benchmark tools save
their charts (``save_chart``)."""
import argparse
import io
import os.path as osp
import platform
import subprocess
import sys
from typing import Tuple

#: The bundled images the tools read by default (relative to the working directory, like the configs' data roots):
#: the synthetic ADE20K-format validation set of ``tools/misc/generate_data.py``.
DEFAULT_IMAGES = 'data/generated/ade/images/validation'


def parse_size(text: str, minimum: int = 1) -> Tuple[int, int]:
    """``'224'`` -> (224, 224); ``'HxW'`` -> (H, W); sides below ``minimum`` are refused (an argparse ``type``)."""
    try:
        parts = [int(p) for p in text.lower().split('x')]
    except ValueError:
        parts = []
    parts = parts * 2 if len(parts) == 1 else parts
    if len(parts) != 2 or min(parts) < minimum:
        raise argparse.ArgumentTypeError(f'a size is N or HxW with integer sides >= {minimum}, got {text!r}')
    return parts[0], parts[1]


def image_folder(folder, generator: str) -> str:
    """``folder``, or :data:`DEFAULT_IMAGES` for ``None``, written first by the ``generator`` script (run with this
    interpreter, ``--out data/generated``) when it is absent."""
    if folder is not None:
        return folder
    if not osp.isdir(DEFAULT_IMAGES):
        print(f'{DEFAULT_IMAGES} is absent: generating the bundled data with {generator}')
        subprocess.run([sys.executable, generator, '--out', osp.dirname(osp.dirname(osp.dirname(DEFAULT_IMAGES)))],
                       check=True)
    return DEFAULT_IMAGES


def cpu_name() -> str:
    """The CPU model as ``/proc/cpuinfo`` names it (``platform.processor()`` where there is none)."""
    if osp.exists('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            return next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), '')
    return platform.processor()


def save_chart(fig, path: str, dpi: int = 110) -> None:
    """Save a matplotlib chart (bars, lines, text on flat colours) as a PNG of at most 256 colours.

    A chart's few colours and their anti-aliased edges fit a palette, so the picture looks the same at about 40% of
    the bytes of matplotlib's RGBA file (51 KB -> 21 KB for a benchmark's four-panel bar chart). Every benchmark run
    commits one, and the repository keeps its tracked files under 20 MiB (``tests/test_repository_size.py``).
    Images drawn over photographs (the ERF and ContMix kernel figures) keep matplotlib's own full-colour files.
    """
    from PIL import Image
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=dpi)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert('RGB').quantize(256).save(path, format='PNG', optimize=True)
