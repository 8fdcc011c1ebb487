"""Footprints dense (in a patch) and sparse (on the whole field) give the
same CNMF steps: the sparse layout changes the memory, not the numbers."""
import numpy as np
import pytest
import torch

from gpu_cnmf.cnmf import footprints as fp
from gpu_cnmf.cnmf.engine import Model, merge_step
from gpu_cnmf.cnmf.morphology import crop_apply, dilate, diamond
from gpu_cnmf.cnmf.products import MovieMatrix
from gpu_cnmf.cnmf.spatial import threshold_components, update_spatial
from gpu_cnmf.cnmf.temporal import update_temporal
from gpu_cnmf.synthetic import make_movie

DIMS = (64, 64)


@pytest.fixture(scope="module")
def problem():
    """A small movie and a perturbed version of its true model."""
    torch.manual_seed(0)
    mov, truth = make_movie("2p", dims=DIMS, n_frames=300, n_neurons=14, p=1, seed=3)
    A = torch.as_tensor(truth.A.toarray(), dtype=torch.float32)
    A = A * (1 + 0.2 * torch.rand_like(A)) * (A > 0.05 * A.amax(0))
    C = torch.as_tensor(truth.C, dtype=torch.float32)
    C = (C + 0.1 * torch.rand_like(C)).clamp_min(0)
    T = C.shape[1]
    b = torch.full((A.shape[0], 1), float(np.median(mov)))
    f = torch.ones((1, T))
    sn = torch.full((A.shape[0],), float(mov.std()) * 0.3)
    return np.asarray(mov, dtype=np.float32), A, C, b, f, sn


