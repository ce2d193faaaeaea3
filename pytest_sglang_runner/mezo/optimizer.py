"""MeZO-SGD (Malladi et al. 2023): fine-tuning with forward passes only, on the runner or on HF.

The reference's four verbs (princeton-nlp/MeZO ``large_models/trainer.py``):

- `MeZO.zo_perturb_parameters` moves every trainable parameter by ``scaling_factor * eps * z``,
  where ``z ~ N(0, 1)`` is regenerated from the step's seed (`noise`: never stored);
- `MeZO.zo_forward` is the loss of one prepared batch at the current weights;
- `MeZO.zo_step` runs +eps, -2eps, +eps around two forwards of the same prepared batch and
  gives the projected gradient ``g = (loss+ - loss-) / (2 eps)``;
- `MeZO.zo_update` regenerates the same ``z`` and applies ``theta <- theta - lr (g z + wd theta)``.

`MeZO.step` is ``zo_step`` + ``zo_update`` with the last restore folded into the update (it
writes the updated masters into the model, which is the restore too): three weight passes a
step instead of four, bitwise the same weights. ``step(..., defer_update=True)``, as `train`
runs it, also folds the update into the next step's first perturbation (one pass writes the
updated masters and the model at them + eps z'): two passes a step, bitwise the same masters
and losses; the model stays perturbed until `flush_update` (or the next step) applies it.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import torch

from .checkpoint import Checkpoint, History
from .params import Masters, ParamView, fingerprint


class MeZO:
    """MeZO-SGD over named parameter views and an objective; constant learning rate.

    ``on_weights_changed`` is called after every write into the model (three per step for the
    perturbations, one for the update); the objective's model hook (`MaskedLM.weights_changed`)
    is the usual choice. ``kernel`` picks the passes' implementation (`params.Masters`).
    """

    def __init__(
        self,
        views: Sequence[ParamView],
        objective,
        *,
        lr: float,
        eps: float,
        weight_decay: float = 0.0,
        seed: int = 0,
        on_weights_changed: Callable[[], None] | None = None,
        kernel: str = "auto",
    ):
        self.views = list(views)
        self.names = [v.name for v in self.views]
        self.objective = objective
        self.lr, self.eps, self.weight_decay = lr, eps, weight_decay
        self.on_weights_changed = on_weights_changed or (lambda: None)
        self._masters = Masters(self.views, kernel)
        self.masters = self._masters.tensors  # fp32, one per view, in canonical order
        self.offset = 0.0  # current perturbation, in units of eps * z
        self.zo_random_seed: int | None = None
        self.projected_grad: float | None = None
        self._seeds = random.Random(seed)
        self.history = History()
        self._pending: tuple[int, float] | None = None  # a deferred update's (seed, g)
        self.checkpoint = Checkpoint(self.fingerprint(), self.names, lr, eps, weight_decay)
        self.global_step = 0

    @property
    def kernel(self) -> str:
        """Which implementation writes the weights: "triton" or "torch"."""
        return self._masters.passes.name

    # ---- the four verbs -------------------------------------------------------------------

    def zo_perturb_parameters(self, scaling_factor: float = 1.0, random_seed: int | None = None) -> None:
        """theta <- theta + scaling_factor * eps * z: the model gets ``master + offset * eps * z``."""
        self.flush_update()
        seed = self.zo_random_seed if random_seed is None else random_seed
        self.offset += scaling_factor
        if self.offset == 0.0:
            self._masters.passes.restore()  # exact, whatever the model's dtype
        else:
            self._masters.passes.perturb(seed, self.offset * self.eps)
        self.on_weights_changed()

    def zo_forward(self, prepared) -> float:
        """Loss of one prepared batch at the model's current (possibly perturbed) weights."""
        loss, _ = self.objective.loss(prepared)
        return loss

    def _two_losses(self, examples: Sequence) -> tuple[float, float]:
        """A new seed; loss at theta + eps z and at theta - eps z (weights left at -eps z).

        The first weight pass is launched before the batch is prepared (the device runs it while
        the host packs the batch), and both losses come back in one host sync.
        """
        self.zo_random_seed = self._seeds.randrange(1_000_000_000)
        prepared = None
        try:
            self._first_perturbation()
            prepared = self.objective.prepare(examples)  # one batch, both forwards
            loss1 = self._loss_on_device(prepared)
            self.zo_perturb_parameters(scaling_factor=-2)
            loss2 = self._loss_on_device(prepared)
            loss1, loss2 = torch.stack([loss1, loss2]).tolist()
        except BaseException:
            self.offset = 0.0
            self._masters.passes.restore()  # a failed forward never leaves the model perturbed
            raise
        finally:
            if prepared is not None:
                self.objective.release(prepared)
        self.projected_grad = (loss1 - loss2) / (2 * self.eps)
        return loss1, loss2

    def _first_perturbation(self) -> None:
        if self._pending is None:
            self.zo_perturb_parameters(scaling_factor=1)
            return
        seed, grad = self._pending  # the last step's update and this step's first perturbation, in one pass
        self._masters.passes.update_and_perturb(seed, self.lr, grad, self.weight_decay, self.zo_random_seed, self.eps)
        self._pending, self.offset = None, 1.0
        self.on_weights_changed()

    def _loss_on_device(self, prepared) -> torch.Tensor:
        """The loss without a host sync where the objective offers it (`PromptObjective.loss_tensor`)."""
        on_device = getattr(self.objective, "loss_tensor", None)
        return on_device(prepared) if on_device is not None else torch.tensor(self.zo_forward(prepared))

    def zo_step(self, examples: Sequence) -> float:
        """Estimate the projected gradient on one batch; returns loss at theta + eps z."""
        loss1, _ = self._two_losses(examples)
        self.zo_perturb_parameters(scaling_factor=1)
        return loss1

    def zo_update(self, random_seed: int | None = None, projected_grad: float | None = None) -> None:
        """theta <- theta - lr * (g z + wd theta), z regenerated from the step's seed."""
        self.flush_update()
        assert self.offset == 0.0, "zo_update runs on unperturbed weights"
        seed = self.zo_random_seed if random_seed is None else random_seed
        grad = self.projected_grad if projected_grad is None else projected_grad
        self._masters.passes.update(seed, self.lr, grad, self.weight_decay)
        self.on_weights_changed()
        self._count_update(seed, grad)

    def _count_update(self, seed: int, grad: float) -> None:
        """An update is a step of the checkpoint (and of `global_step`) from when it is decided."""
        self.checkpoint.steps.append((seed, grad))
        self.global_step += 1

    def step(self, examples: Sequence, defer_update: bool = False) -> float:
        """`zo_step` then `zo_update`, the restore done by the update's write; returns loss at theta + eps z.

        ``defer_update``: leave the update pending (the model at theta - eps z) for the next step's
        first pass; `flush_update` applies it alone. The checkpoint and `global_step` count it now.
        """
        loss1, _ = self._two_losses(examples)
        if defer_update:
            self._pending, self.offset = (self.zo_random_seed, self.projected_grad), -1.0
            self._count_update(*self._pending)
            return loss1
        self.offset = 0.0  # the update below writes the new masters into every tensor
        self.zo_update()
        return loss1

    def flush_update(self) -> None:
        """Apply a deferred update (masters and model): the weights every reader expects."""
        if self._pending is None:
            return
        (seed, grad), self._pending = self._pending, None
        self._masters.passes.update(seed, self.lr, grad, self.weight_decay)
        self.offset = 0.0
        self.on_weights_changed()

    # ---- driving a run --------------------------------------------------------------------

    def evaluate(self, examples: Sequence, batch_size: int = 64) -> tuple[float, float]:
        """(mean loss, accuracy) over ``examples`` at the unperturbed weights."""
        self.flush_update()
        total_loss = total_correct = 0.0
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            prepared = self.objective.prepare(chunk)
            try:
                loss, accuracy = self.objective.loss(prepared)
            finally:
                self.objective.release(prepared)
            total_loss += loss * len(chunk)
            total_correct += accuracy * len(chunk)
        return total_loss / len(examples), total_correct / len(examples)

    def batches(self, examples: Sequence, batch_size: int, seed: int = 0):
        """Endless shuffled epochs of ``batch_size`` (the whole set when it is smaller, like the reference)."""
        order = list(range(len(examples)))
        shuffler = random.Random(seed)
        while True:
            shuffler.shuffle(order)
            for start in range(0, len(order), batch_size):
                yield [examples[i] for i in order[start : start + batch_size]]

    def train(
        self,
        train_examples: Sequence,
        steps: int,
        *,
        batch_size: int = 64,
        eval_examples: Sequence | None = None,
        eval_every: int | None = None,
        on_eval: Callable[[MeZO], None] | None = None,
        until: Callable[[MeZO], bool] | None = None,
        progress: bool = False,
        data_seed: int = 0,
    ) -> History:
        """``steps`` MeZO steps; evaluates on ``eval_examples`` every ``eval_every`` steps and at the end.

        ``until(self)``, asked after each evaluation, ends the run early when it returns True. Each
        update is folded into the next step's first pass; the last one is applied before returning.
        """
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc="MeZO", unit="step")
        try:
            return self._train(
                train_examples, steps, batch_size, eval_examples, eval_every, on_eval, until, bar, data_seed
            )
        finally:
            self.flush_update()
            if bar is not None:
                bar.close()

    def _train(self, train_examples, steps, batch_size, eval_examples, eval_every, on_eval, until, bar, data_seed):
        batches = self.batches(train_examples, batch_size, data_seed)
        for _ in range(steps):
            loss = self.step(next(batches), defer_update=True)
            h = self.history
            h.step.append(self.global_step)
            h.loss.append(loss)
            h.projected_grad.append(self.projected_grad)
            last = _ == steps - 1
            if eval_examples is not None and eval_every and (self.global_step % eval_every == 0 or last):
                eval_loss, eval_acc = self.evaluate(eval_examples, batch_size)
                h.eval_step.append(self.global_step)
                h.eval_loss.append(eval_loss)
                h.eval_accuracy.append(eval_acc)
                if on_eval is not None:
                    on_eval(self)
                if bar is not None:
                    bar.set_postfix(dev_acc=f"{eval_acc:.3f}")
                if until is not None and until(self):
                    break
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        return self.history

    # ---- checkpoints ----------------------------------------------------------------------

    def fingerprint(self) -> str:
        self.flush_update()
        return fingerprint(self.names, self.masters)

    def replay(self, checkpoint: Checkpoint) -> None:
        """Apply a checkpoint's (seed, g) sequence to these (initial) weights: bitwise the trained ones."""
        if checkpoint.names != self.names:
            raise ValueError("checkpoint was made over different parameters (names/order differ)")
        if checkpoint.fingerprint != self.fingerprint():
            raise ValueError("checkpoint was made from different initial weights (fingerprint differs)")
        self.lr, self.eps, self.weight_decay = checkpoint.lr, checkpoint.eps, checkpoint.weight_decay
        for seed, grad in checkpoint.steps:
            self.zo_update(random_seed=seed, projected_grad=grad)
