"""What the visualisation tools (``tools/analysis_tools/visualize_erf.py``, ``visualize_contmix.py``) share: the
input-size argument, the bundled images, the CPU's name for their timing lines."""
import argparse
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
