"""v3's AdaIN layers in exports: :mod:`rave_deploy.style_transfer`.

TorchScript files let the host teach a style (acids-rave's attributes ``learn_target``,
``learn_source``, ``reset_target``, ``reset_source``); ONNX graphs and the checker's
reference apply what the checkpoint learned. The layer must compute what AdaIN computes
(acids-rave 2.3.1's class gave the same bits in a session's oracle run, see the README),
and the file what its eager module computes.
"""
from __future__ import annotations

import types
import warnings

import pytest
import torch
import torch.nn as nn

from rave_core.models.layers import AdaptiveInstanceNormalization
from rave_core.run import open_run
from rave_deploy.check import check_artifact
from rave_deploy.sidecar import read_sidecar
from rave_deploy.style_transfer import (LearnedAdaIN, StyleTransfer, freeze_adain,
                                        make_style_learnable)
from rave_deploy.targets import CheckOptions
from rave_deploy.torchscript import (STYLE_ATTRIBUTES, ScriptedRAVE, build_scripted_rave,
                                     script, torchscript_bytes)
from tests.runs import export_quietly, make_run

#: (flags, calls): learn the target, then the source, transfer, forget each side, again.
PLAN = [("target", 5), ("source", 4), ("", 3), ("reset_source", 1), ("source", 3), ("", 2),
        ("reset_target", 1), ("target", 2), ("", 2)]


def _drive(adain: AdaptiveInstanceNormalization, layer, step: str) -> None:
    """Set both layers up for one call of ``step`` (AdaIN through its buffers, as
    acids-rave's export does; ours through its flags and reset methods)."""
    adain.learn_x.fill_(float(step == "source"))
    adain.learn_y.fill_(float(step == "target"))
    layer.learn_source, layer.learn_target = step == "source", step == "target"
    if step == "reset_source":
        adain.mean_x.zero_(), adain.std_x.fill_(1), adain.num_update_x.zero_()
        layer.reset_source()
    if step == "reset_target":
        adain.mean_y.zero_(), adain.std_y.fill_(1), adain.num_update_y.zero_()
        layer.reset_target()


@pytest.mark.parametrize("scripted", [False, True])
def test_style_transfer_computes_what_adain_computes(scripted):
    """Bit for bit, through a plan that learns, transfers and forgets both sides, with
    batches of 3 out of AdaIN's 64 statistics rows; scripted as the file scripts it."""
    g = torch.Generator().manual_seed(0)
    adain = AdaptiveInstanceNormalization(8).eval()
    layer = StyleTransfer(AdaptiveInstanceNormalization(8))
    layer = torch.jit.script(layer) if scripted else layer
    transferred = 0
    with torch.no_grad():
        for step, calls in PLAN:
            for _ in range(calls):
                _drive(adain, layer, step)
                x = 2 * torch.randn(3, 8, 4, generator=g) + 1
                expected, got = adain(x), layer(x)
                assert torch.equal(got, expected), step
                transferred += int(not torch.equal(got, x))
    assert transferred >= 9  # the plan transfers after each source it learns
    for name in ("mean_x", "std_x", "num_update_x", "mean_y", "std_y", "num_update_y"):
        assert torch.equal(getattr(layer, name), getattr(adain, name)), name


def test_a_single_frame_teaches_nothing():
    """AdaIN's unbiased std of one frame is NaN, which it would keep (and transfer) from
    then on; the export's layer skips such a call and keeps transferring."""
    adain = AdaptiveInstanceNormalization(4).eval()
    layer = StyleTransfer(adain)
    x = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(1))
    for step in ("target", "source"):
        _drive(adain, layer, step)
        adain(x), layer(x)
    counts = (layer.num_update_x.clone(), layer.num_update_y.clone())
    layer.learn_source = True
    y = layer(x[..., :1])
    assert torch.isfinite(y).all() and not torch.equal(y, x[..., :1])
    assert torch.equal(layer.num_update_x, counts[0]) and torch.equal(layer.num_update_y, counts[1])
    _drive(adain, layer, "source")
    assert torch.isnan(adain(x[..., :1])).any()  # what the layer avoids


