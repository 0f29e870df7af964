"""Fine-tune an encoder with a [CLS] treatment head on one prepared task, with gradient tracking.

AdamW (no decay on biases and LayerNorm weights), linear warm-up then linear decay, length-grouped
dynamically padded batches, dev evaluation after every epoch, the best-dev state kept and scored on
test. Per optimizer step it records the loss, the learning rate and three L2 norms:
`grad_cls` = ||d loss / d pooled [CLS]|| over the batch matrix [B, H] (before the head),
`grad_head` = ||d loss / d W|| of the head's linear weight, `grad_total` = the norm of all
parameter gradients before clipping. Accelerate places the model (CPU, one or several GPUs) and runs
bf16 autocast on GPU.

Under `accelerate launch` with P processes (DDP) every process draws the same global batches and
trains on its share (rows r, r+P, ... of each batch); its loss is weighted by its share of the batch,
so the averaged gradient, the step count, the learning-rate schedule and the logged norms are those of
one process over the global batch, and normalizer statistics are all-reduced (IsoBN, whitening,
batchnorm): the run matches the one-process run up to floating-point order (and dropout masks).

With a `Checkpointer` the state is saved at the end of every epoch (and every N steps); a later call
with a matching checkpoint resumes there and ends, on CPU with the same thread count, bit-identical
to an uninterrupted run. A non-finite loss or gradient norm stops the run (`status: diverged`).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from isoprobe.core.config import TrainConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.layout import SPLITS
from isoprobe.core.scores import main_score, task_scores
from isoprobe.finetune.checkpoint import Checkpointer
from isoprobe.finetune.classifier import EncoderClassifier


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (libraries that use the global RNG)
    torch.manual_seed(seed)


def length_grouped_batches(
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    group: int = 50,
    min_size: int = 2,
) -> list[list[int]]:
    """Shuffle, sort within mega-batches of `group` batches by length, chunk, shuffle the batches.
    Similar lengths share a batch (little padding) while the order stays random. A last batch smaller
    than `min_size` is merged into the one before (BatchNorm needs two rows; under P processes every
    process needs one)."""
    order = rng.permutation(len(lengths))
    batches = []
    mega = batch_size * group
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < min_size:
        batches[-2] += batches.pop()
    return [batches[i] for i in rng.permutation(len(batches))]


def encode_split(
    tokenizer, rows: list[dict], max_length: int
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Tokenized features, their lengths, and labels (int or float) of a prepared sentence split."""
    a = [r["text_a"] for r in rows]
    b = [r["text_b"] for r in rows] if rows and rows[0].get("text_b") is not None else None
    enc = tokenizer(a, b, truncation=True, max_length=max_length)
    names = [k for k in tokenizer.model_input_names if k in enc]
    feats = [{k: enc[k][i] for k in names} for i in range(len(rows))]
    lengths = np.array([len(f["input_ids"]) for f in feats])
    return feats, lengths, np.array([r["label"] for r in rows])


def collate(
    tokenizer, feats: list[dict], labels: np.ndarray, idx: list[int], regression: bool
) -> dict:
    batch = dict(tokenizer.pad([feats[i] for i in idx], return_tensors="pt"))
    batch["labels"] = torch.tensor(labels[idx], dtype=torch.float32 if regression else torch.long)
    return batch


@dataclass
class FinetuneResult:
    status: str  # "ok" or "diverged"
    steps: list[dict] = field(default_factory=list)  # per optimizer step
    epochs: list[dict] = field(default_factory=list)  # per epoch: dev scores
    best_epoch: int | None = None
    dev: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    diverged_at: int | None = None
    seconds: float = 0.0  # wall time of the run, dev evaluations included
    eval_seconds: float = 0.0  # of which evaluating dev after each epoch
    train_examples: int = 0

    @property
    def examples_per_second(self) -> float:
        """Training throughput: examples seen per second of training (dev evaluations excluded)."""
        return self.train_examples / max(self.seconds - self.eval_seconds, 1e-9)