def test_layout_helpers_round_trip(problem):
    _, A, *_ = problem
    S = fp.to_sparse(A)
    assert fp.is_sparse(S) and not fp.is_sparse(A)
    np.testing.assert_array_equal(fp.to_dense(S).numpy(), A.numpy())
    np.testing.assert_array_equal(fp.to_scipy(S).toarray(), fp.to_scipy(A).toarray())
    np.testing.assert_array_equal(fp.to_dense(fp.from_scipy(fp.to_scipy(A), "cpu")).numpy(),
                                  A.numpy())
    keep = torch.arange(A.shape[1]) % 3 != 0
    np.testing.assert_array_equal(fp.to_dense(fp.select(S, keep)).numpy(), A[:, keep].numpy())
    np.testing.assert_allclose(fp.gram(S).numpy(), (A.T @ A).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fp.overlap_counts(S).numpy(),
                               ((A > 0).float().T @ (A > 0).float()).numpy())
    ci, cj = fp.centres(S, DIMS)
    cd = fp.centres(A, DIMS)
    np.testing.assert_allclose(ci.numpy(), cd[0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(cj.numpy(), cd[1].numpy(), rtol=1e-5)
    both = fp.cat(S, A[:, :2])
    np.testing.assert_array_equal(fp.to_dense(both).numpy(), torch.cat([A, A[:, :2]], 1).numpy())


def test_crop_apply_matches_whole_images(problem):
    """Dilating from entries equals dilating the full (K, d1, d2) images."""
    _, A, *_ = problem
    pix, comp, val = fp.entries(A)
    se = diamond(2)
    p, k, _ = crop_apply(pix, comp, val > 0, A.shape[1], DIMS, 3, lambda m: dilate(m, se))
    got = np.zeros((A.shape[1],) + DIMS, dtype=bool)
    got[k.numpy(), (p % DIMS[0]).numpy(), (p // DIMS[0]).numpy()] = True
    imgs = (A > 0).T.reshape(-1, DIMS[1], DIMS[0]).transpose(1, 2)
    want = dilate(imgs, se).numpy()
    np.testing.assert_array_equal(got, want)


def _movie(mov, layout):
    """The movie read frame-major (a C-order array) or pixel-major (the
    pixels x T matrix the pipeline's memory map holds)."""
    if layout == "frames":
        return MovieMatrix(mov, "cpu")
    Yr = np.ascontiguousarray(mov.reshape(mov.shape[0], -1, order="F").T)
    return MovieMatrix(Yr, "cpu", dims=mov.shape[1:])


@pytest.mark.parametrize("movie_layout", ["frames", "pixels"])
@pytest.mark.parametrize("method_ls", ["lasso_lars", "nnls_L0"])
def test_spatial_update_same_in_both_layouts(problem, method_ls, movie_layout):
    mov, A, C, b, f, sn = problem
    mm = _movie(mov, movie_layout)
    yy = torch.as_tensor((mov.reshape(mov.shape[0], -1, order="F").astype(np.float64) ** 2)
                         .sum(0), dtype=torch.float32)
    kw = dict(method_ls=method_ls, yy=yy)
    Ad, bd, kd = update_spatial(mm, A, b, C, f, sn, **kw)
    As, bs, ks = update_spatial(mm, fp.to_sparse(A), b, C, f, sn, **kw)
    assert fp.is_sparse(As) and not fp.is_sparse(Ad)
    np.testing.assert_array_equal(kd.numpy(), ks.numpy())
    np.testing.assert_allclose(fp.to_dense(As).numpy(), Ad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bs.numpy(), bd.numpy(), rtol=1e-4, atol=1e-4)
    # the update fits the data: footprints correlate with the truth's
    r = [np.corrcoef(Ad[:, k].numpy(), A[:, k].numpy())[0, 1] for k in range(A.shape[1])]
    assert np.median(r) > 0.9


def test_spatial_update_masked_background_same_in_both_layouts(problem):
    """Patch backgrounds kept full rank (``low_rank_background=False``)."""
    mov, A, C, b, f, sn = problem
    mm = MovieMatrix(mov, "cpu")
    d = A.shape[0]
    b2 = torch.cat([b, b], 1) * 0.5
    f2 = torch.cat([f, f], 0)
    mask = torch.zeros((d, 2), dtype=torch.bool)
    mask[: d // 2 + 200, 0] = True
    mask[d // 2 - 200:, 1] = True
    Ad, bd, _ = update_spatial(mm, A, b2 * mask, C, f2, sn, b_mask=mask)
    As, bs, _ = update_spatial(mm, fp.to_sparse(A), b2 * mask, C, f2, sn, b_mask=mask)
    np.testing.assert_allclose(fp.to_dense(As).numpy(), Ad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bs.numpy(), bd.numpy(), rtol=1e-4, atol=1e-4)
    assert not bool((bd[~mask] != 0).any())


def test_threshold_and_temporal_same_in_both_layouts(problem):
    mov, A, C, b, f, sn = problem
    Td = threshold_components(A, DIMS, peak_path=0.7)
    Ts = threshold_components(fp.to_sparse(A), DIMS, peak_path=0.7)
    np.testing.assert_array_equal(fp.to_dense(Ts).numpy(), Td.numpy())
    rd = update_temporal(_movie(mov, "frames"), A, b, C, f, p=1)
    for movie_layout in ("frames", "pixels"):
        rs = update_temporal(_movie(mov, movie_layout), fp.to_sparse(A), b, C, f, p=1)
        np.testing.assert_allclose(rs.C.numpy(), rd.C.numpy(), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(rs.YrA.numpy(), rd.YrA.numpy(), rtol=1e-3, atol=1e-3)


def test_merge_same_in_both_layouts(problem):
    _, A, C, b, f, sn = problem
    # a neuron split in two overlapping parts with the same trace
    k = 0
    whole = A[:, k].clone()
    rows = torch.nonzero(whole).flatten()
    a1, a2 = whole.clone(), whole.clone()
    a1[rows[: 2 * rows.numel() // 5]] = 0
    a2[rows[3 * rows.numel() // 5:]] = 0
    A2 = torch.cat([A[:, 1:], a1[:, None], a2[:, None]], 1)
    C2 = torch.cat([C[1:], C[k:k + 1], C[k:k + 1]], 0)
    cfg = {"merge": {"thr": 0.8, "max_merge_area": None},
           "temporal": dict(p=1, ITER=2, method_deconvolution="oasis", bas_nonneg=True,
                            noise_range=(0.25, 0.5), noise_method="mean", lags=5,
                            fudge_factor=0.96, s_min=None, optimize_g=False, solvers=None)}
    out = []
    for layout in (lambda x: x, fp.to_sparse):
        m = Model(A=layout(A2.clone()), C=C2.clone(), b=b, f=f, sn=sn, YrA=torch.zeros_like(C2))
        n = merge_step(m, cfg, p=1)
        out.append((n, fp.to_dense(m.A).numpy(), m.C.numpy()))
    assert out[0][0] == out[1][0] >= 1
    assert out[0][1].shape[1] == A.shape[1]
    np.testing.assert_allclose(out[1][1], out[0][1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out[1][2], out[0][2], rtol=1e-3, atol=1e-3)


def test_ellipse_supports_match_the_dense_definition(problem):
    """'ellipse' supports from entries equal the Mahalanobis ball computed
    over every pixel of the field."""
    from gpu_cnmf.cnmf.spatial import expand_supports

    _, A, *_ = problem
    A = A * (A >= 0.5 * A.amax(0))          # cores: the ellipse reaches beyond them
    dist = 2.5
    p, k = expand_supports(fp.to_sparse(A), DIMS, method_exp="ellipse", dist=dist)
    got = torch.zeros_like(A, dtype=torch.bool)
    got[p, k] = True
    d1, d2 = DIMS
    ii = torch.arange(d1, dtype=torch.float32).repeat(d2)
    jj = torch.arange(d2, dtype=torch.float32).repeat_interleave(d1)
    w = A.clamp_min(0)
    tot = w.sum(0)
    mi, mj = (ii @ w) / tot, (jj @ w) / tot
    sii = (ii ** 2 @ w) / tot - mi ** 2 + 0.25
    sjj = (jj ** 2 @ w) / tot - mj ** 2 + 0.25
    sij = ((ii * jj) @ w) / tot - mi * mj
    det = sii * sjj - sij ** 2
    di, dj = ii[:, None] - mi, jj[:, None] - mj
    m2 = (sjj * di ** 2 - 2 * sij * di * dj + sii * dj ** 2) / det
    want = (m2 <= dist ** 2) | (A > 0)
    # float rounding may flip a pixel exactly on the boundary
    assert int((got != want).sum()) <= 2
    assert int(want.sum()) > 1.2 * int((A > 0).sum())


def test_peak_path_leaves_one_piece_at_every_level():
    """A cell whose noisy fringe joins two specks and a small bump to it:
    CaImAn's thresholding keeps them all, so at 20 % of the peak the
    footprint is three pieces. The specks, reached from the peak only
    through values far below their own, are dropped; the bump, nearly at
    the level of its pass to the cell, is lowered to that level; the cell
    itself is unchanged."""
    from scipy import ndimage

    from gpu_cnmf.metrics import footprint_pieces

    d = (32, 32)
    yy, xx = np.mgrid[:d[0], :d[1]]
    img = np.exp(-((yy - 12) ** 2 + (xx - 12) ** 2) / (2 * 2.5 ** 2))
    img[img < 0.01] = 0
    img[12, 13:28] = np.maximum(img[12, 13:28], 0.05)       # the fringe
    img[12, 24], img[11:13, 27] = 0.3, 0.25                 # two specks on it
    img[12, 20] = 0.065                                     # a bump on it
    img = img.astype(np.float32)
    A = torch.as_tensor(img.reshape(-1, 1, order="F"))
    kw = dict(medw=(1, 1), thr_method="max", maxthr=0.001)
    plain = threshold_components(A, d, **kw)
    peak = threshold_components(A, d, peak_path=0.7, **kw)
    assert footprint_pieces(plain.numpy(), d)[0] == 3
    assert footprint_pieces(peak.numpy(), d)[0] == 1
    out = peak.numpy()[:, 0].reshape(d, order="F")
    assert out[12, 24] == 0 and (out[11:13, 27] == 0).all()
    assert out[12, 20] == pytest.approx(0.05)
    lab = ndimage.label(img > 0.06)[0]
    cell = lab == lab[12, 12]
    np.testing.assert_array_equal(out[cell], img[cell])
    assert (out <= img).all()


@pytest.mark.parametrize("seed", range(4))
def test_peak_path_every_threshold_connected(seed):
    """On noisy random footprints every upper level set of the result is one
    8-connected piece holding the peak."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    d = (24, 24)
    A = torch.as_tensor(rng.random((d[0] * d[1], 3)) ** 4, dtype=torch.float32)
    out = threshold_components(A, d, medw=(1, 1), thr_method="max", maxthr=0.0,
                               peak_path=0.7).numpy()
    for k in range(3):
        img = out[:, k].reshape(d, order="F")
        for level in np.quantile(img[img > 0], [0.1, 0.3, 0.5, 0.7, 0.9]):
            assert ndimage.label(img >= level, structure=np.ones((3, 3)))[1] == 1
