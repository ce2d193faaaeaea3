"""MeZO (Malladi et al. 2023): fine-tuning with forward passes only, on an SGLang runner or an HF model.

The algorithm is the reference's four verbs (princeton-nlp/MeZO ``large_models/trainer.py``):

- `MeZO.zo_perturb_parameters` moves every trainable parameter by ``scaling_factor * eps * z``,
  where ``z ~ N(0, 1)`` is regenerated from the step's seed (never stored);
- `MeZO.zo_forward` is the loss of one prepared batch at the current weights;
- `MeZO.zo_step` runs +eps, -2eps, +eps around two forwards of the same prepared batch and
  gives the projected gradient ``g = (loss+ - loss-) / (2 eps)``;
- `MeZO.zo_update` regenerates the same ``z`` and applies ``theta <- theta - lr (g z + wd theta)``.

The optimizer sees only a list of `ParamView` (canonical HF name + a tensor that is a view of the
model's own storage) and an objective (prepare / loss / release). That is what makes one
implementation serve both backends: `roberta_sglang_views` maps SGLang's fused, padded RoBERTa
layout onto HF's parameters (HF names, HF shapes, HF order), so from the same weights and seeds
the runner and HF get bitwise the same perturbed weights.

Weights live in fp32 masters owned by the optimizer; the model's tensors only ever receive
``master + offset * eps * z`` (or the master itself), so a restore is exact in any model dtype
(in-place bf16 +eps/-2eps/+eps drifts by 0.078). A checkpoint is the initial weights'
fingerprint plus the (seed, g) of every step: replaying it reproduces the trained weights bitwise.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------
# Parameter views: canonical (HF) names over each backend's own tensors


@dataclass(frozen=True)
class ParamView:
    """One trainable parameter under its canonical HF name; ``tensor`` shares the model's storage."""

    name: str
    tensor: torch.Tensor


def hf_parameter_views(model: torch.nn.Module) -> list[ParamView]:
    """An HF model's trainable parameters, in ``named_parameters`` order (tied weights once)."""
    return [ParamView(name, p.data) for name, p in model.named_parameters() if p.requires_grad]


def hf_canonical_names(hf_config) -> list[str]:
    """HF's parameter names, in HF's order, for a masked LM of this config (built on the meta device)."""
    from transformers import AutoModelForMaskedLM

    with torch.device("meta"):
        model = AutoModelForMaskedLM.from_config(hf_config)
    return [name for name, _ in model.named_parameters()]


_QKV = {"query": 0, "key": 1, "value": 2}


def roberta_hf_to_sglang(name: str, hidden_size: int, vocab_size: int) -> tuple[str, slice | None]:
    """Where HF RoBERTa-MLM parameter ``name`` lives in SGLang: (SGLang name, row slice or None).

    q/k/v are rows ``[0:H]``, ``[H:2H]``, ``[2H:3H]`` of the fused ``self_attn.qkv_proj`` (weight
    and bias); the word embedding is padded to a multiple of 64 rows, only ``[0:vocab]`` is real;
    everything else keeps its name. TP=1 only.
    """
    parts = name.split(".")
    if "attention" in parts and "self" in parts:
        i = parts.index("self")
        which, kind = parts[i + 1], parts[i + 2]
        k = _QKV[which]
        sglang = ".".join(parts[:i] + ["self_attn", "qkv_proj", kind])
        return sglang, slice(k * hidden_size, (k + 1) * hidden_size)
    if name == "roberta.embeddings.word_embeddings.weight":
        return name, slice(0, vocab_size)
    return name, None


# SGLang parameters that the forward never reads: never perturbed, never compared.
SGLANG_UNUSED = ("roberta.embeddings.position_ids",)


def roberta_sglang_views(model: torch.nn.Module, hf_config=None) -> list[ParamView]:
    """Views of an SGLang RobertaForMaskedLM's tensors under HF names, in HF order (TP=1)."""
    from sglang.srt.distributed.parallel_state import get_tensor_model_parallel_world_size

    if get_tensor_model_parallel_world_size() != 1:
        raise NotImplementedError("MeZO parameter views map the SGLang RoBERTa layout for TP=1 only")
    config = hf_config if hf_config is not None else model.config
    params = dict(model.named_parameters())
    views, covered = [], set()
    for name in hf_canonical_names(config):
        sglang_name, rows = roberta_hf_to_sglang(name, config.hidden_size, config.vocab_size)
        tensor = params[sglang_name].data
        views.append(ParamView(name, tensor if rows is None else tensor[rows]))
        covered.add(sglang_name)
    missing = set(params) - covered - set(SGLANG_UNUSED)
    if missing:
        raise ValueError(f"SGLang parameters with no HF counterpart (mapping out of date?): {sorted(missing)}")
    return views


