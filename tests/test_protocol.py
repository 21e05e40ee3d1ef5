"""Algorithm 1 semantics and batched-vs-reference agreement."""

from __future__ import annotations

import pytest
import torch

from conftest import LR, brightness_world, scripted_world, tiny_vqgan
from fmr_bench.generators.noise import NoiseGenerator, PixelGenerator
from fmr_bench.protocol import LatentOptimizer, LoopConfig, run_batched, run_reference


def _samples(data):
    return [(data.ids[i], i, data.load(i), data.labels[i]) for i in range(len(data))]


def _batched(samples, model, oracle, gen, n_classes, budget, lr, opt, bs):
    out, finals = [], {}

    def on_sample(o, clean, final, latent):
        out.append(o)
        finals[o.index] = final

    run_batched(iter(samples), model=model, oracle=oracle, generator=gen, target_of=torch.arange(n_classes),
                cfg=LoopConfig(budget, lr, opt, bs), device=torch.device("cpu"), on_sample=on_sample)
    return sorted(out, key=lambda o: o.index), finals


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_algorithm1_rejection_at_first_step_at_k_and_never(batch_size):
    # Sample i is first rejected by the oracle at step reject_at[i].
    reject_at = [1, 2, 4, 7, 100, 1, 3]
    budget = 10
    data, model, gen, oracle = scripted_world(reject_at)
    out, finals = _batched(_samples(data), model, oracle, gen, 2, budget, LR, "sign", batch_size)
    for o, k in zip(out, reject_at):
        if k == 1:  # rejected at the first step: not validated, x-hat = x, clean prediction kept
            assert (o.validated, o.steps, o.final_pred) == (False, 0, o.clean_pred)
            assert torch.equal(finals[o.index], data.load(o.index))
        else:  # the last accepted image is kept: k - 1 steps, or the whole budget
            assert o.validated and o.steps == min(k - 1, budget)
            assert finals[o.index][0].mean().item() == pytest.approx(o.steps * LR)
            assert o.final_pred == 1  # fooled from the first step on, and the loop went on regardless
    assert all(o.clean_pred == 0 for o in out)


def test_reference_loop_follows_algorithm1_too():
    reject_at = [1, 3, 50]
    data, model, gen, oracle = scripted_world(reject_at)
    ref = run_reference(_samples(data), model=model, oracle=oracle, generator=gen, target_of=torch.arange(2),
                        budget=5, step_size=LR, optimizer="sign")
    assert [(o.validated, o.steps) for o in ref] == [(False, 0), (True, 2), (True, 5)]


@pytest.mark.parametrize("gen_name,opt,lr", [("pixel", "adam", 0.02), ("pixel", "sign", 0.02), ("noise", "sgd", 0.5),
                                             ("vqgan", "adam", 0.3)])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_batched_loop_matches_reference_loop(gen_name, opt, lr, batch_size):
    data, model, oracle = brightness_world(10)
    gen = {"pixel": PixelGenerator, "noise": lambda: NoiseGenerator(0.03, seed=1), "vqgan": tiny_vqgan}[gen_name]()
    samples = _samples(data)
    ref = run_reference(samples, model=model, oracle=oracle, generator=gen, target_of=torch.arange(3), budget=8,
                        step_size=lr, optimizer=opt)
    out, _ = _batched(samples, model, oracle, gen, 3, 8, lr, opt, batch_size)
    assert [o.key() for o in out] == [o.key() for o in ref]


def test_brightness_world_outcomes_are_varied():
    # Guards the agreement test above against a degenerate world where every sample
    # behaves alike.
    data, model, oracle = brightness_world(10)
    ref = run_reference(_samples(data), model=model, oracle=oracle, generator=PixelGenerator(),
                        target_of=torch.arange(3), budget=8, step_size=0.02, optimizer="adam")
    assert len({o.steps for o in ref}) >= 3
    assert any(o.final_pred != o.clean_pred for o in ref)


def test_adam_matches_torch_adam_per_sample():
    torch.manual_seed(0)
    z0 = torch.randn(4, 3, 5)
    grads = [torch.randn(4, 3, 5) for _ in range(6)]
    ours = LatentOptimizer("adam", 0.01)
    state = ours.init_state(z0)
    z = z0.clone()
    for g in grads:
        z = ours.step(z, g, state)
    for row in range(4):
        p = z0[row].clone().requires_grad_(True)
        opt = torch.optim.Adam([p], lr=0.01, maximize=True)
        for g in grads:
            p.grad = g[row].clone()
            opt.step()
        torch.testing.assert_close(z[row], p.detach(), rtol=1e-5, atol=1e-6)