def make_accelerator(cfg: TrainConfig):
    """An `accelerate.Accelerator` on `cfg.device` (CPU: `cfg.num_threads` threads), with bf16
    autocast on CUDA."""
    from accelerate import Accelerator

    from isoprobe.core.device import pick_device

    device = pick_device(cfg.device, cfg.num_threads, key="finetune.train.device")
    return Accelerator(
        cpu=device.type == "cpu", mixed_precision="bf16" if device.type == "cuda" else "no"
    )


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, fused where this torch build supports it (several times faster on CPU, same maths)."""
    groups = _param_groups(model, cfg.weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr)


@torch.no_grad()
def predict(
    model: EncoderClassifier,
    tokenizer,
    feats,
    labels,
    batch_size: int,
    device,
    regression: bool,
    autocast,
) -> np.ndarray:
    """Outputs [N, C] (or [N] for regression) in row order."""
    model.eval()
    lengths = np.array([len(f["input_ids"]) for f in feats])
    order = np.argsort(-lengths, kind="stable")
    out = None
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size].tolist()
        batch = collate(tokenizer, feats, labels, idx, regression)
        batch.pop("labels")
        with autocast():
            logits, _, _ = model(**{k: v.to(device) for k, v in batch.items()})
        logits = logits.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(feats), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out[:, 0] if regression else out


def freeze_unused_pooler(model: EncoderClassifier) -> None:
    """A pooler the head does not read gets no gradient; mark it frozen (DDP requires every trainable
    parameter to be used; one-process results are unchanged since AdamW skips gradient-free ones)."""
    pooler = getattr(model.encoder, "pooler", None)
    if pooler is not None and model.pooling != "pooler":
        pooler.requires_grad_(False)


def _global_mean(acc, local_mean: torch.Tensor, share: float) -> float:
    """The loss over the global batch from each process's mean over its rows."""
    if acc.num_processes == 1:
        return float(local_mean)
    return float(acc.reduce(local_mean.float() * share, "sum")) / acc.num_processes


def _global_norm(acc, grad: torch.Tensor | None) -> float:
    """||d loss / d pooled|| over the global batch. Each process holds the rows of its share, scaled
    by P (its loss was weighted by share = P * n_local / n): divide the all-reduced norm by P."""
    if grad is None:
        return math.nan
    if acc.num_processes == 1:
        return float(grad.float().norm())
    sq = acc.reduce(grad.float().pow(2).sum(), "sum")
    return float(sq.sqrt()) / acc.num_processes


def finetune(
    model: EncoderClassifier,
    tokenizer,
    splits: dict[str, list[dict]],
    meta: dict,
    cfg: TrainConfig,
    seed: int,
    *,
    accelerator=None,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    on_step: Callable[[dict], None] | None = None,
    checkpoint: Checkpointer | None = None,
) -> FinetuneResult:
    """Train `model` on splits["train"], pick the best epoch on splits["dev"], score it on splits["test"].
    The model ends holding the best-dev weights and head statistics (a diverged run: the last ones,
    no best epoch, empty dev/test). `on_step` gets each finite step's record after its checkpoint;
    `checkpoint` saves and resumes (the caller ends it with `checkpoint.finish`)."""
    seed_everything(seed)
    acc = accelerator or make_accelerator(cfg)
    run = _setup(model, tokenizer, splits, meta, cfg, seed, acc, checkpoint)
    run.resume()
    run.train(progress, on_epoch, on_step)
    return run.result_of_best()


def _encode_splits(tokenizer, splits: dict[str, list[dict]], cfg: TrainConfig, world: int) -> dict:
    """Every split encoded (`encode_split`); a batch smaller than the processes is an error."""
    if cfg.batch_size < world:
        raise IsoprobeError(
            f"finetune.train.batch_size: {cfg.batch_size} is smaller than the {world} processes; "
            "each process needs at least one row of every batch"
        )
    return {s: encode_split(tokenizer, splits[s], cfg.max_length) for s in SPLITS}


def _ready_model(model: EncoderClassifier, targets: np.ndarray | None) -> None:
    """Freeze an unused pooler; a regression head (`targets` given) starts at the mean target."""
    freeze_unused_pooler(model)
    if targets is not None:  # a head that removes the [CLS] mean cannot supply it
        with torch.no_grad():
            model.head.linear.bias.fill_(float(np.mean(targets)))


def _setup(model, tokenizer, splits, meta, cfg, seed, acc, checkpoint) -> _Training:
    """Encoded splits, batch-order generator, the model readied for training (frozen unused pooler,
    a regression head's bias at the mean target), optimizer and schedule, all placed by `acc`."""
    from transformers import get_linear_schedule_with_warmup

    regression = meta["label_type"] == "regression"
    data = _encode_splits(tokenizer, splits, cfg, acc.num_processes)
    _, lengths, labels = data["train"]
    rng = np.random.default_rng(seed)
    min_size = max(2, acc.num_processes)
    steps_per_epoch = len(
        length_grouped_batches(lengths, cfg.batch_size, np.random.default_rng(0), min_size=min_size)
    )
    _ready_model(model, labels if regression else None)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = make_adamw(model, cfg)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * total_steps), total_steps
    )
    model, optimizer = acc.prepare(model, optimizer)
    return _Training(
        model=model, core=acc.unwrap_model(model), tokenizer=tokenizer, cfg=cfg, acc=acc, data=data,
        regression=regression, metric=meta["metric"], optimizer=optimizer, scheduler=scheduler,
        loss_fn=torch.nn.MSELoss() if regression else torch.nn.CrossEntropyLoss(), rng=rng,
        min_size=min_size, total_steps=total_steps, checkpoint=checkpoint,
    )  # fmt: skip