def select_views(views: Sequence[ParamView], patterns: Sequence[str] | None) -> list[ParamView]:
    """MeZO option ``trainable``: keep only views whose canonical name matches a glob pattern.

    ``None`` keeps everything (full-parameter MeZO, the paper's default). Like the reference's
    ``requires_grad`` filter, the rest stay frozen and draw no z; the canonical order is kept.
    """
    if patterns is None:
        return list(views)
    from fnmatch import fnmatchcase

    kept = [v for v in views if any(fnmatchcase(v.name, p) for p in patterns)]
    if not kept:
        raise ValueError(f"trainable patterns {list(patterns)} match no parameter")
    return kept


def canonical_state(views: Sequence[ParamView]) -> list[torch.Tensor]:
    """fp32 copies of the views' current values, in canonical order."""
    return [v.tensor.detach().float().clone() for v in views]


def load_canonical(views: Sequence[ParamView], tensors: Sequence[torch.Tensor]) -> None:
    """Write canonical fp32 tensors into the model through its views (cast to the model dtype)."""
    with torch.no_grad():
        for view, value in zip(views, tensors, strict=True):
            view.tensor.copy_(value)


def fingerprint(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> str:
    """sha256 over canonical names, shapes and fp32 bytes: 'same starting weights' for replay."""
    digest = hashlib.sha256()
    for name, tensor in zip(names, tensors, strict=True):
        digest.update(f"{name}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Masked-LM scorers: one prepared batch -> vocabulary logits at each sequence's <mask>


class MaskedLM(Protocol):
    views: list[ParamView]

    def prepare(self, token_lists: Sequence[Sequence[int]], mask_positions: Sequence[int]) -> Any: ...
    def mask_logits(self, prepared: Any) -> torch.Tensor: ...  # [batch, vocab]
    def release(self, prepared: Any) -> None: ...
    def weights_changed(self) -> None: ...


class HFMaskedLM:
    """An HF RobertaForMaskedLM-style model; the LM head runs on the <mask> rows only."""

    def __init__(self, model: torch.nn.Module, pad_token_id: int | None = None):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.pad_token_id = model.config.pad_token_id if pad_token_id is None else pad_token_id
        self.views = hf_parameter_views(model)

    def prepare(self, token_lists, mask_positions):
        width = max(len(ids) for ids in token_lists)
        input_ids = torch.full((len(token_lists), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, ids in enumerate(token_lists):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        positions = torch.tensor(list(mask_positions))
        return input_ids.to(self.device), attention.to(self.device), positions.to(self.device)

    @torch.no_grad()
    def mask_logits(self, prepared):
        input_ids, attention, positions = prepared
        rows = torch.arange(len(positions), device=self.device)
        base = getattr(self.model, "base_model", None)
        head = getattr(self.model, "lm_head", None)
        if base is not None and head is not None:
            hidden = base(input_ids=input_ids, attention_mask=attention).last_hidden_state
            return head(hidden[rows, positions])
        return self.model(input_ids=input_ids, attention_mask=attention).logits[rows, positions]

    def release(self, prepared) -> None:
        pass

    def weights_changed(self) -> None:
        pass  # HF keeps no state derived from the weights between forwards


class SGLangMaskedLM:
    """The runner through the kit's `Forward` helper (prepare / run / release, ``packed_logits``)."""

    def __init__(self, model_runner, forward):
        self.runner = model_runner
        self.forward = forward
        self._check_no_prefix_reuse()
        self.views = roberta_sglang_views(model_runner.model, model_runner.model_config.hf_config)

    def _check_no_prefix_reuse(self) -> None:
        # KV computed under perturbed weights must never be served from a prefix cache.
        from . import sglang_compat

        if not sglang_compat.prefix_cache_disabled(self.runner):
            raise RuntimeError(
                "MeZO changes the weights between forwards: build the runner with disable_radix_cache=True "
                "(e.g. @pytest.mark.sglang(disable_radix_cache=True))"
            )

    def prepare(self, token_lists, mask_positions):
        prepared = self.forward.prepare([list(ids) for ids in token_lists])
        return prepared, list(mask_positions)

    @torch.no_grad()
    def mask_logits(self, prepared):
        batch, positions = prepared
        result = self.forward.run(batch)
        rows = torch.tensor([o + p for o, p in zip(result.offsets, positions)], device=result.packed_logits.device)
        return result.packed_logits[rows]

    def release(self, prepared) -> None:
        self.forward.release(prepared[0])

    def weights_changed(self) -> None:
        self._check_no_prefix_reuse()


# --------------------------------------------------------------------------------------------
# The objective: prompt-based classification with label words (LM-BFF / MeZO medium models)


@dataclass(frozen=True)
class Encoded:
    """One prompt-encoded example: token ids, the <mask> position and the gold label index."""

    input_ids: tuple[int, ...]
    mask_pos: int
    label: int


class PromptObjective:
    """Cross-entropy over the label words' logits at <mask>; the loss closure MeZO evaluates."""

    def __init__(self, lm: MaskedLM, label_word_ids: Sequence[int]):
        self.lm = lm
        self.label_word_ids = torch.tensor(list(label_word_ids))

    def prepare(self, examples: Sequence[Encoded]):
        prepared = self.lm.prepare([e.input_ids for e in examples], [e.mask_pos for e in examples])
        labels = torch.tensor([e.label for e in examples])
        return prepared, labels

    def scores(self, prepared) -> torch.Tensor:
        batch, _ = prepared
        logits = self.lm.mask_logits(batch).float()
        return logits[:, self.label_word_ids.to(logits.device)]

    def loss(self, prepared) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) of the prepared batch at the current weights."""
        scores = self.scores(prepared)
        labels = prepared[1].to(scores.device)
        loss = F.cross_entropy(scores, labels)
        accuracy = (scores.argmax(-1) == labels).float().mean()
        return float(loss), float(accuracy)

    def release(self, prepared) -> None:
        self.lm.release(prepared[0])


# --------------------------------------------------------------------------------------------
# Checkpoint and history


@dataclass
class Checkpoint:
    """Initial weights' fingerprint + every step's (seed, projected gradient): the whole run."""

    fingerprint: str
    names: list[str]
    lr: float
    eps: float
    weight_decay: float
    steps: list[tuple[int, float]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))  # floats round-trip exactly through repr

    @classmethod
    def load(cls, path: Path) -> "Checkpoint":
        data = json.loads(Path(path).read_text())
        data["steps"] = [(int(s), float(g)) for s, g in data["steps"]]
        return cls(**data)


@dataclass
class History:
    """Per-step training loss and projected gradient; dev loss/accuracy at each evaluation."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    projected_grad: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)

    def save_plot(self, path: Path, title: str = "MeZO") -> Path:
        """Loss (train, dev) and dev accuracy against step, as a PNG (matplotlib, Agg)."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 3.5))
        ax_loss, ax_acc = fig.subplots(1, 2)
        ax_loss.plot(self.step, self.loss, lw=0.6, alpha=0.6, label="train loss (+eps)")
        if self.eval_step:
            ax_loss.plot(self.eval_step, self.eval_loss, "o-", label="dev loss")
            ax_acc.plot(self.eval_step, self.eval_accuracy, "o-", color="C2")
        ax_loss.set_xlabel("step")
        ax_loss.legend()
        ax_acc.set_xlabel("step")
        ax_acc.set_ylabel("dev accuracy")
        ax_acc.set_ylim(0, 1)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(str(path), dpi=100)
        return Path(path)


def _no_decay(name: str) -> bool:
    # The reference exempts biases and layer norms from weight decay (case-insensitive here:
    # HF RoBERTa spells it ``LayerNorm`` inside the encoder and ``layer_norm`` in the head).
    return name.endswith("bias") or "layernorm" in name.lower().replace("_", "")


# --------------------------------------------------------------------------------------------
# The optimizer


class MeZO:
    """MeZO-SGD over named parameter views and an objective; constant learning rate.

    ``on_weights_changed`` is called after every write into the model (three per step for the
    perturbations, one for the update); the objective's model hook (`MaskedLM.weights_changed`)
    is the usual choice.
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
    ):
        self.views = list(views)
        self.names = [v.name for v in self.views]
        self.objective = objective
        self.lr, self.eps, self.weight_decay = lr, eps, weight_decay
        self.on_weights_changed = on_weights_changed or (lambda: None)
        self.masters = canonical_state(self.views)
        self.device = self.masters[0].device
        self.generator = torch.Generator(device=self.device)
        self.offset = 0.0  # current perturbation, in units of eps * z
        self.zo_random_seed: int | None = None
        self.projected_grad: float | None = None
        self._seeds = random.Random(seed)
        self.history = History()
        self.checkpoint = Checkpoint(self.fingerprint(), self.names, lr, eps, weight_decay)
        self.global_step = 0

    # ---- the four verbs -------------------------------------------------------------------

    def _z(self, seed: int) -> Iterable[torch.Tensor]:
        """The step's z, one canonical parameter at a time, in canonical order."""
        self.generator.manual_seed(seed)
        for master in self.masters:
            yield torch.randn(master.shape, generator=self.generator, device=self.device, dtype=torch.float32)

    @torch.no_grad()
    def zo_perturb_parameters(self, scaling_factor: float = 1.0, random_seed: int | None = None) -> None:
        """theta <- theta + scaling_factor * eps * z: the model gets ``master + offset * eps * z``."""
        seed = self.zo_random_seed if random_seed is None else random_seed
        self.offset += scaling_factor
        if self.offset == 0.0:
            for view, master in zip(self.views, self.masters):
                view.tensor.copy_(master)  # exact restore, whatever the model's dtype
        else:
            for view, master, z in zip(self.views, self.masters, self._z(seed)):
                view.tensor.copy_(master.add(z, alpha=self.offset * self.eps))
        self.on_weights_changed()

    def zo_forward(self, prepared) -> float:
        """Loss of one prepared batch at the model's current (possibly perturbed) weights."""
        loss, _ = self.objective.loss(prepared)
        return loss

    def zo_step(self, examples: Sequence) -> float:
        """Estimate the projected gradient on one batch; returns loss at theta + eps z."""
        self.zo_random_seed = self._seeds.randrange(1_000_000_000)
        prepared = self.objective.prepare(examples)  # one batch, both forwards
        try:
            self.zo_perturb_parameters(scaling_factor=1)
            loss1 = self.zo_forward(prepared)
            self.zo_perturb_parameters(scaling_factor=-2)
            loss2 = self.zo_forward(prepared)
            self.zo_perturb_parameters(scaling_factor=1)
        finally:
            self.objective.release(prepared)
        self.projected_grad = (loss1 - loss2) / (2 * self.eps)
        return loss1

    @torch.no_grad()
    def zo_update(self, random_seed: int | None = None, projected_grad: float | None = None) -> None:
        """theta <- theta - lr * (g z + wd theta), z regenerated from the step's seed."""
        seed = self.zo_random_seed if random_seed is None else random_seed
        grad = self.projected_grad if projected_grad is None else projected_grad
        assert self.offset == 0.0, "zo_update runs on unperturbed weights"
        for name, view, master, z in zip(self.names, self.views, self.masters, self._z(seed)):
            update = z.mul_(grad)
            if self.weight_decay and not _no_decay(name):
                update.add_(master, alpha=self.weight_decay)
            master.sub_(update, alpha=self.lr)
            view.tensor.copy_(master)
        self.on_weights_changed()
        self.checkpoint.steps.append((seed, grad))
        self.global_step += 1

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
        on_eval: Callable[["MeZO"], None] | None = None,
        until: Callable[["MeZO"], bool] | None = None,
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
            loss = self.zo_step(next(batches))
            self.zo_update()
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


def max_abs_difference(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Largest elementwise |a - b| over two canonical states (for tests and reports)."""
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b, strict=True))


def relative_difference(x: float, y: float) -> float:
    return abs(x - y) / max(abs(x), abs(y), 1e-12) if not (math.isnan(x) or math.isnan(y)) else math.inf
