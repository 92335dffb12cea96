"""Named PSNR/SSIM protocols: deraining papers publish under incompatible ones (more than 1 dB apart).

=========  ==================================================================================
protocol   definition
=========  ==================================================================================
basicsr    BasicSR's ``calculate_psnr`` / ``calculate_ssim`` with ``test_y_channel=True``, no crop:
           MATLAB-style Y (16-235, not rounded), 11x11 Gaussian SSIM.
paper      What the ERL-Net authors computed: full-range Y = 0.299 R + 0.587 G + 0.114 B on
           uint8 (OpenCV's rounding), PSNR with data range 255, SSIM with a 7x7 uniform window,
           K1 = 0.01, K2 = 0.03 and sample covariances (scikit-image's defaults), averaged over
           the valid region.
matlab     The script of the Restormer-family tables: MATLAB ``rgb2ycbcr`` Y rounded to uint8 as MATLAB
           does (half away from zero), PSNR with data range 255, SSIM with an 11x11 Gaussian window
           (sigma 1.5), K1 = 0.01, K2 = 0.03, over the valid region (``filter2(..., 'valid')``).
=========  ==================================================================================

Images are BGR uint8 arrays (OpenCV order), as BasicSR's ``tensor2img`` gives them. Every number
these functions produce should be printed with its protocol's name.
"""

import cv2
import numpy as np
from basicsr.metrics import calculate_psnr, calculate_ssim

PROTOCOLS = ("basicsr", "paper", "matlab")
_K1, _K2, _RANGE = 0.01, 0.03, 255.0


def check_protocol(name: str) -> str:
    """Return ``name`` if it is a protocol; raise ValueError listing the allowed ones otherwise."""
    if name not in PROTOCOLS:
        raise ValueError(f"protocol {name!r} does not exist; allowed: {', '.join(PROTOCOLS)}")
    return name


def _check_images(image: np.ndarray, reference: np.ndarray) -> None:
    if image.shape != reference.shape:
        raise ValueError(f"image is {image.shape} but the reference is {reference.shape}: sizes must match")
    if image.dtype != np.uint8 or reference.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {image.dtype} and {reference.dtype}")


def luma(image: np.ndarray, protocol: str) -> np.ndarray:
    """The protocol's Y channel of a BGR uint8 image, as float64 in [0, 255]."""
    check_protocol(protocol)
    if image.ndim == 2:
        return image.astype(np.float64)
    if protocol == "paper":
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float64)
    if protocol == "matlab":
        # Exactly, in integers: 255000 Y = 4080000 + 65481 R + 128553 G + 24966 B, rounded half away from
        # zero as MATLAB's uint8 conversion does (NumPy's round goes half to even: 198.5 -> 198, not 199).
        blue, green, red = (image[..., c].astype(np.int64) for c in range(3))
        scaled = 4_080_000 + 65_481 * red + 128_553 * green + 24_966 * blue
        return ((scaled + 127_500) // 255_000).astype(np.float64)
    blue, green, red = (image[..., c].astype(np.float64) for c in range(3))
    return 16.0 + (65.481 * red + 128.553 * green + 24.966 * blue) / 255.0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(_RANGE**2 / mse)


def _valid_filter(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Correlate with ``window`` and keep the region where it fits entirely (MATLAB 'valid')."""
    full = cv2.filter2D(image, cv2.CV_64F, window, borderType=cv2.BORDER_REFLECT)
    radius = window.shape[0] // 2
    return full[radius : image.shape[0] - radius, radius : image.shape[1] - radius]


def _ssim(a: np.ndarray, b: np.ndarray, window: np.ndarray, sample_covariance: bool) -> float:
    size = window.shape[0]
    if min(a.shape) < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size} pixels, got {a.shape[1]}x{a.shape[0]}")
    mean_a, mean_b = _valid_filter(a, window), _valid_filter(b, window)
    correction = size * size / (size * size - 1) if sample_covariance else 1.0
    var_a = correction * (_valid_filter(a * a, window) - mean_a**2)
    var_b = correction * (_valid_filter(b * b, window) - mean_b**2)
    cov = correction * (_valid_filter(a * b, window) - mean_a * mean_b)
    c1, c2 = (_K1 * _RANGE) ** 2, (_K2 * _RANGE) ** 2
    ssim_map = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    line = cv2.getGaussianKernel(size, sigma, cv2.CV_64F)
    return line @ line.T


def psnr(image: np.ndarray, reference: np.ndarray, protocol: str) -> float:
    """PSNR (dB) of ``image`` against ``reference`` under ``protocol``."""
    check_protocol(protocol)
    _check_images(image, reference)
    if protocol == "basicsr":
        return float(calculate_psnr(image, reference, crop_border=0, test_y_channel=True))
    return _psnr(luma(image, protocol), luma(reference, protocol))


def ssim(image: np.ndarray, reference: np.ndarray, protocol: str) -> float:
    """SSIM of ``image`` against ``reference`` under ``protocol``."""
    check_protocol(protocol)
    _check_images(image, reference)
    if protocol == "basicsr":
        return float(calculate_ssim(image, reference, crop_border=0, test_y_channel=True))
    a, b = luma(image, protocol), luma(reference, protocol)
    if protocol == "paper":
        return _ssim(a, b, np.full((7, 7), 1 / 49), sample_covariance=True)
    return _ssim(a, b, _gaussian_window(), sample_covariance=False)
