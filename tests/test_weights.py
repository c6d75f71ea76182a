"""implicit_kernels.apps.weights: shipped safetensors weights, names resolved before paths,
and files that would run code when unpickled refused without running it."""
from __future__ import annotations

import os
import pathlib

import pytest
import torch

from implicit_kernels.apps import weights as W

models = pytest.importorskip("models")

ENCODER = {"n_resblocks": 1, "n_feats": 8}
ASSETS = pathlib.Path(W.__file__).resolve().parent.parent / "assets"
KWARGS = {"hidden_list": [16]}


def _tiny_weights(**extra) -> dict:
    torch.manual_seed(0)
    model = models.make("edsr-baseline-liif", encoder_kwargs=ENCODER, **KWARGS)
    return {"format": W.WEIGHTS_FORMAT, "model": "edsr-baseline-liif", "kwargs": KWARGS,
            "encoder_kwargs": ENCODER, "state_dict": model.state_dict(), "step": 7, **extra}


def test_shipped_models_are_safetensors_and_load():
    assert W.shipped() == ["edsr-baseline-diif", "edsr-baseline-liif"]
    for name, params in (("edsr-baseline-diif", 1_683_011), ("edsr-baseline-liif", 1_567_299)):
        model, info = W.load_model(name)
        assert info["model"] == name and info["step"] > 0 and info["elapsed"] > 0
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == params
        assert all(p.dtype == torch.float32 for p in model.parameters())
    _, info = W.load_model("edsr-baseline-diif")
    assert info["config"]["data"]["scale"] == {"uniform": [1, 4]}  # the papers' scales


def _x1_psnr(model, img: torch.Tensor) -> float:
    """PSNR (Y channel, 1-pixel border shaved: the evaluation protocol at x1) of the
    model's x1 output against ``img`` (``3×H×W`` uint8)."""
    from implicit_kernels.apps import evaluate

    x = img.float().div(255).unsqueeze(0)
    with torch.no_grad():
        out = models.upscale(model, x, tuple(img.shape[-2:]))[0]
    return evaluate.psnr(out, x[0], shave=1, y_channel=True)


def test_shipped_diif_reproduces_its_input_at_x1():
    """x1 gives the input back: >= 40 dB on a bundled photograph at its own resolution
    (assets/coffee_crop.png), >= 30 dB on a card of flat colour squares (sharp edges,
    flat areas kept flat)."""
    from implicit_kernels.apps import demo, evaluate

    model, _ = W.load_model("edsr-baseline-diif")
    photo = (demo.load_image(str(ASSETS / "coffee_crop.png"))[0] * 255).round().to(torch.uint8)
    assert _x1_psnr(model, photo) >= 40
    assert _x1_psnr(model, evaluate.colour_card(side=96, squares=4)) >= 30


def test_safetensors_round_trip(tmp_path):
    w = _tiny_weights(config={"a": [1, 2.5, None]}, elapsed=1.5)
    path = tmp_path / "w.safetensors"
    W.save_weights(w, path)
    back = W.read_weights(path)
    assert {k: back[k] for k in W.METADATA} == {k: w.get(k) for k in W.METADATA}
    assert all(torch.equal(back["state_dict"][k], v) for k, v in w["state_dict"].items())
    assert os.listdir(tmp_path) == ["w.safetensors"]   # no temporary file left


def test_older_pt_weights_and_checkpoints_load_safely(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(_tiny_weights(), path)
    _, info = W.load_model(str(path))
    assert info["step"] == 7 and info["config"] is None
    ck = {"format": W.CHECKPOINT_FORMAT, "step": 3, "elapsed": 2.0,
          "model": _tiny_weights()["state_dict"],
          "config": {"model": {"name": "edsr-baseline-liif", "kwargs": KWARGS,
                               "encoder_kwargs": ENCODER}},
          "rng": {"torch": torch.get_rng_state()}}
    torch.save(ck, tmp_path / "last.pth")
    _, info = W.load_model(str(tmp_path / "last.pth"))
    assert info["step"] == 3 and info["model"] == "edsr-baseline-liif"


@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "sub/evil.pt"])
def test_a_pickle_that_runs_code_is_refused(tmp_path, evil_pickle, name):
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    marker = evil_pickle(path)
    for load in (W.load_model, W.load_model_file, W.read_weights):
        with pytest.raises(ValueError, match="refused to load"):
            load(str(path))
        assert not marker.exists()


def test_shipped_names_win_over_files_in_the_working_directory(tmp_path, monkeypatch,
                                                               evil_pickle):
    monkeypatch.chdir(tmp_path)
    marker = evil_pickle(tmp_path / "edsr-baseline-diif")
    evil_pickle(tmp_path / "mine", marker)
    _, info = W.load_model("edsr-baseline-diif")
    assert info["model"] == "edsr-baseline-diif" and info["step"] > 0 and not marker.exists()
    # A bare name that is not shipped is not looked up as a file either ...
    with pytest.raises(W.UnknownModelError, match=r"\./mine"):
        W.load_model("mine")
    assert not marker.exists()
    # ... but a path-looking one is (and here, refused).
    with pytest.raises(ValueError, match="refused"):
        W.load_model("./mine")
    assert not marker.exists()


def test_looks_like_path():
    assert not W.looks_like_path("edsr-baseline-diif")
    assert all(map(W.looks_like_path, ["./x", "runs/x/last.pt", "w.safetensors", "a.pth"]))


@pytest.mark.parametrize("obj, message", [
    ({"format": W.WEIGHTS_FORMAT, "model": "edsr-baseline-liif"},
     "without the key(s) 'state_dict'"),
    ({"format": W.WEIGHTS_FORMAT, "state_dict": {}}, "without the key(s) 'model'"),
    ({"format": W.WEIGHTS_FORMAT, "model": "x", "state_dict": [1]}, "not a mapping of tensors"),
    ({"format": W.CHECKPOINT_FORMAT, "model": {}}, "without the key(s) 'config', 'step'"),
    ({"format": W.CHECKPOINT_FORMAT, "model": {}, "step": 1, "config": {}}, "no model.name"),
    ({"model": "edsr-baseline-liif", "state_dict": {}}, "not an implicit-kernels weights file"),
    ([1, 2], "not an implicit-kernels weights file"),
    ({"format": W.WEIGHTS_FORMAT, "model": "edsr-baseline-nothing", "state_dict": {}},
     "cannot be built"),
    ({"format": W.WEIGHTS_FORMAT, "model": "edsr-baseline-liif", "state_dict": {}},
     "do not fit the model"),
])
def test_files_without_the_expected_keys_say_so(tmp_path, obj, message):
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        W.load_model(str(path))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content, message", [
    (b"not a torch file", "cannot read weights"),
    (None, "no such file"),
])
@pytest.mark.parametrize("name", ["w.pt", "w.safetensors"])
def test_unreadable_files(tmp_path, content, message, name):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        W.load_model(str(path))


def test_safetensors_from_another_tool_is_not_ours(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not an implicit-kernels weights file"):
        W.load_model(str(tmp_path / "other.safetensors"))