def test_refilled_slot_starts_with_fresh_optimizer_state():
    ours = LatentOptimizer("adam", 0.1)
    z = torch.zeros(1, 2)
    state = ours.init_state(z)
    for _ in range(3):
        z = ours.step(z, torch.ones(1, 2), state)
    fresh = ours.init_state(torch.zeros(1, 2))
    z_new = ours.step(torch.zeros(1, 2), torch.ones(1, 2), fresh)
    # A fresh Adam's first step moves each coordinate by exactly lr.
    torch.testing.assert_close(z_new, torch.full((1, 2), 0.1))
    assert int(state["t"][0]) == 3 and int(fresh["t"][0]) == 1


class SteeringPixels(PixelGenerator):
    """A self-steering generator: each step moves the pixels by lr * sign of the loss gradient."""

    steers = True

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.calls = 0
        self.labels = []

    def steer(self, z, loss_fn, sample_ids, steps, labels=None):
        self.calls += 1
        self.labels.append(labels.tolist())
        z = z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn(self.decode(z)).sum(), z)
        return (z + self.lr * g.sign()).detach()


@pytest.mark.parametrize("batch_size", [1, 4])
def test_self_steering_generator_batched_matches_reference(batch_size):
    data, model, oracle = brightness_world(10)
    samples = _samples(data)
    ref = run_reference(samples, model=model, oracle=oracle, generator=SteeringPixels(0.02),
                        target_of=torch.arange(3), budget=8, step_size=0.02)
    gen = SteeringPixels(0.02)
    out, _ = _batched(samples, model, oracle, gen, 3, 8, 0.02, "adam", batch_size)
    assert [o.key() for o in out] == [o.key() for o in ref]
    # the same walk as a sign optimiser on pixels: steering replaced the latent optimiser
    plain = run_reference(samples, model=model, oracle=oracle, generator=PixelGenerator(),
                          target_of=torch.arange(3), budget=8, step_size=0.02, optimizer="sign")
    assert [o.key() for o in out] == [o.key() for o in plain]
    assert gen.calls > 0
    # each row's true label reaches the generator (for class-conditional models)
    steered = sorted({lab for call in gen.labels for lab in call})
    assert steered and set(steered) <= set(data.labels)


@pytest.mark.parametrize("batch_size", [1, 5])
def test_fgsm_start_batched_matches_reference_and_changes_the_start(batch_size):
    data, model, oracle = brightness_world(10)
    samples = _samples(data)
    kw = dict(model=model, oracle=oracle, generator=PixelGenerator(), target_of=torch.arange(3))
    ref = run_reference(samples, budget=8, step_size=0.02, optimizer="adam", init="fgsm", fgsm_eps=0.05, **kw)
    out, finals, latents = [], {}, {}

    def on_sample(o, clean, final, latent):
        out.append(o)
        finals[o.index], latents[o.index] = final, latent

    run_batched(iter(samples), cfg=LoopConfig(8, 0.02, "adam", batch_size, init="fgsm", fgsm_eps=0.05),
                device=torch.device("cpu"), on_sample=on_sample, **kw)
    out.sort(key=lambda o: o.index)
    assert [o.key() for o in out] == [o.key() for o in ref]
    plain = run_reference(samples, budget=8, step_size=0.02, optimizer="adam", **kw)
    assert [o.key() for o in plain] != [o.key() for o in ref]
    for o in out:  # the latent handed out is the one x-hat was decoded from (pixels, here)
        if o.validated:
            torch.testing.assert_close(latents[o.index].clamp(0, 1), finals[o.index])
        else:
            assert latents[o.index].shape == finals[o.index].shape


def test_exact_fp32_turns_tf32_off_and_restores_the_flags():
    from fmr_bench.protocol.loop import exact_fp32

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with exact_fp32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_precision_names_agree_and_an_unknown_one_is_a_clear_error():
    from fmr_bench.config import PRECISIONS, FmrSettings
    from fmr_bench.errors import SettingsError
    from fmr_bench.runtime import PRECISION_MODES, precision

    assert tuple(PRECISION_MODES) == PRECISIONS == ("fp32", "tf32", "bf16")
    assert FmrSettings().precision == "fp32"
    for name in PRECISIONS:
        assert FmrSettings(precision=name).validated().precision == name
    with pytest.raises(SettingsError, match="use one of fp32, tf32, bf16"):
        FmrSettings(precision="fp16").validated()
    with pytest.raises(SettingsError, match="use one of"):
        precision("fp16")


