"""One GAN training step against the same step written out by hand (AttnGAN's iteration order).

The loop's own tests show that training is repeatable and resumable; these show that what it repeats is the
published update: per stage, D on (real, fake.detach()) with its own Adam; then one G update on the sum of every
stage's adversarial term against the *updated* Ds, the alignment terms on the last image and kl_weight × KL; then the
EMA. Two steps, so that gradients left over from the first step or Adam state not carried over would show.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_train import data_root, make  # noqa: F401  (the module-scoped data fixture)

from t2i.batch import item_noise, text_features
from t2i.data.loader import make_loader
from t2i.losses.kl import kl_loss
from t2i.train import run_dir as run_dirs
from t2i.train.loop import GANTrainer

# Values chosen so that swapping any two of them changes the result.
SETTINGS = [
    "train.lr_g=0.0003",
    "train.lr_d=0.0001",
    "train.betas=[0.4, 0.95]",
    "train.kl_weight=2.5",
    "train.ema.half_life_steps=3",
]


class HandWrittenStep:
    """The update of one iteration, from copies of the trainer's networks, with nothing from the loop."""

    def __init__(self, trainer: GANTrainer):
        t = trainer.recipe.train
        self.recipe, self.mask_ids = trainer.recipe, trainer.mask_ids
        self.nets = copy.deepcopy(trainer.nets)
        self.ema = copy.deepcopy(trainer.nets.generator)
        self.decay = 0.5 ** (1 / 3)
        self.opt_g = torch.optim.Adam(self.nets.generator.parameters(), lr=0.0003, betas=(0.4, 0.95))
        self.opt_d = [
            torch.optim.Adam([p for p in d.parameters() if p.requires_grad], lr=0.0001, betas=(0.4, 0.95))
            for d in self.nets.discriminators
        ]
        assert (t.lr_g, t.lr_d, tuple(t.betas), t.kl_weight) == (0.0003, 0.0001, (0.4, 0.95), 2.5)

    def __call__(self, batch, step: int) -> dict[str, float]:
        nets, m = self.nets, self.recipe.model
        text = text_features(nets.text_encoder, batch, self.mask_ids)
        if batch.keys:
            z, eps = item_noise(batch.keys, step, self.recipe.seed, m.z_dim, m.cond_dim)
        else:
            B = len(batch)
            z, eps = torch.randn(B, m.z_dim, generator=self.noise), torch.randn(B, m.cond_dim, generator=self.noise)
        nets.generator.train()
        out = nets.generator(z, text.sentence, text.words, text.mask, eps=eps)
        logs = {}
        for i, (d, opt) in enumerate(zip(nets.discriminators, self.opt_d, strict=True)):
            opt.zero_grad(set_to_none=True)
            loss_d, _ = nets.adversarial.discriminator_loss(d, batch.images[i], out.images[i].detach(), text.sentence)
            loss_d.backward()
            opt.step()
            logs[f"loss/D{i}"] = loss_d.item()
        self.opt_g.zero_grad(set_to_none=True)
        terms = {}
        for i, d in enumerate(nets.discriminators):
            terms[f"G{i}"] = nets.adversarial.generator_loss(d, out.images[i], text.sentence)[0]
        for name, term in zip(nets.alignment_names, nets.alignment, strict=True):
            terms[name] = term(out.images[-1], text)[0]
        terms["kl"] = 2.5 * kl_loss(out.mu, out.logvar)
        total = torch.stack(list(terms.values())).sum()
        for d in nets.discriminators:  # D's gradients from the G loss are not wanted: drop them before G's step
            d.zero_grad(set_to_none=True)
        total.backward()
        self.opt_g.step()
        with torch.no_grad():
            for avg, live in zip(self.ema.parameters(), nets.generator.parameters(), strict=True):
                avg.copy_(self.decay * avg + (1 - self.decay) * live)
            for avg, live in zip(self.ema.buffers(), nets.generator.buffers(), strict=True):
                avg.copy_(live)
        logs["loss/G"] = total.item()
        logs.update({f"loss/{k}": v.item() for k, v in terms.items()})
        return logs