@dataclass
class _Training:
    """One fine-tuning run between its steps: what `_setup` built and where the run stands."""

    model: torch.nn.Module  # as prepared by Accelerate (wrapped under several processes)
    core: EncoderClassifier  # the same model unwrapped
    tokenizer: Any
    cfg: TrainConfig
    acc: Any
    data: dict[str, tuple[list[dict], np.ndarray, np.ndarray]]  # encoded splits
    regression: bool
    metric: str
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: torch.nn.Module
    rng: np.random.Generator  # the batch order of every epoch
    min_size: int
    total_steps: int
    checkpoint: Checkpointer | None
    result: FinetuneResult = field(default_factory=lambda: FinetuneResult(status="ok"))
    best_state: dict | None = None  # the best-dev weights and buffers so far (CPU)
    best: float = -math.inf  # their dev score
    step: int = 0  # optimizer steps done
    start_epoch: int = 1
    done: int = 0  # batches of start_epoch trained
    t0: float = 0.0  # the run's start (a resumed run: minus the seconds it had run)

    @property
    def key(self) -> str:
        return main_score(self.metric)

    def resume(self) -> None:
        """Restore a matching checkpoint, if any; start the clock."""
        ck = self.checkpoint
        resumed = ck.load(self.acc, self.core, self.optimizer, self.scheduler) if ck else None
        self.acc.wait_for_everyone()  # every process has read the checkpoint before it is replaced
        if resumed is not None:
            state, self.best_state = resumed
            self.result = FinetuneResult(**state["result"])
            self.step, self.start_epoch, self.done = state["step"], state["epoch"], state["batch"]
            self.rng.bit_generator.state = state["batch_order"]
        r = self.result
        self.best = r.epochs[r.best_epoch - 1][f"dev_{self.key}"] if r.best_epoch else -math.inf
        self.t0 = time.perf_counter() - r.seconds

    def save(self, epoch: int, batch: int, batch_order: dict) -> None:
        """Checkpoint: `batch` batches of `epoch` done, drawn from the generator at `batch_order`."""
        if self.checkpoint is not None:
            self.result.seconds = time.perf_counter() - self.t0
            where = {"step": self.step, "epoch": epoch, "batch": batch, "batch_order": batch_order}
            self.checkpoint.save(
                self.acc, self.core, self.optimizer, self.scheduler, self.best_state,
                {**where, "result": asdict(self.result)},
            )  # fmt: skip

    def train(self, progress: bool, on_epoch, on_step) -> None:
        """Every epoch left: train it, then score dev (until a step diverges)."""
        bar = tqdm(
            total=self.total_steps, initial=self.step, desc="finetune", unit="step",
            disable=not progress, mininterval=2,
        )  # fmt: skip
        for epoch in range(self.start_epoch, self.cfg.epochs + 1):
            self.train_epoch(epoch, bar, on_step)
            self.done = 0
            if self.result.status != "ok":
                break
            self.end_epoch(epoch, on_epoch)
        bar.close()

    def train_epoch(self, epoch: int, bar, on_step) -> None:
        """The batches of `epoch` (from batch `done` of a resumed one); stops at a diverged step."""
        self.model.train()
        batch_order = self.rng.bit_generator.state
        lengths = self.data["train"][1]
        batches = length_grouped_batches(
            lengths, self.cfg.batch_size, self.rng, min_size=self.min_size
        )
        for pos in range(self.done, len(batches)):
            rec = self.train_step(epoch, batches[pos])
            if rec is None:
                break
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", refresh=False)
            every = self.checkpoint.every_steps if self.checkpoint else 0
            if every and self.step % every == 0 and pos + 1 < len(batches):
                self.save(epoch, pos + 1, batch_order)
            if on_step:
                on_step(rec)

    def train_step(self, epoch: int, idx: list[int]) -> dict | None:
        """One optimizer step on the global batch `idx` (this process trains on its share); returns
        its record, or None when its loss or gradient norm is not finite: the run is marked diverged
        (the record kept), with no update."""
        loss, pooled, share = self.forward_backward(idx)
        self.step += 1
        rec = self.record(epoch, loss, pooled, share)
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.cfg.grad_clip if self.cfg.grad_clip else float("inf")
        rec["grad_total"] = float(self.acc.clip_grad_norm_(params, clip))
        self.result.steps.append(rec)
        self.result.train_examples += len(idx)
        if not all(math.isfinite(rec[k]) for k in ("loss", "grad_total")):
            self.result.status, self.result.diverged_at = "diverged", self.step
            return None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return rec

    def forward_backward(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Loss and pooled [CLS] (its gradient kept) of this process's rows of `idx`, backpropagated
        weighted by its share of the batch; returns (loss, pooled, share)."""
        world, rank = self.acc.num_processes, self.acc.process_index
        local = idx[rank::world]
        feats, _, labels = self.data["train"]
        batch = {
            k: v.to(self.acc.device)
            for k, v in collate(self.tokenizer, feats, labels, local, self.regression).items()
        }
        y = batch.pop("labels")
        with self.acc.autocast():
            logits, pooled, _ = self.model(**batch)
            pooled.retain_grad()
            out = logits.float()
            loss = self.loss_fn(out[:, 0], y) if self.regression else self.loss_fn(out, y)
        share = len(local) * world / len(idx)  # 1.0 with one process
        self.acc.backward(loss * share if world > 1 else loss)
        return loss, pooled, share

    def record(self, epoch: int, loss: torch.Tensor, pooled: torch.Tensor, share: float) -> dict:
        """The step's loss, learning rate and gradient norms (but the total, taken at clipping)."""
        return {
            "step": self.step,
            "epoch": epoch,
            "loss": _global_mean(self.acc, loss.detach(), share),
            "lr": float(self.scheduler.get_last_lr()[0]),
            "grad_cls": _global_norm(self.acc, pooled.grad),
            "grad_head": float(self.core.head.linear.weight.grad.float().norm()),
        }

    def scores(self, split: str) -> dict:
        """Task scores of the model as it is on an encoded split."""
        feats, _, labels = self.data[split]
        out = predict(
            self.core, self.tokenizer, feats, labels, self.cfg.eval_batch_size, self.acc.device,
            self.regression, self.acc.autocast,
        )  # fmt: skip
        return task_scores(self.metric, labels, out)

    def end_epoch(self, epoch: int, on_epoch) -> None:
        """Score dev, keep the weights if best so far, checkpoint the start of the next epoch."""
        t_eval = time.perf_counter()
        dev_scores = self.scores("dev")
        self.result.eval_seconds += time.perf_counter() - t_eval
        ep = {"epoch": epoch, "step": self.step, **{f"dev_{k}": v for k, v in dev_scores.items()}}
        self.result.epochs.append(ep)
        if on_epoch:
            on_epoch(ep)
        if dev_scores[self.key] > self.best:
            self.best, self.result.best_epoch = dev_scores[self.key], epoch
            state = self.core.state_dict()
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in state.items()})
        self.save(epoch + 1, 0, self.rng.bit_generator.state)

    def result_of_best(self) -> FinetuneResult:
        """Stop the clock; load the best-dev weights, their dev scores and score them on test (a
        diverged run: no best epoch, nothing scored)."""
        r = self.result
        r.seconds = time.perf_counter() - self.t0
        if r.status != "ok":
            r.best_epoch = None  # no weights of a diverged run are kept or scored
        elif self.best_state is not None:
            self.core.load_state_dict(self.best_state)
            best_epoch = r.epochs[r.best_epoch - 1]  # the dev scores of the weights kept
            r.dev = {
                k.removeprefix("dev_"): v for k, v in best_epoch.items() if k.startswith("dev_")
            }
            r.test = self.scores("test")
        return r


def gradient_summary(steps: list[dict]) -> dict[str, dict[str, float]]:
    """max, p99 and median of each gradient norm over the steps (finite values)."""
    out = {}
    for k in ("grad_cls", "grad_head", "grad_total"):
        v = np.array([s[k] for s in steps], dtype=float)
        v = v[np.isfinite(v)]
        out[k] = (
            {
                "max": float(v.max()),
                "p99": float(np.percentile(v, 99)),
                "median": float(np.median(v)),
            }
            if v.size
            else {"max": None, "p99": None, "median": None}
        )
    return out
