"""ContMix by its definition, in float64: the oracle of the op tests (CPU backends, the CPU driver of the CUDA
bodies, the CUDA kernels). Imports torch only."""
import torch


def reference(weights, value, K, rpb=None, softmax=False):
    """ContMix by its definition, in float64: gather every pixel's clamped K×K window and weight it."""
    B, G, H, W, C = value.shape
    dev = value.device
    rows = (torch.arange(H, device=dev) - K // 2).clamp(0, H - K)[:, None] + torch.arange(K, device=dev)  # [H, K]
    cols = (torch.arange(W, device=dev) - K // 2).clamp(0, W - K)[:, None] + torch.arange(K, device=dev)  # [W, K]
    logits = weights.double()
    if rpb is not None:
        rel_r = rows - torch.arange(H, device=dev)[:, None] + K - 1
        rel_c = cols - torch.arange(W, device=dev)[:, None] + K - 1
        bias = rpb.double()[:, rel_r[:, None, :, None], rel_c[None, :, None, :]]  # [G, H, W, K, K]
        logits = logits + bias.reshape(G, H, W, K * K)
    if softmax:
        logits = logits.softmax(-1)
    window = value.double()[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # [B, G, H, W, K, K, C]
    return (logits.unsqueeze(-1) * window.reshape(B, G, H, W, K * K, C)).sum(-2)
