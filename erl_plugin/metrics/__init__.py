"""PSNR/SSIM under named protocols, registered as BasicSR metrics for ``val.metrics``.

Example options::

    val:
      metrics:
        psnr_paper: {type: protocol_psnr, protocol: paper}
        ssim_matlab: {type: protocol_ssim, protocol: matlab}
"""

import numpy as np
from basicsr.utils.registry import METRIC_REGISTRY

from erl_plugin.metrics.protocols import PROTOCOLS, check_protocol, luma, psnr, ssim


@METRIC_REGISTRY.register()
def protocol_psnr(img: np.ndarray, img2: np.ndarray, protocol: str = "basicsr", **kwargs: object) -> float:
    """BasicSR metric: PSNR under ``protocol`` (``basicsr``, ``paper`` or ``matlab``)."""
    return psnr(img, img2, protocol)


@METRIC_REGISTRY.register()
def protocol_ssim(img: np.ndarray, img2: np.ndarray, protocol: str = "basicsr", **kwargs: object) -> float:
    """BasicSR metric: SSIM under ``protocol`` (``basicsr``, ``paper`` or ``matlab``)."""
    return ssim(img, img2, protocol)


__all__ = ["PROTOCOLS", "check_protocol", "luma", "protocol_psnr", "protocol_ssim", "psnr", "ssim"]