def _states(trainer_or_ref) -> dict[str, torch.Tensor]:
    nets = trainer_or_ref.nets
    ema = trainer_or_ref.ema.model if hasattr(trainer_or_ref.ema, "model") else trainer_or_ref.ema
    flat = {f"G.{k}": v for k, v in nets.generator.state_dict().items()}
    flat.update({f"EMA.{k}": v for k, v in ema.state_dict().items()})
    for i, d in enumerate(nets.discriminators):
        flat.update({f"D{i}.{k}": v for k, v in d.state_dict().items()})
    return flat


def _two_steps(root, tmp_path, *, keys: bool = True):
    # three stages: the alignment terms must see the last image, which is not also the second one
    # seed 3, not the recipe's 0: the trainer's own noise stream is seeded with seed * 1000
    recipe, dataset = make(root, [*SETTINGS, "model.stages=3", "model.base_size=16", "seed=3"])
    trainer = GANTrainer(recipe, run_dirs.create(recipe, tmp_path / "run"), dataset, quiet=True)
    reference = HandWrittenStep(trainer)
    if not keys:  # items without keys: the noise comes from the trainer's own stream, seeded from the run seed
        reference.noise = torch.Generator().manual_seed(recipe.seed * 1000)
    before = {k: v.clone() for k, v in _states(trainer).items()}
    batches = iter(make_loader(dataset, recipe.data.batch_size, recipe.seed))
    logs = []
    for step in range(2):
        batch = next(batches)
        if not keys:
            batch.keys = []
        torch.manual_seed(step)
        trainer.step = step
        got = trainer.train_step(batch)
        torch.manual_seed(step)
        logs.append((got, reference(batch, step)))
    return trainer, reference, before, logs


# Function-scoped on purpose: mutation testing maps a test to the code it runs, and a shared fixture's work would be
# credited to the first test only.
@pytest.fixture
def two_steps(data_root, tmp_path):  # noqa: F811
    return _two_steps(data_root, tmp_path)


def test_two_training_steps_equal_the_hand_written_update(two_steps):
    trainer, reference, before, _ = two_steps
    got, want = _states(trainer), _states(reference)
    assert got.keys() == want.keys()
    far = {
        k: (got[k].double() - want[k].double()).abs().max().item()
        for k in got
        if not torch.allclose(got[k].double(), want[k].double(), rtol=1e-5, atol=1e-7)
    }
    assert not far, f"{len(far)} tensors differ from the hand-written step, e.g. {sorted(far.items())[:5]}"
    # ... and every kind of network moved (a step that updates nothing equals a reference that updates nothing)
    for prefix in ("G.", "EMA.", *(f"D{i}." for i in range(len(trainer.nets.discriminators)))):
        assert any(not torch.equal(v, before[k]) for k, v in got.items() if k.startswith(prefix)), prefix


def test_logged_losses_are_the_terms_of_the_update(two_steps):
    _, reference, _, logs = two_steps
    for got, want in logs:
        assert got is not None
        losses = {k: v for k, v in got.items() if k.startswith("loss/")}
        assert losses.keys() == want.keys()
        assert losses == pytest.approx(want, rel=1e-5, abs=1e-7)
        assert {"loss/D0", "loss/D1", "loss/D2", "loss/G0", "loss/G1", "loss/G2", "loss/G", "loss/kl"} <= losses.keys()
        names = reference.nets.alignment_names
        assert names and all(f"loss/{n}" in losses for n in names)


def test_the_g_update_leaves_no_gradients_on_the_discriminators(two_steps):
    trainer, *_ = two_steps
    assert all(p.grad is None for d in trainer.nets.discriminators for p in d.parameters())
    assert not any(p.requires_grad for group in trainer.d_trainable for p in group)  # frozen until D's own step
    assert any(p.grad is not None for p in trainer.nets.generator.parameters())


def test_items_without_keys_draw_their_noise_from_the_run_seed(data_root, tmp_path):  # noqa: F811
    """No usable item keys (e.g. a user's data set): z and ε come from one generator seeded by the run seed."""
    trainer, reference, _, _ = _two_steps(data_root, tmp_path, keys=False)
    got, want = _states(trainer), _states(reference)
    far = [k for k in got if not torch.allclose(got[k].double(), want[k].double(), rtol=1e-5, atol=1e-7)]
    assert not far, f"{len(far)} tensors differ, e.g. {far[:5]}"
