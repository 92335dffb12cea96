"""Parameter and FLOP counts of a network, via ``mmengine.analysis.FlopAnalyzer``.

Only ``mmengine.analysis`` is imported: other mmengine entry points go through ``pkg_resources``
helpers that break on recent setuptools.
"""

import torch
from mmengine.analysis import FlopAnalyzer
from torch import nn


def complexity(net: nn.Module, input_shape: tuple[int, int, int, int] = (1, 3, 320, 320)) -> dict[str, int]:
    """Count the parameters of ``net`` and the FLOPs of one forward pass.

    FLOPs follow fvcore's convention: one fused multiply-add counts as one FLOP (so these are
    MACs), and only operators with a known cost (convolutions, matmuls, ...) are counted;
    activations, pooling and element-wise sums count as zero. The forward pass runs traced on a
    zero input placed on ``net``'s device, without gradients and without printing warnings.

    Args:
        net (nn.Module): The network to measure.
        input_shape (tuple[int, int, int, int]): Shape (N, C, H, W) of the input. Default:
            (1, 3, 320, 320), the paper's crop size.

    Returns:
        dict[str, int]: ``{"params": ..., "flops": ...}``.

    Example:
        >>> complexity(nn.Conv2d(3, 8, 1), (1, 3, 4, 4))
        {'params': 32, 'flops': 384}
    """
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    inputs = torch.zeros(input_shape, device=device)
    analyzer = (
        FlopAnalyzer(net, (inputs,))
        .unsupported_ops_warnings(False)
        .uncalled_modules_warnings(False)
        .tracer_warnings("none")
    )
    with torch.no_grad():
        flops = analyzer.total()
    params = sum(p.numel() for p in net.parameters())
    return {"params": params, "flops": int(flops)}