def test_learned_adain_computes_what_adain_computes():
    """Without host learning (ONNX, the checker's reference): an AdaIN whose checkpoint
    learned source and target statistics exports as that transfer; one that learned
    nothing exports as nothing; ``make_style_learnable`` starts from the same statistics."""
    g = torch.Generator().manual_seed(0)
    adain = AdaptiveInstanceNormalization(4).eval()
    x = torch.randn(3, 4, 50, generator=g)
    for name in ("mean_x", "mean_y"):
        getattr(adain, name).copy_(torch.randn(64, 4, 1, generator=g))
    for name in ("std_x", "std_y"):
        getattr(adain, name).copy_(torch.rand(64, 4, 1, generator=g) + 0.5)
    holder = nn.Sequential(nn.Identity(), adain)
    assert freeze_adain(holder) == 1 and isinstance(holder[1], nn.Identity)  # nothing learned
    adain.num_update_x.fill_(3)
    adain.num_update_y.fill_(2)
    for replace, kind in ((freeze_adain, LearnedAdaIN), (make_style_learnable, StyleTransfer)):
        holder = nn.Sequential(nn.Identity(), adain)
        assert replace(holder) == 1 and isinstance(holder[1], kind)
        with torch.no_grad():
            torch.testing.assert_close(holder(x), adain(x), rtol=0, atol=0)


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    """A small v3 run, its model, and its nn_tilde file."""
    root = tmp_path_factory.mktemp("style")
    run = make_run(root, ("v3",), name="v3", unit_gains=True)
    path = export_quietly(run, ["nn_tilde"], root / "out")["nn_tilde"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_run(run).model
    return run, model, path


def _sequence(module, block: int):
    """forward on a source and a target, learn the target, learn the source, transfer,
    forget the target: the outputs of each phase (deterministic, streaming states reset
    before each)."""
    g = torch.Generator().manual_seed(3)
    source = 0.3 * torch.randn(1, 1, 4 * block, generator=g)
    target = torch.sin(torch.arange(4 * block) * 0.01)[None, None] + 0.1 * torch.randn(
        1, 1, 4 * block, generator=g)
    module.set_deterministic(True)
    outputs = []

    def run(x):
        module.reset()
        with torch.inference_mode():
            outputs.append(torch.cat([module.forward(x[..., i:i + block])
                                      for i in range(0, x.shape[-1], block)], -1))

    run(source)
    run(target)
    module.set_learn_target(True)
    run(target)
    module.set_learn_target(False)
    module.set_learn_source(True)
    run(source)
    module.set_learn_source(False)
    run(source)
    module.set_reset_target(True)
    run(source)
    return outputs


def test_v3_file_learns_a_style_as_its_eager_module(v3):
    """The file offers acids-rave's four attributes, learns and transfers as the eager
    module it was scripted from (block 2048 and 4096), and passes the checker's
    style.transfer check; freezing kept the statistics as state."""
    run, model, path = v3
    file = torch.jit.load(str(path))
    attributes = file.get_attributes()
    assert set(STYLE_ATTRIBUTES) <= set(attributes)
    assert set(STYLE_ATTRIBUTES) <= set(read_sidecar(path)["attributes"])
    assert all(getattr(file, f"get_{a}")() == [False] for a in STYLE_ATTRIBUTES)
    for block in (model.ratio, 2 * model.ratio):
        file = torch.jit.load(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eager = build_scripted_rave(model).eval()
        ours, theirs = _sequence(file, block), _sequence(eager, block)
        plain, plain_target, learning_target, learning_source, styled, after_reset = ours
        assert torch.equal(learning_target, plain_target)  # learning the target passes through
        assert float((styled - plain).abs().max()) > 1e-2 * float(plain.abs().max())
        assert torch.equal(after_reset, plain)  # no target: no transfer, the source kept
        for got, expected in zip(ours, theirs):
            torch.testing.assert_close(got, expected, rtol=0,
                                       atol=1e-5 * float(expected.abs().max()))
    report = check_artifact(path, options=CheckOptions(block_sizes=[model.ratio], seconds=1.0,
                                                       rtf_seconds=0.1))
    style = next(r for r in report.results if r.name == "style.transfer")
    assert style.passed, style.message


def test_a_file_whose_attributes_reach_no_layer_fails_the_check(v3, tmp_path):
    """The defect of acids-rave 2.3.1's v3 export (its flag pass-through is off): the
    attributes exist, learning changes nothing, and check says so."""
    run, model, _ = v3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = build_scripted_rave(model)
    module._update_style = types.MethodType(ScriptedRAVE._update_style, module)  # unwired
    path = tmp_path / "unwired.ts"
    path.write_bytes(torchscript_bytes(script(module)))
    report = check_artifact(path, run=str(run), options=CheckOptions(
        block_sizes=[model.ratio], seconds=1.0, rtf_seconds=0.1))
    style = next(r for r in report.results if r.name == "style.transfer")
    assert not style.passed and "reach no layer" in style.message
