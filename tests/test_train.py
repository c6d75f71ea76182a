"""implicit_kernels.apps.train: a short run lowers the loss, checkpoints resume exactly,
configs are checked, the command line trains and exports weights."""
from __future__ import annotations

import os

import pytest
import torch
import yaml
from safetensors.torch import load_file

from implicit_kernels.apps import data as D
from implicit_kernels.apps import train as T
from implicit_kernels.apps.weights import load_model, load_torch_file

TINY = {"edsr-baseline-diif": {"coarse_hidden": [16, 16], "fine_hidden": [16, 16]},
        "edsr-baseline-liif": {"hidden_list": [16, 16]}}
TINY_ENCODER = {"n_resblocks": 1, "n_feats": 8}


def _images(folder, n=3, side=72):
    folder.mkdir(exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        small = torch.randint(0, 256, (3, side // 6, side // 6), generator=gen, dtype=torch.uint8)
        D.to_pil(small).resize((side, side)).save(folder / f"{i}.png")
    return folder


def _config(root, name="edsr-baseline-diif", **train):
    cfg = T.load_config(None)
    cfg["model"].update(name=name, kwargs=TINY[name], encoder_kwargs=TINY_ENCODER)
    cfg["data"].update(root=str(root), hr_patch=32, scale={"choices": [2, 2.5, 4]},
                       sample_q=64)
    cfg["train"].update(batch_size=2, lr=1e-3, milestones=[2], device="cpu", **train)
    return cfg


@pytest.mark.parametrize("name", ["edsr-baseline-diif", "edsr-baseline-liif"])
def test_two_steps_lower_the_loss_on_a_fixed_batch(tmp_path, name):
    torch.manual_seed(0)
    trainer = T.Trainer(_config(_images(tmp_path), name), out=None)
    batch = trainer.sampler.next()
    losses = [trainer.train_step(batch) for _ in range(3)]
    assert losses[2] < losses[0]
    assert trainer.step == 3
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(1e-3 * 0.5)  # milestone 2


def test_encoder_amp_runs_the_encoder_alone_in_bfloat16(tmp_path):
    """``train.encoder_amp: bf16``: the encoder's convolutions in bfloat16 (autocast), the
    decoder on the fused ``cpu`` operators in float32, parameters and gradients float32;
    the loss still falls on a fixed batch and matches the float32 step's to bf16 rounding."""
    images = _images(tmp_path)
    losses = {}
    for amp in (None, "bf16"):
        torch.manual_seed(0)
        trainer = T.Trainer(_config(images, backend="cpu", encoder_amp=amp), out=None)
        seen = []
        hook = trainer.model.encoder.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        batch = trainer.sampler.next()
        losses[amp] = [trainer.train_step(batch) for _ in range(3)]
        hook.remove()
        assert seen == [torch.bfloat16 if amp else torch.float32] * 3
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
        assert losses[amp][2] < losses[amp][0]
    assert losses["bf16"][0] == pytest.approx(losses[None][0], rel=2e-2)
    with pytest.raises(ValueError, match="encoder_amp"):
        T.Trainer(_config(images, encoder_amp="int8"), out=None)


def test_resume_is_exact(tmp_path):
    root = _images(tmp_path / "img")
    cfg = _config(root, checkpoint_every=2)
    images = T.build_sampler(cfg).images

    torch.manual_seed(0)
    straight = T.Trainer(cfg, sampler=T.build_sampler(cfg, images=images), out=None)
    straight.fit(steps=2, progress=False)
    expected = straight.train_step(straight.sampler.next())

    torch.manual_seed(0)
    first = T.Trainer(cfg, sampler=T.build_sampler(cfg, images=images), out=str(tmp_path / "run"))
    first.fit(steps=2, progress=False)
    ckpt = tmp_path / "run" / T.CHECKPOINT
    assert ckpt.exists()
    assert [p for p in os.listdir(tmp_path / "run") if ".tmp" in p] == []  # atomic write

    torch.manual_seed(123)  # a fresh process: different global RNG, fresh model
    resumed = T.Trainer(cfg, sampler=T.build_sampler(cfg, images=images), out=str(tmp_path / "run"))
    resumed.load(str(ckpt))
    assert resumed.step == 2
    a, b = first.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k in a["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a["state"][k][key], b["state"][k][key])
    assert resumed.scheduler.state_dict() == first.scheduler.state_dict()
    assert resumed.train_step(resumed.sampler.next()) == expected


def test_config_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"train": {"stepz": 3}}))
    with pytest.raises(ValueError, match="stepz"):
        T.load_config(str(path))
    with pytest.raises(ValueError, match="not a config key"):
        T.load_config(None, ["train.nope=1"])
    assert T.load_config(None, ["train.lr=2e-4"])["train"]["lr"] == 2e-4


def test_shipped_configs_load():
    folder = os.path.join(os.path.dirname(__file__), "..", "configs")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".yaml"))
    assert "edsr-baseline-diif.yaml" in names and "edsr-baseline-liif.yaml" in names
    for f in names:
        cfg = T.load_config(os.path.join(folder, f))
        D.ScaleDist.parse(cfg["data"]["scale"])


