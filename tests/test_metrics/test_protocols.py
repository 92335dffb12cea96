"""Each PSNR/SSIM protocol against an independent computation on fixed inputs."""

import numpy as np
import pytest
from basicsr.metrics import calculate_metric, calculate_psnr, calculate_ssim
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from erl_plugin.metrics import PROTOCOLS, luma, psnr, ssim


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    noisy = np.clip(clean.astype(int) + rng.integers(-25, 26, clean.shape), 0, 255).astype(np.uint8)
    return noisy, clean


def test_basicsr_is_basicsrs_own_y_channel_metrics(pair: tuple[np.ndarray, np.ndarray]) -> None:
    noisy, clean = pair
    assert psnr(noisy, clean, "basicsr") == calculate_psnr(noisy, clean, crop_border=0, test_y_channel=True)
    assert ssim(noisy, clean, "basicsr") == calculate_ssim(noisy, clean, crop_border=0, test_y_channel=True)


def test_paper_is_full_range_y_with_skimage_defaults(pair: tuple[np.ndarray, np.ndarray]) -> None:
    noisy, clean = pair
    blue, green, red = (clean[..., c].astype(np.float64) for c in range(3))
    independent = np.round(0.299 * red + 0.587 * green + 0.114 * blue)
    assert np.abs(luma(clean, "paper") - independent).max() <= 1  # OpenCV's fixed-point rounding
    y_noisy, y_clean = luma(noisy, "paper"), luma(clean, "paper")
    assert psnr(noisy, clean, "paper") == pytest.approx(peak_signal_noise_ratio(y_clean, y_noisy, data_range=255))
    # scikit-image's defaults: 7x7 uniform window, K1 0.01, K2 0.03, sample covariance
    assert ssim(noisy, clean, "paper") == pytest.approx(structural_similarity(y_noisy, y_clean, data_range=255))


def test_matlab_y_is_rounded_rgb2ycbcr() -> None:
    colours = np.array([[[255, 255, 255], [0, 0, 0], [0, 0, 255], [0, 255, 0], [255, 0, 0]]], np.uint8)  # BGR
    # MATLAB: rgb2ycbcr of white, black, red, green, blue
    assert luma(colours, "matlab").tolist() == [[235.0, 16.0, 81.0, 145.0, 41.0]]
    # 198.5 exactly: MATLAB's uint8 conversion rounds half away from zero (NumPy's round would give 198).
    assert luma(np.array([[[243, 216, 194]]], np.uint8), "matlab").tolist() == [[199.0]]
    every = np.stack(np.meshgrid(*[np.arange(0, 256, 5)] * 3, indexing="ij"), -1).reshape(1, -1, 3).astype(np.uint8)
    blue, green, red = (every[..., c].astype(np.float64) for c in range(3))
    exact = 16.0 + (65.481 * red + 128.553 * green + 24.966 * blue) / 255.0
    assert np.abs(luma(every, "matlab") - exact).max() <= 0.5 + 1e-9


def test_matlab_ssim_is_gaussian_11x11_over_the_valid_region(pair: tuple[np.ndarray, np.ndarray]) -> None:
    noisy, clean = pair
    y_noisy, y_clean = luma(noisy, "matlab"), luma(clean, "matlab")
    expected = structural_similarity(
        y_noisy, y_clean, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(noisy, clean, "matlab") == pytest.approx(expected)
    assert psnr(noisy, clean, "matlab") == pytest.approx(peak_signal_noise_ratio(y_clean, y_noisy, data_range=255))


def test_the_protocols_really_differ(pair: tuple[np.ndarray, np.ndarray]) -> None:
    noisy, clean = pair
    values = {protocol: psnr(noisy, clean, protocol) for protocol in PROTOCOLS}
    assert abs(values["paper"] - values["basicsr"]) > 1.0  # full-range Y against 16-235 Y


def test_registered_for_val_metrics(pair: tuple[np.ndarray, np.ndarray]) -> None:
    noisy, clean = pair
    data = {"img": noisy, "img2": clean}
    assert calculate_metric(data, {"type": "protocol_psnr", "protocol": "paper"}) == psnr(noisy, clean, "paper")
    assert calculate_metric(data, {"type": "protocol_ssim", "protocol": "matlab"}) == ssim(noisy, clean, "matlab")


def test_errors_name_what_is_wrong(pair: tuple[np.ndarray, np.ndarray]) -> None:
    noisy, clean = pair
    with pytest.raises(ValueError, match="protocol 'ieee' does not exist; allowed: basicsr, paper, matlab"):
        psnr(noisy, clean, "ieee")
    with pytest.raises(ValueError, match="sizes must match"):
        ssim(noisy[:-1], clean, "paper")
