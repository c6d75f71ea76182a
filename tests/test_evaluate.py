"""implicit_kernels.apps.evaluate: PSNR by hand (shave, Y channel), the LR/HR pairs of
docs/evaluation.md, and the table over a folder."""
from __future__ import annotations

import math

import pytest
import torch

import models
from implicit_kernels.apps import data as D
from implicit_kernels.apps import evaluate as E


def test_psnr_rgb_by_hand():
    hr = torch.full((3, 6, 8), 0.5, dtype=torch.float64)
    sr = hr.clone()
    sr[0, 0, 0] = 0.9          # in the shaved border: ignored with shave 1
    sr[1, 2, 3] = 0.5 + 0.1    # inside
    sr[2, 4, 5] = 0.5 - 0.2    # inside
    # Shave 1 leaves 3 channels of 4x6 = 72 values; squared errors 0.01 + 0.04.
    expect = -10 * math.log10((0.1 ** 2 + 0.2 ** 2) / 72)
    assert E.psnr(sr, hr, shave=1) == pytest.approx(expect, rel=1e-12)
    # Without shaving the border pixel counts too, over 144 values.
    expect0 = -10 * math.log10((0.4 ** 2 + 0.1 ** 2 + 0.2 ** 2) / 144)
    assert E.psnr(sr, hr) == pytest.approx(expect0, rel=1e-12)


def test_psnr_y_channel_by_hand():
    hr = torch.zeros(3, 5, 5, dtype=torch.float64)
    sr = hr.clone()
    # centre pixel, kept by shave 2
    sr[:, 2, 2] = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    sr[:, 0, 4] = 1.0                              # corner, shaved
    y = (65.738 * 0.1 + 129.057 * 0.2 + 25.064 * 0.3) / 256
    expect = -10 * math.log10(y ** 2 / 1)          # shave 2 of 5x5 leaves one pixel
    assert E.psnr(sr, hr, shave=2, y_channel=True) == pytest.approx(expect, rel=1e-12)
    assert E.psnr(hr, hr) == math.inf
    with pytest.raises(ValueError, match="leaves nothing"):
        E.psnr(sr, hr, shave=3)


def test_shave_rules():
    assert E.shave_for(2, "y") == 2 and E.shave_for(4, "rgb") == 10
    assert E.shave_for(3.7, "y") == 4 and E.shave_for(30, "rgb") == 36
    with pytest.raises(ValueError):
        E.shave_for(2, "lab")


def test_pairs_follow_the_protocol():
    hr = torch.randint(0, 256, (3, 101, 77), dtype=torch.uint8)
    lr, crop = E.make_pair(hr, 3)
    assert lr.shape == (3, 33, 25) and crop.shape == (3, 99, 75)
    assert torch.equal(crop, hr[:, :99, :75])
    assert torch.equal(lr, D.bicubic_resize(crop, (33, 25)))
    lr, crop = E.make_pair(hr, 3.7)   # floor(101/3.7) = 27 -> round(99.9) = 100
    assert lr.shape == (3, 27, 20) and crop.shape == (3, 100, 74)
    with pytest.raises(ValueError, match="too small"):
        E.make_pair(hr, 200)


def test_evaluate_table_and_files(tmp_path):
    gen = torch.Generator().manual_seed(0)
    small = torch.randint(0, 256, (3, 8, 8), generator=gen, dtype=torch.uint8)
    img = D.to_tensor(D.to_pil(small).resize((48, 40)))
    torch.manual_seed(0)
    model = models.make("edsr-baseline-diif", encoder_kwargs={"n_resblocks": 1, "n_feats": 8},
                        coarse_hidden=(16, 16), fine_hidden=(16, 16)).eval()
    scales = [2, 2.5, 6]
    res = E.evaluate({"bicubic": None, "tiny": model}, [("a", img), ("b", img.flip(-1))],
                     scales, progress=False)
    assert set(res) == {"bicubic", "tiny"}
    assert all(math.isfinite(v) for row in res.values() for v in row.values())
    assert res["bicubic"][2] > res["bicubic"][6]     # harder at larger scales
    md = E.format_markdown(res, scales)
    assert md.splitlines()[0] == "| method | ×2 | ×2.5 | ×6 |"
    assert md.splitlines()[2].startswith(f"| bicubic | {res['bicubic'][2]:.2f} |")
    E.write_csv(res, scales, str(tmp_path / "t.csv"))
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0] == "method,x2,x2.5,x6" and lines[2].startswith("tiny,")


def test_command_line_on_a_folder(tmp_path, capsys):
    folder = tmp_path / "hr"
    folder.mkdir()
    small = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    D.to_pil(small).resize((40, 40)).save(folder / "x.png")
    weights = tmp_path / "w.pt"
    torch.manual_seed(0)
    model = models.make("edsr-baseline-liif", encoder_kwargs={"n_resblocks": 1, "n_feats": 8},
                        hidden_list=(16,))
    torch.save({"format": "implicit-kernels-weights/1", "model": "edsr-baseline-liif",
                "kwargs": {"hidden_list": [16]},
                "encoder_kwargs": {"n_resblocks": 1, "n_feats": 8},
                "state_dict": model.state_dict(), "step": 7}, weights)
    md = tmp_path / "t.md"
    assert E.main(["--model", str(weights), "--data", str(folder), "--scales", "2,3.5",
                   "--protocol", "rgb", "--md", str(md), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "RGB, shave ceil(s)+6" in out and "edsr-baseline-liif (7 steps)" in out
    assert md.read_text().count("\n") == 4
    assert E.main(["--data", str(folder), "--scales", "0.5", "--model", str(weights)]) == 2
    assert "every scale must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("option, name", [("--model", "evil.pt"), ("--weights", "evil")])
def test_command_line_refuses_pickled_weights(tmp_path, capsys, evil_pickle, option, name):
    marker = evil_pickle(tmp_path / name)
    assert E.main([option, str(tmp_path / name), "--data", str(tmp_path), "--no-progress"]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists()


def test_colour_card_is_flat_squares_with_sharp_edges():
    card = E.colour_card(side=60, squares=3, seed=1)
    assert card.shape == (3, 60, 60) and card.dtype == torch.uint8
    blocks = card.view(3, 3, 20, 3, 20)
    # Each square is one colour; neighbours differ (random colours, fixed seed).
    assert (blocks == blocks[:, :, :1, :, :1]).all()
    assert not torch.equal(card[:, 0, 0], card[:, 0, 20])
    assert torch.equal(card, E.colour_card(side=60, squares=3, seed=1))
    # Bicubic at x1 is the identity: the card's x1 row measures only the model.
    lr, hr = E.make_pair(card, 1)
    assert torch.equal(lr, card) and torch.equal(hr, card)


def test_command_line_on_the_card(tmp_path, capsys):
    assert E.main(["--data", "card", "--scales", "2", "--no-progress",
                   "--model", "edsr-baseline-diif"]) == 0
    assert "mean over 1 images of card: card" in capsys.readouterr().out
