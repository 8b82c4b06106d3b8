"""The corruption generator: shapes, dtypes, determinism, monotone damage, and agreement with slow
per-image references written from the published definitions (numpy loops, scipy, PIL, colorsys)."""

from __future__ import annotations

import colorsys
import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules import corruptions as C

RANDOM = {
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "glass_blur",
    "motion_blur",
    "snow",
    "frost",
    "fog",
    "elastic_transform",
}


def natural_images(n: int = 12, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Multi-scale random images (octaves 2..32 px with a slowly falling 1/f-like weight) with a few
    sharp-edged rectangles: closer to photographs than uniform noise. uint8 (n, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, size, size)
    for w, s in zip((1, 0.7, 0.5, 0.35, 0.25), (2, 4, 8, 16, 32)):
        x += w * F.interpolate(
            torch.randn(n, 3, s, s, generator=g), size=(size, size), mode="bicubic", align_corners=False
        )
    x = (x - x.amin((1, 2, 3), keepdim=True)) / (x.amax((1, 2, 3), keepdim=True) - x.amin((1, 2, 3), keepdim=True))
    for i in range(n):
        for _ in range(3):
            r = torch.randint(0, size - 8, (4,), generator=g).tolist()
            x[i, :, r[0] : r[0] + 4 + r[2] % 8, r[1] : r[1] + 4 + r[3] % 10] = torch.rand(3, 1, 1, generator=g)
    return (0.1 + 0.8 * x).mul(255).round().to(torch.uint8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small batches: one intra-op thread (two threads on a loaded 2-core machine spin-wait ~50x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def imgs() -> torch.Tensor:
    return natural_images()


def test_names_and_tables():
    assert len(C.CORRUPTIONS) == 15 == len(set(C.CORRUPTIONS))
    assert set(C.CORRUPTIONS) == set(C.CORRUPTION_FUNCTIONS) == set(C.CIFAR_PARAMS)
    assert all(len(v) == 5 for v in C.CIFAR_PARAMS.values())
    with pytest.raises(ValueError, match="unknown corruption"):
        C.check_corruptions(["gaussian_noise", "speckle"])
    with pytest.raises(ValueError, match="severit"):
        C.corrupt(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "fog", 6)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        C.corrupt(torch.zeros(3, 32, 32, dtype=torch.uint8), "fog", 1)


@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_shape_dtype_determinism(imgs, name):
    x = imgs[:4]
    for s in C.SEVERITIES:
        a = C.corrupt(x, name, s, torch.Generator().manual_seed(7))
        b = C.corrupt(x, name, s, torch.Generator().manual_seed(7))
        assert a.shape == x.shape and a.dtype == torch.uint8
        assert torch.equal(a, b), f"{name}/{s} not deterministic under a seed"
        c = C.corrupt(x, name, s, torch.Generator().manual_seed(8))
        assert torch.equal(a, c) != (name in RANDOM), f"{name}/{s}: seed dependence wrong"
    xf = x.float() / 255
    yf = C.corrupt(xf, name, 3, torch.Generator().manual_seed(7))
    assert yf.dtype == torch.float32 and yf.shape == x.shape
    assert yf.min() >= 0 and yf.max() <= 1
    # float and uint8 paths agree up to the final 8-bit step (and jpeg's / pixelate's internal rounding)
    yu = C.corrupt(x, name, 3, torch.Generator().manual_seed(7)).float() / 255
    assert (yf - yu).abs().mean() < 2.5 / 255


def _mean_psnr(x, name, s, seed=0):
    y = C.corrupt(x, name, s, torch.Generator().manual_seed(seed))
    return float(C.psnr(y, x).clamp(max=100).mean())


# The official parameter tables do not make every corruption's PSNR fall: elastic_transform's affine
# jitter SHRINKS with severity (8% -> 3% of the side) while its elastic field grows, and glass_blur's
# stronger pre-blur at severities 2-3 (resp. 5) makes the pixel shuffle cost less than at 1 (resp. 4).
# Frost blends with weights (c0, c1) whose PSNR depends on the texture's brightness; its damage is the
# falling image-to-texture ratio (checked through the correlation with the clean image).
PSNR_MONOTONE = [c for c in C.CORRUPTIONS if c not in ("elastic_transform", "glass_blur", "frost")]


@pytest.mark.parametrize("name", PSNR_MONOTONE)
def test_psnr_falls_with_severity(imgs, name):
    p = [_mean_psnr(imgs, name, s) for s in C.SEVERITIES]
    assert all(a > b for a, b in zip(p, p[1:])), f"{name}: PSNR by severity {p}"
    assert p[0] < 60, f"{name}: severity 1 leaves the images (almost) unchanged: {p[0]:.1f} dB"


def test_frost_glass_elastic_damage(imgs):
    def corr(a, b):
        a, b = a.float().flatten(1), b.float().flatten(1)
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())

    r = [corr(C.frost(imgs, s, torch.Generator().manual_seed(0)), imgs) for s in C.SEVERITIES]
    assert all(a > b for a, b in zip(r, r[1:])), f"frost correlation with the clean image {r}"
    # glass: same sigma, two shuffle passes instead of one -> more damage
    g = {s: _mean_psnr(imgs, "glass_blur", s) for s in C.SEVERITIES}
    assert g[4] < g[2] and g[5] < g[3], g
    # elastic: the displacement field's RMS grows over severities 2..5 (amplitude up, smoothing down)
    rms = []
    for s in (2, 3, 4, 5):
        amp, smooth, _ = C.CIFAR_PARAMS["elastic_transform"][s - 1]
        noise = torch.rand(64, 2, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        rms.append(float((C.gaussian_blur(noise, smooth, 3.0, "symmetric") * amp).pow(2).mean().sqrt()))
    assert all(a < b for a, b in zip(rms, rms[1:])), rms


# ---------------------------------------------------------------------------------------------
# references
def test_glass_shuffle_matches_the_literal_loop():
    """The original's loop with numpy tuple 'swaps' (which copy, through views) vs the batched gather."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 12, 12), generator=g).float()
    d = 1
    n = len(range(12 - d, d, -1))
    off = torch.randint(-d, d, (3, n, n, 2), generator=g)
    out = C.glass_shuffle(x, off, d)
    for b in range(3):
        a = x[b].permute(1, 2, 0).numpy().copy()  # HWC like the original
        for i, h in enumerate(range(12 - d, d, -1)):
            for j, w in enumerate(range(12 - d, d, -1)):
                dx, dy = off[b, i, j].tolist()
                hp, wp = h + dy, w + dx
                a[h, w], a[hp, wp] = a[hp, wp], a[h, w]
        assert np.array_equal(out[b].permute(1, 2, 0).numpy(), a)


def test_brightness_matches_colorsys(imgs):
    x = imgs[:2]
    for s in (1, 5):
        c = C.CIFAR_PARAMS["brightness"][s - 1]
        ref = np.empty((2, 3, 32, 32))
        f = x.double().numpy() / 255
        for b in range(2):
            for i in range(32):
                for j in range(32):
                    h, sat, v = colorsys.rgb_to_hsv(*f[b, :, i, j])
                    ref[b, :, i, j] = colorsys.hsv_to_rgb(h, sat, min(v + c, 1.0))
        ref = np.floor(np.clip(ref, 0, 1) * 255 + 1e-4)
        out = C.brightness(x, s).numpy()
        assert np.abs(out - ref).max() <= 1 and (out == ref).mean() > 0.99


def test_contrast_and_noise_statistics(imgs):
    f = imgs[:2].double() / 255
    m = f.mean((2, 3), keepdim=True)
    ref = torch.floor(((f - m) * 0.4 + m).clamp(0, 1) * 255 + 1e-4)
    assert (C.contrast(imgs[:2], 3).double() - ref).abs().max() <= 1
    grey = torch.full((64, 3, 32, 32), 0.5)
    g = torch.Generator().manual_seed(0)
    assert abs(float((C.gaussian_noise(grey, 5, g) - grey).std()) - 0.10) < 0.003
    sh = C.shot_noise(grey, 5, g) - grey  # Poisson(0.5 c) / c: variance 0.5 / c
    assert abs(float(sh.var()) - 0.5 / 50) < 0.001 and abs(float(sh.mean())) < 0.002
    imp = C.impulse_noise(grey, 5, g)
    assert abs(float((imp != grey).float().mean()) - 0.07) < 0.005
    assert set(imp[imp != grey].unique().tolist()) == {0.0, 1.0}


def test_plasma_fractal_matches_a_per_point_diamond_square():
    """Batched torch diamond-square vs an explicit per-point loop consuming the same random numbers."""
    size, decay = 16, 2.0
    g = torch.Generator().manual_seed(3)
    out = C.plasma_fractal(2, size, decay, g)
    g = torch.Generator().manual_seed(3)
    ref = np.zeros((2, size, size))
    step, wibble = size, 100.0

    def noise(shape):
        return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1).numpy() * wibble * wibble

    while step >= 2:
        half = step // 2
        k = size // step
        u = noise((2, k, k))
        old = ref.copy()
        for b in range(2):
            for i in range(k):
                for j in range(k):
                    r, c = i * step, j * step
                    s = sum(old[b, (r + a) % size, (c + e) % size] for a in (0, step) for e in (0, step))
                    ref[b, r + half, c + half] = s / 4 + u[b, i, j]
        u1, u2 = noise((2, k, k)), noise((2, k, k))
        cur = ref.copy()
        for b in range(2):
            for i in range(k):
                for j in range(k):
                    r, c = i * step, j * step
                    # diamond point on a top edge (r, c + half): left/right corners, centres above/below
                    s = (
                        cur[b, r, c]
                        + cur[b, r, (c + step) % size]
                        + cur[b, (r + half) % size, c + half]
                        + cur[b, (r - half) % size, c + half]
                    )
                    ref[b, r, c + half] = s / 4 + u1[b, i, j]
        for b in range(2):
            for i in range(k):
                for j in range(k):
                    r, c = i * step, j * step
                    # diamond point on a left edge (r + half, c): corners above/below, centres left/right
                    s = (
                        cur[b, r, c]
                        + cur[b, (r + step) % size, c]
                        + cur[b, r + half, (c + half) % size]
                        + cur[b, r + half, (c - half) % size]
                    )
                    ref[b, r + half, c] = s / 4 + u2[b, i, j]
        step //= 2
        wibble /= decay
    ref -= ref.min((1, 2), keepdims=True)
    ref /= ref.max((1, 2), keepdims=True)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5)


def test_motion_blur_matches_per_pixel_sum():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 10, 12, generator=g)
    angles = torch.tensor([30.0, -120.0])
    out = C.directional_blur(x, 4, 1.5, angles)
    k = np.exp(-(np.arange(9) ** 2) / (2 * 1.5**2))
    k /= k.sum()
    ref = np.zeros((2, 3, 10, 12))
    for b in range(2):
        a = math.radians(float(angles[b]))
        for i in range(9):
            ox, oy = math.ceil(i * math.cos(a) - 0.5), math.ceil(i * math.sin(a) - 0.5)
            for r in range(10):
                for c in range(12):
                    ref[b, :, r, c] += k[i] * x[b, :, min(max(r + oy, 0), 9), min(max(c + ox, 0), 11)].numpy()
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5)


def test_defocus_kernel_and_filter():
    # disk radius 1 = the 5-point cross; alias blur spreads it; the kernel sums to 1
    k = C.defocus_kernel(1, 0.2)
    assert (
        abs(float(k.sum()) - 1) < 1e-6
        and k.shape[0] % 2 == 1
        and torch.allclose(k, k.T)
        and torch.allclose(k, k.flip(0))
    )
    ndi = pytest.importorskip("scipy.ndimage")
    x = natural_images(2)
    for s in (1, 5):
        kk = C.defocus_kernel(*C.CIFAR_PARAMS["defocus_blur"][s - 1]).double().numpy()
        f = x.double().numpy() / 255
        ref = np.stack([[ndi.correlate(f[b, c], kk, mode="mirror") for c in range(3)] for b in range(2)])
        ref = np.floor(np.clip(ref, 0, 1) * 255 + 1e-4)
        assert np.abs(C.defocus_blur(x, s).numpy() - ref).max() <= 1


def test_zoom_blur_matches_scipy_zoom(imgs):
    ndi = pytest.importorskip("scipy.ndimage")
    x = imgs[:2]
    s = 3
    f = x.permute(0, 2, 3, 1).numpy().astype(np.float32) / 255
    zooms = C.CIFAR_PARAMS["zoom_blur"][s - 1]
    ref = []
    for img in f:
        out = np.zeros_like(img)
        for z in zooms:
            ch = int(np.ceil(32 / z))
            top = (32 - ch) // 2
            zi = ndi.zoom(img[top : top + ch, top : top + ch], (z, z, 1), order=1)
            t = (zi.shape[0] - 32) // 2
            out += zi[t : t + 32, t : t + 32]
        ref.append((img + out) / (len(zooms) + 1))
    ref = np.floor(np.clip(np.stack(ref), 0, 1) * 255 + 1e-4).transpose(0, 3, 1, 2)
    got = C.zoom_blur(x, s).numpy().astype(int)
    assert np.abs(got - ref).max() <= 1 and (got == ref).mean() > 0.98


def test_blur_and_remap_match_scipy():
    ndi = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 20, 20, generator=g)
    for mode, smode in (("edge", "nearest"), ("symmetric", "reflect"), ("reflect101", "mirror")):
        ref = np.stack([ndi.gaussian_filter(x[0, c].double().numpy(), 1.3, mode=smode, truncate=3.0) for c in range(2)])
        np.testing.assert_allclose(C.gaussian_blur(x, 1.3, 3.0, mode)[0].numpy(), ref, atol=1e-5)
    ys = torch.rand(1, 20, 20, generator=g) * 26 - 3
    xs = torch.rand(1, 20, 20, generator=g) * 26 - 3
    for mode, smode in (("symmetric", "reflect"), ("reflect101", "mirror")):
        ref = np.stack(
            [
                ndi.map_coordinates(
                    x[0, c].double().numpy(), [ys[0].double().numpy(), xs[0].double().numpy()], order=1, mode=smode
                )
                for c in range(2)
            ]
        )
        np.testing.assert_allclose(C.remap(x, ys, xs, mode)[0].numpy(), ref, atol=1e-5)


def test_elastic_severity1_is_an_affine_warp_of_bounded_size(imgs):
    """Severity 1 has no elastic field: a pure affine warp whose control points move <= 2.56 px, so
    every output pixel stays within a few pixels of its source (checked on a coordinate image)."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    coords = torch.stack([yy / 31, xx / 31, torch.zeros_like(yy)])[None].expand(8, 3, 32, 32)
    out = C.elastic_transform(coords, 1, torch.Generator().manual_seed(0))
    shift = ((out[:, 0] - coords[:, 0]).abs().amax() * 31, (out[:, 1] - coords[:, 1]).abs().amax() * 31)
    assert 0.05 < max(shift) < 8, shift


def test_pixelate_and_jpeg_match_pil(imgs):
    from PIL import Image

    x = imgs[:3]
    for s in (1, 5):
        c = C.CIFAR_PARAMS["pixelate"][s - 1]
        q = C.CIFAR_PARAMS["jpeg_compression"][s - 1]
        pix, jpg = C.pixelate(x, s), C.jpeg_compression(x, s)
        for b in range(3):
            im = Image.fromarray(x[b].permute(1, 2, 0).numpy())
            ref = np.asarray(im.resize((int(32 * c), int(32 * c)), Image.BOX).resize((32, 32), Image.BOX))
            got = pix[b].permute(1, 2, 0).numpy().astype(int)
            assert np.abs(got - ref).max() <= 1 and (got == ref).mean() > 0.99
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=q)
            assert np.array_equal(jpg[b].permute(1, 2, 0).numpy(), np.asarray(Image.open(io.BytesIO(buf.getvalue()))))


def test_frost_textures_fixed_and_bounded():
    t = C.frost_textures()
    assert t.shape == (5, 3, 128, 128) and t.min() >= 0 and t.max() <= 1
    assert 0.35 < float(t.mean()) < 0.75 and float(t.std()) > 0.08
    assert torch.equal(t, C.frost_textures.__wrapped__())  # same textures from the fixed seed, uncached


# ---------------------------------------------------------------------------------------------
# the CIFAR-C writer
def test_generate_cifar_c_layout(tmp_path, imgs):
    y = torch.arange(len(imgs)) % 10
    out = tmp_path / "CIFAR-10-C"
    C.generate_cifar_c(imgs, y, out, ["fog", "jpeg_compression"], seed=1, verbose=False)
    labels = np.load(out / "labels.npy")
    assert labels.shape == (5 * len(imgs),) and np.array_equal(labels, np.tile(y.numpy(), 5))
    for name in ("fog", "jpeg_compression"):
        a = np.load(out / f"{name}.npy")
        assert a.shape == (5 * len(imgs), 32, 32, 3) and a.dtype == np.uint8
        # severity block s equals the function's output with that stream's seed
        s = 3
        g = torch.Generator().manual_seed(C.stream_seed(1, name, s))
        ref = C.corrupt(imgs, name, s, g).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(a[(s - 1) * len(imgs) : s * len(imgs)], ref)
    assert not list(out.glob("*.tmp-*"))
    meta = json.loads((out / "generation.json").read_text())
    assert meta["seed"] == 1 and set(meta["mean_psnr_db"]) == {"fog", "jpeg_compression"}
    fog = [meta["mean_psnr_db"]["fog"][str(s)] for s in C.SEVERITIES]
    assert all(a > b for a, b in zip(fog, fog[1:])) and "frost" in meta["differences_from_official"]
    first = np.load(out / "fog.npy")
    C.generate_cifar_c(imgs, y, out, ["fog"], seed=1, verbose=False)
    assert np.array_equal(np.load(out / "fog.npy"), first)


def test_cli_writes_from_a_cifar_folder(tiny_cifar10, tmp_path):
    out = tmp_path / "c10c"
    C.main(
        [
            "--data-dir",
            str(tiny_cifar10),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--corruptions",
            "contrast",
            "--n-examples",
            "8",
        ]
    )
    assert np.load(out / "contrast.npy").shape == (40, 32, 32, 3)
    assert np.load(out / "labels.npy").shape == (40,)