def test_command_line_trains_resumes_and_exports(tmp_path, capsys):
    root = _images(tmp_path / "img")
    cfg = _config(root, checkpoint_every=1)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = str(tmp_path / "run")
    assert T.main([str(path), "--out", out, "--steps", "1", "--no-progress"]) == 0
    assert T.main([str(path), "--out", out, "--steps", "2", "--no-progress",
                   "--backend", "reference"]) == 0
    assert "resumed" in capsys.readouterr().out
    weights = str(tmp_path / "w.safetensors")
    assert T.main([str(path), "--out", out, "--export", weights]) == 0
    model, info = load_model(weights)
    assert info["step"] == 2 and info["model"] == "edsr-baseline-diif"
    assert info["config"]["data"]["hr_patch"] == 32
    saved = load_file(weights)
    assert saved and all(v.dtype == torch.float16 for v in saved.values() if v.is_floating_point())
    assert T.main([str(path), "--out", str(tmp_path / "none"), "--export", weights]) == 1
    # Exports are safetensors only: a .pt name is refused, nothing is written.
    assert T.main([str(path), "--out", out, "--export", str(tmp_path / "w.pt")]) == 2
    assert "safetensors" in capsys.readouterr().err and not (tmp_path / "w.pt").exists()


def test_init_starts_a_new_run_from_weights_and_is_ignored_on_resume(tmp_path, capsys):
    root = _images(tmp_path / "img")
    cfg = _config(root, checkpoint_every=1)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    first, weights = str(tmp_path / "first"), str(tmp_path / "w.safetensors")
    assert T.main([str(path), "--out", first, "--steps", "2", "--no-progress"]) == 0
    assert "step 2: loss" in capsys.readouterr().out  # a line per checkpoint without a bar
    assert T.main([str(path), "--out", first, "--export", weights]) == 0
    init, _ = load_model(weights)

    trainer = T.Trainer(cfg, out=None)
    assert trainer.initialise_from(weights)["step"] == 2 and trainer.step == 0
    for name, value in init.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[name], value, rtol=0, atol=0)

    second = str(tmp_path / "second")
    assert T.main([str(path), "--out", second, "--steps", "1", "--init", weights,
                   "--no-progress"]) == 0
    assert "initialised from" in capsys.readouterr().out
    # Resuming the new run ignores --init; weights of another model are refused.
    assert T.main([str(path), "--out", second, "--steps", "1", "--init", weights,
                   "--no-progress"]) == 0
    assert "resumed" in capsys.readouterr().out
    liif = _config(root, "edsr-baseline-liif")
    path.write_text(yaml.safe_dump(liif))
    assert T.main([str(path), "--out", str(tmp_path / "third"), "--init", weights]) == 1
    assert "edsr-baseline-diif" in capsys.readouterr().err


def test_resume_refuses_a_pickle_that_runs_code(tmp_path, capsys, evil_pickle):
    """``last.pt`` is read with weights_only=True: a payload is refused, never run."""
    root = _images(tmp_path / "img")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_config(root)))
    run = tmp_path / "run"
    run.mkdir()
    marker = evil_pickle(run / T.CHECKPOINT)
    assert T.main([str(path), "--out", str(run), "--steps", "1", "--no-progress"]) == 1
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()
    trainer = T.Trainer(_config(root), out=None)
    with pytest.raises(ValueError, match="refused"):
        trainer.load(str(run / T.CHECKPOINT))
    with pytest.raises(ValueError, match="refused"):
        T.export(str(run / T.CHECKPOINT), str(tmp_path / "w.safetensors"))
    assert not marker.exists() and not (tmp_path / "w.safetensors").exists()


def _ddp_worker(rank, world, port, cfg, out, results):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # DDP broadcasts rank 0's initial parameters anyway
        trainer = T.Trainer(cfg, out=out)
        trainer.fit(steps=2, progress=False)
        flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        results[rank] = flat
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_two_processes_stay_in_sync(tmp_path):
    """The torchrun path on CPU: two gloo processes, different batches (seed + rank),
    identical parameters after each step, one checkpoint holding both data generators."""
    import socket

    import torch.multiprocessing as mp

    cfg = _config(_images(tmp_path / "img"), checkpoint_every=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "run")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, port, cfg, out, results), nprocs=2, join=True)
        a, b = results[0], results[1]
    assert torch.equal(a, b)
    ck = torch.load(os.path.join(out, T.CHECKPOINT), weights_only=True)
    assert ck["step"] == 2 and len(ck["rng"]["data"]) == 2
    assert not torch.equal(ck["rng"]["data"][0], ck["rng"]["data"][1])


def test_committed_checkpoint_continues_the_shipped_diif_run():
    """The shipped DIIF weights are the committed checkpoint's model (to fp16), which the
    CPU config resumes: its ``train.out`` holds it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = T.load_config(os.path.join(root, "configs", "edsr-baseline-diif-cpu.yaml"))
    path = os.path.join(root, cfg["train"]["out"], T.CHECKPOINT)
    ck = load_torch_file(path)
    model, info = load_model("edsr-baseline-diif")
    assert ck["step"] == info["step"] and ck["config"]["data"] == cfg["data"]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ck["model"][name].half().float(), value, rtol=0, atol=0)
