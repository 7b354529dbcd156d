"""The authors' ImageNet training loss: the main loss plus 0.4 times the same loss on the auxiliary logits."""
from typing import Callable, Tuple, Union

import torch
from torch import nn

#: Weight of the auxiliary loss in the authors' ``train.py`` (``--aux-loss-ratio``).
AUX_LOSS_RATIO = 0.4


class AuxiliaryLoss(nn.Module):
    """Wrap any timm/torch criterion so that it takes the ``(logits, aux_logits)`` of an ``overlock_*`` model built
    with ``aux_head=True`` in training mode, and plain logits everywhere else (evaluation, other models).

    ``loss = criterion(logits, target) + aux_ratio * criterion(aux_logits, target)``, as the authors' training script
    computes it; soft targets (mixup / cutmix) pass through unchanged, since both terms use the same criterion.

    Args:
        criterion (Callable): The loss of the main logits, e.g. ``timm.loss.SoftTargetCrossEntropy()``.
        aux_ratio (float): Weight of the auxiliary term. Defaults to ``AUX_LOSS_RATIO`` (0.4).

    Example:
        >>> import timm, torch
        >>> model = timm.create_model('overlock_xt', num_classes=10, aux_head=True).train()
        >>> loss_fn = AuxiliaryLoss(torch.nn.CrossEntropyLoss())
        >>> loss = loss_fn(model(torch.randn(2, 3, 64, 64)), torch.tensor([1, 2]))
    """

    def __init__(self, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 aux_ratio: float = AUX_LOSS_RATIO):
        super().__init__()
        if not callable(criterion):
            raise TypeError(f'AuxiliaryLoss: criterion must be callable (a loss module or function), '
                            f'got {type(criterion).__name__}')
        if isinstance(aux_ratio, bool) or not isinstance(aux_ratio, (int, float)) or aux_ratio < 0:
            raise ValueError(f'AuxiliaryLoss: aux_ratio must be a number >= 0, got {aux_ratio!r}')
        self.criterion = criterion
        self.aux_ratio = float(aux_ratio)

    def forward(self, output: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
                target: torch.Tensor) -> torch.Tensor:
        if isinstance(output, torch.Tensor):
            return self.criterion(output, target)
        if not isinstance(output, (tuple, list)) or len(output) != 2:
            raise TypeError(f'AuxiliaryLoss: output must be logits or a (logits, aux_logits) pair, '
                            f'got {type(output).__name__}')
        logits, aux_logits = output
        return self.criterion(logits, target) + self.aux_ratio * self.criterion(aux_logits, target)

    def extra_repr(self) -> str:
        return f'aux_ratio={self.aux_ratio}'