@pytest.mark.parametrize("name,tf32,dtype", [("fp32", False, None), ("tf32", True, None),
                                             ("bf16", False, torch.bfloat16)])
def test_only_the_reduced_block_runs_reduced_and_decisions_stay_exact(name, tf32, dtype):
    from fmr_bench.runtime import exact_fp32, precision

    prec = precision(name)
    flags = lambda: (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with prec.exact():
        assert flags() == (False, False)
        with prec.reduced(torch.device("cpu")):
            assert flags() == (tf32, tf32)
            assert torch.is_autocast_enabled("cpu") == (dtype is not None)
            if dtype is not None:
                assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == dtype
            with exact_fp32():  # what the oracle and the code search run under
                assert flags() == (False, False)
            assert flags() == (tf32, tf32)
        assert flags() == (False, False) and not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("precision", ["tf32", "fp32"])
def test_tf32_on_a_cpu_is_exact_fp32(precision):
    # A CPU has no TF32: the tf32 mode gives the reference's outcomes exactly.
    data, model, oracle = brightness_world(10)
    gen = tiny_vqgan()
    samples = _samples(data)
    ref = run_reference(samples, model=model, oracle=oracle, generator=gen, target_of=torch.arange(3), budget=6,
                        step_size=0.3, optimizer="adam")
    out = []
    run_batched(iter(samples), model=model, oracle=oracle, generator=gen, target_of=torch.arange(3),
                cfg=LoopConfig(6, 0.3, "adam", 4, precision), device=torch.device("cpu"),
                on_sample=lambda o, *_: out.append(o))
    assert [o.key() for o in sorted(out, key=lambda o: o.index)] == [o.key() for o in ref]
    assert {o.oracle_accept for o in out} <= {True, False}


def test_an_interrupt_still_hands_out_the_samples_already_finished():
    reject_at = [1, 2, 100, 100]
    data, model, gen, oracle = scripted_world(reject_at)
    out, calls = [], []

    def on_iteration(n):
        calls.append(n)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batched(iter(_samples(data)), model=model, oracle=oracle, generator=gen, target_of=torch.arange(2),
                    cfg=LoopConfig(10, LR, "sign", 4), device=torch.device("cpu"),
                    on_sample=lambda o, *_: out.append(o), on_iteration=on_iteration)
    # sample 0 finished in iteration 2, sample 1 in iteration 3: both reach on_sample
    assert sorted((o.index, o.validated, o.steps) for o in out) == [(0, False, 0), (1, True, 1)]


def test_fit_slots_halves_on_out_of_memory_like_timm_retry():
    from fmr_bench.protocol.loop import fit_slots

    tried = []

    def probe(n):  # an injected out-of-memory error above 5 images
        tried.append(n)
        if n > 5:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    assert fit_slots(probe, 32) == 4 and tried == [32, 16, 8, 4]
    assert fit_slots(lambda n: None, 7) == 7

    def never(n):
        raise torch.OutOfMemoryError("injected")

    with pytest.raises(torch.OutOfMemoryError):
        fit_slots(never, 4)


def test_fixed_slots_pad_every_decode_to_one_shape_and_keep_the_outcomes():
    data, model, oracle = brightness_world(10)
    samples = _samples(data)
    gen = tiny_vqgan()
    shapes = set()
    decode = gen.decode
    gen.decode = lambda z: (shapes.add(tuple(z.shape)), decode(z))[1]
    ref = run_reference(samples, model=model, oracle=oracle, generator=gen, target_of=torch.arange(3), budget=6,
                        step_size=0.3, optimizer="adam")
    shapes.clear()
    out = []
    slots = run_batched(iter(samples), model=model, oracle=oracle, generator=gen, target_of=torch.arange(3),
                        cfg=LoopConfig(6, 0.3, "adam", 4, fixed_slots=True), device=torch.device("cpu"),
                        on_sample=lambda o, *_: out.append(o))
    assert slots == 4
    assert {s[0] for s in shapes} == {4}  # the loop's decodes (the code search sees other shapes only via encode)
    assert [o.key() for o in sorted(out, key=lambda o: o.index)] == [o.key() for o in ref]
