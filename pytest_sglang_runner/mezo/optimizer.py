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
step instead of four, bitwise the same weights. `train` runs it.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

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
        self.checkpoint = Checkpoint(self.fingerprint(), self.names, lr, eps, weight_decay)
        self.global_step = 0

    @property
    def kernel(self) -> str:
        """Which implementation writes the weights: "triton" or "torch"."""
        return self._masters.passes.name

    # ---- the four verbs -------------------------------------------------------------------

    def zo_perturb_parameters(self, scaling_factor: float = 1.0, random_seed: int | None = None) -> None:
        """theta <- theta + scaling_factor * eps * z: the model gets ``master + offset * eps * z``."""
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
        """A new seed; loss at theta + eps z and at theta - eps z (weights left at -eps z)."""
        self.zo_random_seed = self._seeds.randrange(1_000_000_000)
        prepared = self.objective.prepare(examples)  # one batch, both forwards
        try:
            self.zo_perturb_parameters(scaling_factor=1)
            loss1 = self.zo_forward(prepared)
            self.zo_perturb_parameters(scaling_factor=-2)
            loss2 = self.zo_forward(prepared)
        except BaseException:
            self.offset = 0.0
            self._masters.passes.restore()  # a failed forward never leaves the model perturbed
            raise
        finally:
            self.objective.release(prepared)
        self.projected_grad = (loss1 - loss2) / (2 * self.eps)
        return loss1, loss2

    def zo_step(self, examples: Sequence) -> float:
        """Estimate the projected gradient on one batch; returns loss at theta + eps z."""
        loss1, _ = self._two_losses(examples)
        self.zo_perturb_parameters(scaling_factor=1)
        return loss1

    def zo_update(self, random_seed: int | None = None, projected_grad: float | None = None) -> None:
        """theta <- theta - lr * (g z + wd theta), z regenerated from the step's seed."""
        assert self.offset == 0.0, "zo_update runs on unperturbed weights"
        seed = self.zo_random_seed if random_seed is None else random_seed
        grad = self.projected_grad if projected_grad is None else projected_grad
        self._masters.passes.update(seed, self.lr, grad, self.weight_decay)
        self.on_weights_changed()
        self.checkpoint.steps.append((seed, grad))
        self.global_step += 1

    def step(self, examples: Sequence) -> float:
        """`zo_step` then `zo_update`, the restore done by the update's write; returns loss at theta + eps z."""
        loss1, _ = self._two_losses(examples)
        self.offset = 0.0  # the update below writes the new masters into every tensor
        self.zo_update()
        return loss1

    # ---- driving a run --------------------------------------------------------------------

    def evaluate(self, examples: Sequence, batch_size: int = 64) -> tuple[float, float]:
        """(mean loss, accuracy) over ``examples`` at the unperturbed weights."""
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

        ``until(self)``, asked after each evaluation, ends the run early when it returns True.
        """
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc="MeZO", unit="step")
        batches = self.batches(train_examples, batch_size, data_seed)
        for _ in range(steps):
            loss = self.step(next(batches))
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
        if bar is not None:
            bar.close()
        return self.history

    # ---- checkpoints ----------------------------------------------------------------------

    def fingerprint(self) -> str:
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
