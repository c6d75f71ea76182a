"""LIIF: the shared nearest-code rule against grid_sample, and one query by hand (backends
against the reference: tests/test_conformance.py)."""
import torch
from helpers import assert_matches, mlp_params

import implicit_kernels.functional as F
from implicit_kernels import geometry
from implicit_kernels.reference.liif import centre_map, sample_nearest, shifted_queries

SIZES = {"x1": (5, 7), "x3_odd": (15, 21), "x2.7": (14, 19), "x3_by_x5": (15, 35),
         "x30": (150, 210)}


def liif_params(c, hidden=24, dtype=torch.float32):
    return mlp_params("imnet.layers.", [9 * c + 4, hidden, hidden, 3], dtype=dtype)


def test_nearest_rule_matches_grid_sample():
    """geometry.ensemble_neighbours picks the codes grid_sample picks, ties included."""
    h, w = 7, 9
    feat = torch.zeros(1, 1, h, w)
    for out in [(7, 9), (21, 27), (14, 19), (35, 9), (210, 270)]:
        coord = geometry.make_coord(out).view(1, -1, 2)
        coord = torch.cat([coord, torch.rand(1, 500, 2) * 2 - 1], dim=1)
        index_map = (torch.arange(h * w, dtype=torch.float32)).view(1, 1, h, w)
        centres = centre_map(feat, coord.dtype)
        members = geometry.ensemble_neighbours(coord, (h, w))
        for shifted, (index, rel) in zip(shifted_queries(coord, (h, w)), members):
            picked = sample_nearest(index_map, shifted)[..., 0].long()
            assert torch.equal(picked, index[..., 0] * w + index[..., 1])
            expected_rel = (coord - sample_nearest(centres, shifted)) * torch.tensor([h, w])
            assert torch.equal(rel, expected_rel)


def test_single_query_by_hand():
    """An interior query is the area-weighted blend over its 4 surrounding LR pixels."""
    feat = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    params = liif_params(2, hidden=8, dtype=torch.float64)
    q = torch.tensor([0.1, -0.3], dtype=torch.float64)  # between rows 2,3... in LR pixels
    cell = torch.tensor([0.05, 0.07], dtype=torch.float64)
    p = (q + 1) * 2 - 0.5  # position in LR pixel units (centre of pixel k at k)
    rows = [int(p[0].floor()), int(p[0].floor()) + 1]
    cols = [int(p[1].floor()), int(p[1].floor()) + 1]
    padded = torch.nn.functional.pad(feat[0], (1, 1, 1, 1))
    preds = []
    for i in rows:
        for j in cols:
            code = padded[:, i:i + 3, j:j + 3].reshape(-1)
            v = torch.tensor([-1 + (2 * i + 1) / 4, -1 + (2 * j + 1) / 4], dtype=torch.float64)
            rel = (q - v) * 4
            x = torch.cat([code, rel, cell * 4])
            for n in range(3):
                x = (params[f"imnet.layers.{2 * n}.weight"] @ x
                     + params[f"imnet.layers.{2 * n}.bias"])
                x = torch.relu(x) if n < 2 else x
            # bilinear weight = area to the diagonally opposite code / 4 (interior)
            preds.append(x * ((1 - (rel / 2).abs()).prod()))
    expected = sum(preds)
    got = F.liif_decode(feat, None, params, coord=q.view(1, 1, 2), cell=cell.view(1, 1, 2),
                        backend="reference")
    assert_matches(got.view(3), expected)
