"""Stage 5, train: instruction-tune one model on one packed mixture with DeepSpeed (ZeRO-3 default).

Run under ``torchrun``, the ``deepspeed`` launcher or ``srun`` (:mod:`flanpipe.core.train.distributed` reads
the ranks); the same code runs on a laptop CPU (``DS_ACCELERATOR=cpu``, gloo) and on GPU nodes.

One step, top to bottom:

1. the step's packed rows are a pure function of (seed, step): each epoch is a seeded permutation of
   the mixture's rows, consumed in order; rank ``r`` takes its slice, in micro-batches;
   a background thread reads the next step's rows while this one computes;
2. every micro-batch: forward with the segment mask (:class:`~flanpipe.core.model.causal.PackedCausalLM`,
   which projects onto the vocabulary only where a target is predicted; on ``encoder_decoder`` rows a
   T5-family model's :class:`~flanpipe.core.model.seq2seq.PackedSeq2SeqLM`, segments isolated in the
   encoder, the decoder and the cross-attention), the summed target-token
   cross-entropy, divided by the number of target tokens in the whole step (all ranks, all
   micro-batches) and multiplied by ranks x micro-batches, which DeepSpeed divides by again (it
   averages over both), backward: the step's gradient is the same for any split of its rows (ranks,
   accumulation, micro-batch rows);
3. DeepSpeed reduces the gradients and the optimizer steps at the schedule's learning rate (constant
   after an optional linear warm-up): Adafactor factors and clips per original tensor, whatever the
   ZeRO stage (:mod:`flanpipe.core.train.optim`);
4. every ``checkpoint_every`` steps (and at the end) a DeepSpeed checkpoint; a restarted run loads
   the latest and continues with the same data order, so its losses are the ones an uninterrupted
   run has.

The model is a ``transformers`` causal LM (or, on ``encoder_decoder`` rows, a T5 or mT5) built or
loaded by :mod:`flanpipe.core.model.checkpoint` (under
ZeRO-3, partitioned as it loads). At the end, ``models/{mixture}/hf/`` is its checkpoint
(safetensors shards, ``config.json``, the tokenizer) that ``transformers`` loads with no flanpipe
code; ``metrics.csv``, ``tensorboard/`` and
``loss.png`` hold the curves, ``run.json`` the run's manifest with the DeepSpeed config it used.

With ``train.adapter.kind: lora`` (:mod:`flanpipe.core.model.adapter`), ``peft``'s LoRA layers are added
to the loaded (under ZeRO-3: partitioned) model, every base weight frozen, and only the adapters
reach the optimizer; ``hf/`` is then the merged model and ``adapter/`` the adapter as ``peft``
saves it.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import os
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flanpipe.core.config import EvaluateSlice, TrainConfig, TrainSlice
from flanpipe.core.config.checkpoints import is_encoder_decoder
from flanpipe.core.eval.ranking import Probe, ProbeScore, headline_variant
from flanpipe.core.io import atomic_path, code_version, sha256_file, utc_now, write_json_atomic
from flanpipe.core.model.adapter import add_lora, trainable_count
from flanpipe.core.model.card import write_card
from flanpipe.core.model.causal import ATTENTION, PackedCausalLM, predicted
from flanpipe.core.model.checkpoint import build_model, parameter_count, save_adapter, save_checkpoint
from flanpipe.core.model.precision import Precision
from flanpipe.core.model.precision import resolve as resolve_precision
from flanpipe.core.model.seq2seq import PackedSeq2SeqLM
from flanpipe.core.text.keys import derive_seed
from flanpipe.core.tokens.formats import Format
from flanpipe.core.tokens.shards import PackedShards, verify_shards
from flanpipe.core.tokens.tokenizers import load_tokenizer
from flanpipe.core.train.distributed import DistEnv, disable_cpu_shm_op, dist_env, rank_nodes
from flanpipe.core.train.guards import NonFiniteStep, check_finite, step_examples
from flanpipe.core.train.launch import (
    LOCK_NAME,
    completed_checkpoint,
    die_with_parent,
    mark_complete,
    refresh_lock,
    run_lock,
)
from flanpipe.core.train.optim import (
    adam_state_bytes,
    attach_zero_layout,
    build_optimizer,
    constant_with_warmup,
    optimized_parameters,
    optimizer_state_bytes,
)
from flanpipe.core.train.trackers import Trackers, curve_rows
from flanpipe.core.versions import STAGE_VERSIONS

# 2: Adafactor per tensor under ZeRO, no global norm clip; 3: transformers models; 4: flanpipe.json
# records the training format; 5: train.adapter (LoRA), run.json's trainable_parameters; 6: hf/README.md
# (the model card), run.json's nonfinite_steps_skipped, trackers.json with mlflow or wandb; 7: flanpipe.json
# names the format `format` (was `layout`)
STAGE_VERSION = STAGE_VERSIONS["train"]
BATCH_FIELDS = {  # the model's int64 inputs per model kind (the wrappers' forward arguments)
    "decoder_only": ("tokens", "segment_ids", "positions", "loss_mask"),
    "encoder_decoder": ("inputs", "inputs_segment_ids", "inputs_positions", "targets", "targets_segment_ids",
                        "targets_positions", "loss_mask"),
}
log = logging.getLogger(__name__)

FAIL_AT_STEP = "FLANPIPE_FAIL_AT_STEP"  # tests: rank 0 dies hard before this step, as a killed job does


@dataclass(frozen=True)
class BatchPlan:
    """How a step's rows are split: ``rows_per_step = micro_batch_rows * world_size * accumulation``."""

    row_tokens: int
    micro_batch_rows: int
    world_size: int
    accumulation: int

    @property
    def rows_per_step(self) -> int:
        return self.micro_batch_rows * self.world_size * self.accumulation

    @property
    def tokens_per_step(self) -> int:
        return self.rows_per_step * self.row_tokens

    @classmethod
    def from_tokens(cls, tokens_per_batch: int, row_tokens: int, micro_batch_rows: int,
                    world_size: int) -> BatchPlan:
        """The plan nearest to ``tokens_per_batch`` (at least one micro-batch per rank).

        >>> BatchPlan.from_tokens(8192, 1280, 1, 2).rows_per_step
        6
        >>> BatchPlan.from_tokens(8192, 1024, 2, 2).accumulation
        2
        """
        per_pass = micro_batch_rows * world_size
        accumulation = max(1, round(tokens_per_batch / row_tokens / per_pass))
        return cls(row_tokens, micro_batch_rows, world_size, accumulation)


def step_rows(step: int, plan: BatchPlan, n_rows: int, seed: int) -> np.ndarray:
    """The global row indices of (0-based) ``step``, in order: rank ``r``, micro-batch ``m`` takes
    ``rows[(m * world + r) * micro : ... + micro]``. Epoch ``e`` is a permutation seeded by
    ``(seed, e)``, so any step's rows can be computed without replaying earlier steps.

    >>> plan = BatchPlan(row_tokens=8, micro_batch_rows=1, world_size=2, accumulation=2)
    >>> a = np.concatenate([step_rows(s, plan, 6, 0) for s in range(3)])
    >>> sorted(a[:6].tolist()) == list(range(6)) and sorted(a[6:].tolist()) == list(range(6))
    True
    """
    r = plan.rows_per_step
    flat = np.arange(step * r, (step + 1) * r)
    epochs, within = np.divmod(flat, n_rows)
    out = np.empty(r, np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng(derive_seed(seed, f"train/epoch{e}")).permutation(n_rows)
        sel = epochs == e
        out[sel] = perm[within[sel]]
    return out


def deepspeed_config(tcfg: TrainConfig, plan: BatchPlan, bf16: bool) -> dict:
    """The DeepSpeed JSON, generated from the typed config (saved with the run)."""
    return {
        "train_batch_size": plan.rows_per_step,
        "train_micro_batch_size_per_gpu": plan.micro_batch_rows,
        "gradient_accumulation_steps": plan.accumulation,
        "gradient_clipping": tcfg.grad_clip,
        "zero_optimization": {"stage": tcfg.zero_stage, "overlap_comm": False, "contiguous_gradients": True,
                              "stage3_gather_16bit_weights_on_model_save": False},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _device(dist: DistEnv) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def to_batch(rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """Packed rows (:meth:`PackedShards.take`, segment ids, positions and loss masks rebuilt) as the
    model's int64 inputs on ``device``, named as the wrapper's ``forward`` arguments."""
    model_kind = "decoder_only" if "tokens" in rows.dtype.names else "encoder_decoder"
    return {name: torch.from_numpy(np.ascontiguousarray(rows[name]).astype(np.int64)).to(device)
            for name in BATCH_FIELDS[model_kind]}


def target_count(batch: dict[str, torch.Tensor]) -> int:
    """The target tokens a micro-batch's loss counts: predicted targets of decoder-only rows
    (:func:`~flanpipe.core.model.causal.predicted`), every marked target of encoder-decoder rows.

    >>> segments = torch.tensor([[1, 1, 2, 0]])
    >>> target_count({"targets_segment_ids": segments, "loss_mask": (segments > 0).long()})
    3
    """
    if "tokens" in batch:
        return int(predicted(batch["segment_ids"], batch["loss_mask"]).sum())
    return int((batch["loss_mask"].bool() & (batch["targets_segment_ids"] > 0)).sum())


def row_width(data: PackedShards) -> int:
    """Token slots of one packed row: ``Li + Lt`` for either model kind."""
    return sum(data.stored_dtype[name].shape[0] for name in data.stored_dtype.names)


def packed_model(model: torch.nn.Module, model_kind: str, packed_dir: str | Path) -> torch.nn.Module:
    """The training wrapper of ``model`` for rows packed for ``model_kind``; a model of another kind
    is refused, naming both keys."""
    seq2seq = is_encoder_decoder(model.config)
    if seq2seq != (model_kind == "encoder_decoder"):
        kind, wanted = ("an encoder-decoder", "encoder_decoder") if seq2seq else ("a decoder-only model",
                                                                                   "decoder_only")
        raise ValueError(f"{packed_dir}: tokenize.model_kind {model_kind!r}, but train.model "
                         f"({model.config.model_type}) is {kind}; allowed: tokenize.model_kind {wanted}")
    return PackedSeq2SeqLM(model) if model_kind == "encoder_decoder" else PackedCausalLM(model)


@dataclass(frozen=True)
class StepBatches:
    """This rank's micro-batches of one step and their target-token count."""

    batches: list[dict[str, torch.Tensor]]
    local_targets: int


def load_step(data: PackedShards, plan: BatchPlan, step: int, seed: int, rank: int,
              device: torch.device) -> StepBatches:
    """Rank ``rank``'s micro-batches of ``step`` (see :func:`step_rows`), read and on ``device``
    (in one :meth:`PackedShards.take`, which rebuilds their segment ids, positions and loss masks)."""
    rows = step_rows(step, plan, len(data), seed)
    mine = data.take(rows.reshape(plan.accumulation, plan.world_size, plan.micro_batch_rows)[:, rank].ravel())
    micro = plan.micro_batch_rows
    batches = [to_batch(mine[m * micro:(m + 1) * micro], device) for m in range(plan.accumulation)]
    return StepBatches(batches, sum(target_count(b) for b in batches))


def train(mixture: str, packed_dir: str | Path, tokenizer: str | Path | None, out_dir: str | Path,
          cfg: TrainSlice, raw_dir: str | Path = "data/raw") -> dict:
    """Train on the packed mixture; returns the run manifest (on every rank).

    With ``train.eval_every``, the curve's eval splits are ``raw_dir/<dataset>/eval.parquet``.

    A rank that torchrun started dies with torchrun (:func:`~flanpipe.core.train.launch.die_with_parent`),
    and rank 0 holds ``out_dir``'s lock for the run (:func:`~flanpipe.core.train.launch.run_lock`), so a
    second run refuses to start while this one lives.
    """
    dist = dist_env()
    if dist.launcher == "torchrun":
        die_with_parent()
    with run_lock(out_dir) if dist.rank == 0 else contextlib.nullcontext():
        return _train(mixture, packed_dir, tokenizer, out_dir, cfg, raw_dir)


@dataclass(frozen=True)
class Setup:
    """What a run is set up with before the model exists: the ranks, the device, the packed rows,
    the batch plan and the precision, attention and DeepSpeed config they choose."""

    dist: DistEnv
    device: torch.device
    on_gpu: bool
    nodes: list
    out_dir: Path
    data: PackedShards
    verify_s: float
    plan: BatchPlan
    precision: Precision
    attention: str
    ds_cfg: dict

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def bf16(self) -> bool:
        return self.precision.name == "bf16"

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.float32


@dataclass(frozen=True)
class Trainer:
    """The model (LoRA: ``peft_model`` wraps it), its parameter counts, and the DeepSpeed engine that
    trains its packed wrapper with the optimizer and the learning-rate schedule."""

    model: torch.nn.Module
    peft_model: torch.nn.Module | None
    parameters: int
    trainable: int
    engine: object  # deepspeed.DeepSpeedEngine
    schedule: torch.optim.lr_scheduler.LambdaLR
    partitions: object  # attach_zero_layout's record of the ZeRO partitions


@dataclass(frozen=True)
class StepResult:
    """One optimizer step: the mean target-token loss over all ranks, the targets it counts, the
    learning rate the step used and the gradient norm (None where DeepSpeed had no need of it)."""

    loss: float
    total_targets: float
    lr: float
    grad_norm: float | None


def _train(mixture: str, packed_dir: str | Path, tokenizer: str | Path | None, out_dir: str | Path,
           cfg: TrainSlice, raw_dir: str | Path) -> dict:
    """The run, top to bottom: set up, build the engine, resume, step (reading the next step's rows
    while this one computes), score the curve (``train.eval_every``), checkpoint, then the exported
    model and the manifest."""
    tcfg = cfg.train
    setup = setup_run(packed_dir, out_dir, tcfg)
    trainer = build_engine(setup, cfg)
    start, skipped = resume(trainer.engine, setup.ckpt_dir)  # skipped: steps of non-finite loss skipped
    if setup.is_main:
        _log_start(mixture, setup, trainer, tcfg)
    curve = Curve.of(cfg, setup, tokenizer, raw_dir, mixture)
    params = cfg.model_dump(mode="json", exclude=None if curve else {"evaluate", "heldout", "validation"})
    metrics = (Trackers(setup.out_dir, start, tcfg, mixture, params, curve=curve is not None)
               if setup.is_main else None)
    if curve is not None:
        curve.resume(setup, start)
        if start == 0:  # the base, before any update
            curve.point(trainer, setup, 0, metrics)
    fail_at = int(os.environ.get(FAIL_AT_STEP, 0))
    t0 = time.perf_counter()
    tokens_seen = 0
    rank = setup.dist.rank
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flanpipe-prefetch")
    read = functools.partial(load_step, setup.data, setup.plan, seed=cfg.seed, rank=rank, device=setup.device)
    next_batches = loader.submit(read, start)
    for step in range(start, tcfg.steps):
        if fail_at and step + 1 == fail_at and setup.is_main:
            os._exit(17)
        t_step = time.perf_counter()
        if trainer.peft_model is not None and tcfg.adapter.dropout > 0:  # LoRA: the same masks on resume
            torch.manual_seed(derive_seed(cfg.seed, f"train/dropout/step{step}/rank{rank}"))
        current = next_batches.result()
        if step + 1 < tcfg.steps:  # read the next step's rows while this one computes
            next_batches = loader.submit(read, step + 1)
        guard = _Guard(step + 1, packed_dir, setup.plan, cfg.seed, skipped, tcfg.max_nonfinite_steps)
        result = train_step(trainer, current, setup, guard)
        if result is None:  # a non-finite loss, skipped (train.max_nonfinite_steps)
            if setup.is_main:
                refresh_lock(setup.out_dir / LOCK_NAME)
            continue
        tokens_seen += setup.plan.tokens_per_step
        done = step + 1
        if setup.is_main and (done % tcfg.log_every == 0 or done == tcfg.steps):
            metrics.write(_metrics_row(done, result, setup.plan, t_step, t0))
        if curve is not None and (done % tcfg.eval_every == 0 or done == tcfg.steps):
            curve.point(trainer, setup, done, metrics)  # (and a new best saved: before the checkpoint)
        if setup.is_main:
            refresh_lock(setup.out_dir / LOCK_NAME)
        if done % tcfg.checkpoint_every == 0 or done == tcfg.steps:
            save_step(trainer.engine, setup, done, tcfg.keep_checkpoints, skipped)
    loader.shutdown()
    elapsed = time.perf_counter() - t0
    manifest = run_manifest(mixture, packed_dir, cfg, setup, trainer, start, skipped,
                            tokens_seen / elapsed if elapsed > 0 else None)
    if curve is not None:  # (without a curve, run.json is as before it existed)
        manifest |= {"curve": curve.record(), "selected": curve.selected(tcfg)}
    if curve is not None and tcfg.select == "best_val":
        curve.export_best(setup)
    elif tokenizer is not None:  # (benchmarks on synthetic rows have no tokenizer to export)
        export_model(trainer, tokenizer, mixture, setup, tcfg)
    if setup.is_main:
        plot_loss(setup.out_dir / "metrics.csv", setup.out_dir / "loss.png", mixture)
        write_json_atomic(setup.out_dir / "run.json", manifest)
        if tokenizer is not None:
            write_card(setup.out_dir)  # hf/README.md, from run.json and the mixture's manifest
        metrics.close([setup.out_dir / "run.json", setup.out_dir / "loss.png"])
    torch.distributed.barrier()
    return manifest


def setup_run(packed_dir: str | Path, out_dir: str | Path, tcfg: TrainConfig) -> Setup:
    """The process group (DeepSpeed's, on gloo for CPU or nccl for GPU), the device, the verified
    packed rows and the batch plan, precision, attention and DeepSpeed config they choose."""
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    dist = dist_env()
    dist.export()
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        disable_cpu_shm_op()
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.local_world_size))
    import deepspeed

    device = _device(dist)
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", auto_mpi_discovery=False)
    nodes = rank_nodes(dist)  # where each rank runs (every rank takes part)

    verify_s = verify_shards(packed_dir)  # every rank: a mismatch stops each before the first step
    log.info("%s: packed shards match the pack manifest (%.2f s to check)", packed_dir, verify_s)
    data = PackedShards(packed_dir)
    plan = BatchPlan.from_tokens(tcfg.tokens_per_batch, row_width(data), tcfg.micro_batch_rows,
                                 dist.world_size)
    precision = resolve_precision(tcfg.precision, "cuda" if on_gpu else "cpu")
    # (encoder-decoders: sdpa masks everywhere; their FlexAttention path is untested here)
    flex = on_gpu and data.model_kind == "decoder_only"
    attention = tcfg.attention if tcfg.attention != "auto" else ("flex" if flex else "sdpa")
    return Setup(dist, device, on_gpu, nodes, Path(out_dir), data, verify_s, plan, precision, attention,
                 deepspeed_config(tcfg, plan, precision.name == "bf16"))


def build_engine(setup: Setup, cfg: TrainSlice) -> Trainer:
    """The model (the same initial weights on every rank; LoRA: the base frozen, adapters added),
    the optimizer over the weights that train, and the DeepSpeed engine around the packed wrapper."""
    import deepspeed

    tcfg = cfg.train
    torch.manual_seed(derive_seed(cfg.seed, "train/init"))  # the same initial weights on every rank
    tokenizer_info = setup.data.manifest["tokenizer"]
    model = build_model(tcfg.model, tokenizer_info["vocab_size"], setup.plan.row_tokens,
                        special_ids=tokenizer_info["special_ids"], dtype=setup.dtype,
                        attention=ATTENTION[setup.attention],
                        zero3=setup.ds_cfg if tcfg.zero_stage == 3 else None)
    peft_model = None
    if tcfg.adapter.kind == "lora":  # the base frozen (partitioned already under ZeRO-3), LoRA layers added
        peft_model = add_lora(model, tcfg.adapter, derive_seed(cfg.seed, "train/adapter"),
                              adapter_base_path(tcfg))
    model.train()
    parameters = parameter_count(model)
    trainable = trainable_count(model)
    torch.manual_seed(derive_seed(cfg.seed, f"train/rank{setup.dist.rank}"))
    # only the weights that train reach the optimizer (LoRA: the adapters; else every weight)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(tcfg.optimizer, trained, tcfg.lr, tcfg.weight_decay, tcfg.adam_betas,
                                tcfg.adafactor_decay_rate, tcfg.adafactor_clip_threshold,
                                tcfg.adafactor_beta1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, constant_with_warmup(tcfg.warmup_steps))
    wrapped = packed_model(model, setup.data.model_kind, setup.data.directory)
    engine, _, _, _ = deepspeed.initialize(model=wrapped, optimizer=optimizer, lr_scheduler=schedule,
                                           config=setup.ds_cfg)
    partitions = attach_zero_layout(engine.optimizer)  # Adafactor: which tensor each flat element is
    return Trainer(model, peft_model, parameters, trainable, engine, schedule, partitions)


def resume(engine, ckpt_dir: Path) -> tuple[int, list[int]]:
    """The step to start at and the steps of non-finite loss skipped so far: the latest completed
    checkpoint's, loaded into ``engine`` (never a save that was killed half way), or (0, [])."""
    found = completed_checkpoint(ckpt_dir)
    if found is None:
        return 0, []
    _, client = engine.load_checkpoint(str(ckpt_dir), tag=found[0])
    start = int(client["step"])
    log.info("resuming from %s at step %d", ckpt_dir / found[0], start)
    return start, list(client.get("nonfinite_steps", []))


def train_step(trainer: Trainer, current: StepBatches, setup: Setup, guard: _Guard) -> StepResult | None:
    """One optimizer step over this rank's micro-batches: forward, backward at the step's scale,
    DeepSpeed's step (which applies the update after the last micro-batch); ``guard`` stops on a
    non-finite loss or gradient norm before the update, or (``train.max_nonfinite_steps``) skips
    the step: None."""
    # the loss is a mean over every target token of the step, on all ranks; DeepSpeed divides
    # the gradient by ranks x accumulation (its average), which the scale puts back
    total_targets = _all_reduce(torch.tensor(float(current.local_targets), device=setup.device))
    scale = setup.dist.world_size * setup.plan.accumulation / max(total_targets, 1.0)
    loss_total = torch.zeros((), device=setup.device)
    lr = trainer.schedule.get_last_lr()[0]
    if guard.allowed and guard.skip_step(trainer.engine, current, total_targets):
        return None
    for m, batch in enumerate(current.batches):
        nll = trainer.engine(**batch)
        summed = nll.sum()
        trainer.engine.backward(summed * scale)
        loss_total += summed.detach().float()
        if m == len(current.batches) - 1:  # the update is the last micro-batch's step: not on a bad loss
            loss = _all_reduce(loss_total) / max(total_targets, 1.0)
            guard.check(loss, None)
        trainer.engine.step()
    grad_norm = trainer.engine.get_global_grad_norm()  # None where DeepSpeed had no need of it
    guard.check(None, grad_norm)  # (after the update: before any checkpoint of it)
    return StepResult(loss, total_targets, lr, grad_norm)


def save_step(engine, setup: Setup, done: int, keep: int, skipped: list[int]) -> None:
    """A DeepSpeed checkpoint after step ``done`` (with the steps skipped so far), marked complete
    once every rank's part is written; only the latest ``keep`` are kept."""
    tag = f"step{done:07d}"
    state = {"step": done, "nonfinite_steps": skipped}
    engine.save_checkpoint(str(setup.ckpt_dir), tag=tag, client_state=state)
    torch.distributed.barrier()  # every rank's part is written
    if setup.is_main:
        mark_complete(setup.ckpt_dir, tag, done)
        _prune_checkpoints(setup.ckpt_dir, keep)


def _log_start(mixture: str, setup: Setup, trainer: Trainer, tcfg: TrainConfig) -> None:
    setup.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(setup.out_dir / "ds_config.json", setup.ds_cfg)
    plan = setup.plan
    log.info("%s: %s parameters (%s train), %d ranks x %d rows x %d accumulation = %d rows (%d tokens) "
             "per step, %s, %s attention, ZeRO-%d", mixture, f"{trainer.parameters:,}",
             f"{trainer.trainable:,}", setup.dist.world_size, plan.micro_batch_rows, plan.accumulation,
             plan.rows_per_step, plan.tokens_per_step, f"{setup.precision.name} ({setup.precision.reason})",
             setup.attention, tcfg.zero_stage)


def _metrics_row(done: int, result: StepResult, plan: BatchPlan, t_step: float, t0: float) -> dict:
    elapsed = time.perf_counter() - t0
    grad_norm = result.grad_norm
    return {"step": done, "loss": result.loss, "lr": result.lr,
            "grad_norm": float("nan") if grad_norm is None else float(grad_norm),
            "target_tokens": int(result.total_targets), "tokens": plan.tokens_per_step,
            "tokens_per_s": plan.tokens_per_step / (time.perf_counter() - t_step),
            "elapsed_s": elapsed}


def run_manifest(mixture: str, packed_dir: str | Path, cfg: TrainSlice, setup: Setup, trainer: Trainer,
                 start: int, skipped: list[int], tokens_per_s: float | None) -> dict:
    """``run.json``: what was trained, on what, how (the DeepSpeed config included) and how fast."""
    tcfg, plan, optimizer = cfg.train, setup.plan, trainer.engine.optimizer
    return {
        "stage": "train", "stage_version": STAGE_VERSION, "mixture": mixture, "seed": cfg.seed,
        "model": trainer.model.config.to_dict(), "parameters": trainer.parameters,
        "trainable_parameters": trainer.trainable,
        "adapter": tcfg.adapter.model_dump(mode="json"), "world_size": setup.dist.world_size,
        "nodes": setup.nodes,
        "launcher": setup.dist.launcher, "device": "cuda" if setup.on_gpu else "cpu",
        **setup.precision.record(), "attention": setup.attention,
        "batch": {"rows_per_step": plan.rows_per_step, "tokens_per_step": plan.tokens_per_step,
                  "micro_batch_rows": plan.micro_batch_rows, "accumulation": plan.accumulation},
        "steps": tcfg.steps, "resumed_from_step": start, "nonfinite_steps_skipped": skipped,
        "deepspeed": setup.ds_cfg,
        "optimizer": tcfg.optimizer, "optimizer_partitions": trainer.partitions,
        "optimized_parameters": optimized_parameters(optimizer),
        "optimizer_state_bytes_rank0": optimizer_state_bytes(optimizer),
        "adamw_state_bytes_rank0": adam_state_bytes(optimizer),
        "peak_memory_bytes_rank0": torch.cuda.max_memory_allocated(setup.device) if setup.on_gpu else None,
        "tokens_per_s_this_run": tokens_per_s,
        "packed": {"path": str(packed_dir), "rows": len(setup.data), "verified_s": setup.verify_s,
                   "manifest_sha256": sha256_file(Path(packed_dir) / "manifest.json")},
        "config": {"train": tcfg.model_dump(mode="json")}, "code": code_version("train", STAGE_VERSION),
        "created_at": utc_now(),
    }


def export_model(trainer: Trainer, tokenizer: str | Path, mixture: str, setup: Setup,
                 tcfg: TrainConfig, out_dir: Path | None = None, step: int | None = None) -> None:
    """``hf/``, the trained model as ``transformers`` loads it (LoRA: merged), and with LoRA
    ``adapter/`` as ``peft`` saves it (a new model's frozen base in ``adapter/base``), in ``out_dir``
    (default: the run's folder); ``step``: the step of the weights (``train.select: best_val``), else
    the last."""
    out_dir = out_dir or setup.out_dir
    record = {**trained_format(setup.data.manifest), "mixture": mixture, "steps": tcfg.steps,
              "stage_version": STAGE_VERSION, **({"step": step} if step is not None else {})}
    save_checkpoint(trainer.model, tokenizer, out_dir / "hf", dtype=setup.dtype, record=record)  # (merged)
    if trainer.peft_model is not None:
        save_adapter(trainer.peft_model, tokenizer, out_dir / "adapter", record=record | {"adapter": "lora"})
        if tcfg.model.source == "config":  # a new model's frozen base goes with its adapter
            save_checkpoint(trainer.model, tokenizer, out_dir / "adapter" / "base", dtype=setup.dtype,
                            merge_adapter=False)
    elif setup.is_main and (out_dir / "adapter").exists():  # an earlier LoRA run's adapter is not this one's
        shutil.rmtree(out_dir / "adapter")


CURVE_SCORING = ("every rank scores the whole slice, in lockstep (under ZeRO-3 each forward gathers "
                 "a layer's parameters from every rank), in eval mode without gradients; rank 0 logs")


@dataclass
class Curve:
    """Held-out accuracy over training (``train.eval_every``) and the checkpoint it may choose
    (``train.select: best_val``).

    At step 0 (the base), every ``eval_every`` steps and at the last, the model is scored on a fixed
    slice of each held-out dataset (:class:`~flanpipe.core.eval.ranking.Probe`: the rows, templates,
    prompts and format of ``flanpipe evaluate`` with ``evaluate.max_examples: train.eval_rows``) and,
    with ``best_val``, of each validation dataset (the training clusters' eval splits). Every rank
    scores every row: under ZeRO-3 a forward gathers each layer from all ranks, so the ranks must
    run the same forwards; they get the same scores, and rank 0 writes them (``metrics.csv``,
    TensorBoard). A new best mean validation score saves that step's model in ``best/`` (before the
    step's checkpoint, so a resumed run finds it), which the export then makes ``hf/``. A held-out
    dataset never chooses: the config refuses one as a validation dataset."""

    evaluate: EvaluateSlice
    fmt: Format
    probes: dict[str, list[Probe]]  # "heldout" and "validation": each dataset's slice
    tokenizer: str | Path
    mixture: str
    tcfg: TrainConfig
    best: tuple[int, float] | None = None  # (step, mean validation score)
    seconds: float = 0.0
    points: int = 0

    @classmethod
    def of(cls, cfg: TrainSlice, setup: Setup, tokenizer: str | Path | None, raw_dir: str | Path,
           mixture: str) -> Curve | None:
        """The run's curve, its slices rendered and encoded once; None without ``train.eval_every``."""
        if cfg.train.eval_every is None or tokenizer is None:
            return None
        if cfg.evaluate is None:
            raise ValueError("train.eval_every: the run's slice has no evaluate slice to score with "
                             "(build it with Plan.slice('train', mixture=...) or TrainSlice.of)")
        trained = trained_format(setup.data.manifest)
        fmt = Format.of(load_tokenizer(tokenizer), cfg.evaluate, 1, trained["format"], trained["separator"])
        rows = cfg.train.eval_rows
        probes = {split: [Probe.of(d, Path(raw_dir) / d / "eval.parquet", rows, cfg.evaluate, fmt)
                          for d in names]
                  for split, names in (("heldout", cfg.heldout), ("validation", cfg.validation)) if names}
        if not probes.get("heldout"):
            log.warning("train.eval_every: mixture %s has no held-out dataset with options to rank; the "
                        "curve scores %s", mixture, "its validation datasets only" if probes else "nothing")
        return cls(cfg.evaluate, fmt, probes, tokenizer, mixture, cfg.train)

    def resume(self, setup: Setup, start: int) -> None:
        """The best validation score of the steps up to ``start``, from ``metrics.csv`` (rank 0's,
        already cut to them)."""
        found = [None]
        if setup.is_main and start:
            found = [best_validation(curve_rows(setup.out_dir / "metrics.csv"))]
        torch.distributed.broadcast_object_list(found, src=0)
        self.best = found[0]

    def point(self, trainer: Trainer, setup: Setup, step: int, metrics: Trackers | None) -> None:
        """Score the slices after ``step`` steps, log them, and with ``best_val`` keep a new best."""
        t0 = time.perf_counter()
        module = trainer.engine.module
        module.eval()
        with torch.no_grad():
            scores = {split: {p.dataset: p.score(trainer.model, self.fmt, self.evaluate) for p in probes}
                      for split, probes in self.probes.items()}
        module.train()
        rows = [curve_row(split, dataset, score) for split, found in scores.items()
                for dataset, score in found.items()]
        if metrics is not None:
            metrics.write_curve(step, rows)
        if self.tcfg.select == "best_val":
            val = best_validation([{**r, "step": step} for r in rows])[1]
            decided = [self.best is None or val > self.best[1]]  # (rank 0 decides: ranks save together)
            torch.distributed.broadcast_object_list(decided, src=0)
            if decided[0]:
                self.best = (step, val)
                export_model(trainer, self.tokenizer, self.mixture, setup, self.tcfg, setup.out_dir / "best",
                             step=step)
                log.info("step %d: the best mean validation score so far, %.4f: saved in %s", step, val,
                         setup.out_dir / "best")
        self.points += 1
        self.seconds += time.perf_counter() - t0

    def record(self) -> dict:
        """``run.json``'s ``curve``: what was scored, how, and what it cost this run."""
        return {"eval_every": self.tcfg.eval_every, "eval_rows": self.tcfg.eval_rows,
                "datasets": {split: [p.dataset for p in probes] for split, probes in self.probes.items()},
                "rows": {p.dataset: p.rows for probes in self.probes.values() for p in probes},
                "templates": {p.dataset: p.template_ids for probes in self.probes.values() for p in probes},
                "format": self.fmt.name,
                "headline_variant": headline_variant("classification", self.evaluate),
                "scoring": CURVE_SCORING, "points_this_run": self.points,
                "seconds_this_run": round(self.seconds, 3)}

    def selected(self, tcfg: TrainConfig) -> dict:
        """``run.json``'s ``selected``: the step the exported model holds, and why."""
        if tcfg.select == "last":
            return {"rule": "last", "step": tcfg.steps, "why": "train.select: last"}
        step, score = self.best
        names = [p.dataset for p in self.probes["validation"]]
        return {"rule": "best_val", "step": step, "validation_score": score, "validation_datasets": names,
                "why": (f"train.select: best_val: the best mean score on the validation slices of {names} "
                        f"({tcfg.eval_rows} eval rows each) of the scored steps, the earliest of ties; "
                        "held-out datasets never choose")}

    def export_best(self, setup: Setup) -> None:
        """``best/``'s model made the run's ``hf/`` (and ``adapter/``): rank 0 renames it into place."""
        if setup.is_main:
            best = setup.out_dir / "best"
            if (best / "hf").is_dir():
                for name in ("hf", "adapter"):
                    old = setup.out_dir / f"{name}.replaced"
                    shutil.rmtree(old, ignore_errors=True)
                    if (setup.out_dir / name).exists():
                        (setup.out_dir / name).rename(old)
                    if (best / name).exists():
                        (best / name).rename(setup.out_dir / name)
                    shutil.rmtree(old, ignore_errors=True)
                shutil.rmtree(best)
            record = json.loads((setup.out_dir / "hf" / "flanpipe.json").read_text(encoding="utf-8"))
            if record.get("step") != self.best[0]:  # (a rerun of a finished run finds hf/ in place)
                raise RuntimeError(f"{setup.out_dir}: hf/ holds step {record.get('step')}, but the best "
                                   f"validation score is step {self.best[0]}'s and best/ is gone")
        torch.distributed.barrier()


def curve_row(split: str, dataset: str, score: ProbeScore) -> dict:
    """One dataset's row of the curve (:data:`~flanpipe.core.train.trackers.CURVE_METRICS`)."""
    return {"eval_split": split, "eval_dataset": dataset, "eval_score": score.score, "eval_loss": score.loss}


def best_validation(rows: list[dict]) -> tuple[int, float] | None:
    """The scored step with the best mean ``validation`` score, the earliest of ties, and that mean;
    None where no row is a validation one.

    >>> rows = [{"step": s, "eval_split": "validation", "eval_score": x} for s, x in
    ...         [(0, 50.0), (0, 60.0), (2, 70.0), (2, 40.0), (4, 90.0), (4, 20.0)]]
    >>> best_validation(rows + [{"step": 4, "eval_split": "heldout", "eval_score": 100.0}])
    (0, 55.0)
    """
    by_step: dict[int, list[float]] = {}
    for r in rows:
        if r["eval_split"] == "validation":
            by_step.setdefault(int(r["step"]), []).append(float(r["eval_score"]))
    if not by_step:
        return None
    means = {step: float(np.mean(scores)) for step, scores in sorted(by_step.items())}
    best = max(means, key=lambda step: (means[step], -step))
    return best, means[best]


def adapter_base_path(tcfg: TrainConfig) -> str:
    """The adapter's ``base_model_name_or_path``: the pretrained checkpoint's absolute path, or
    ``base`` (the adapter folder's ``base/``, where a new model's frozen base is saved).

    >>> from flanpipe.core.config import TrainConfig
    >>> adapter_base_path(TrainConfig())
    'base'
    """
    return str(Path(tcfg.model.path).resolve()) if tcfg.model.source == "pretrained" else "base"


class _Guard:
    """The finite-loss guard of one (1-based) ``step`` (:mod:`flanpipe.core.train.guards`): raises
    :class:`~flanpipe.core.train.guards.NonFiniteStep` naming the step's examples, or records a
    skipped step in ``skipped``."""

    def __init__(self, step: int, packed_dir: str | Path, plan: BatchPlan, seed: int, skipped: list[int],
                 allowed: int):
        self.step, self.skipped, self.allowed = step, skipped, allowed
        self.examples = lambda: step_examples(packed_dir,
                                              step_rows(step - 1, plan, len_rows(packed_dir), seed))

    def check(self, loss: float | None, grad_norm) -> None:
        verdict = check_finite(self.step, loss, None if grad_norm is None else float(grad_norm),
                               len(self.skipped), self.allowed, self.examples, skippable=False)
        if verdict.action != "train":
            raise NonFiniteStep(verdict.message)

    def skip_step(self, engine, current: StepBatches, total_targets: float) -> bool:
        """``train.max_nonfinite_steps`` > 0: the step's loss, without gradients, before any backward
        pass; True (the step recorded as skipped) where it is not finite and skips are left."""
        with torch.no_grad():
            total = sum(engine(**batch).sum().detach().float() for batch in current.batches)
        loss = _all_reduce(total) / max(total_targets, 1.0)
        verdict = check_finite(self.step, loss, None, len(self.skipped), self.allowed, self.examples)
        if verdict.action == "stop":
            raise NonFiniteStep(verdict.message)
        if verdict.action == "skip":
            self.skipped.append(self.step)
            log.warning("%s", verdict.message)
        return verdict.action == "skip"


def len_rows(packed_dir: str | Path) -> int:
    """The packed rows of a mixture, from its manifest."""
    return int(json.loads((Path(packed_dir) / "manifest.json").read_text(encoding="utf-8"))["rows"])


def _all_reduce(value: torch.Tensor) -> float:
    value = value.clone()
    torch.distributed.all_reduce(value)
    return float(value)


def _prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    tags = sorted(p for p in ckpt_dir.glob("step*") if p.is_dir())
    for old in tags[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def trained_format(manifest: dict) -> dict:
    """The model folder's record of the format its rows were packed in (pack's manifest; shards
    packed before ``tokenize.format`` existed are ``eos``): ``{"format": ..., "separator": ...}``.

    >>> trained_format({"format": "text", "separator": {"text": "\\n", "ids": [198]}})
    {'format': 'text', 'separator': '\\n'}
    """
    fmt = manifest.get("format", "eos")
    separator = (manifest.get("separator") or {}).get("text") if fmt == "text" else None
    return {"format": fmt, "separator": separator}


def plot_loss(metrics_csv: Path, out_png: Path, title: str) -> None:
    """The loss curve as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    rows = [r for r in rows if r["loss"]]  # (the curve's rows, train.eval_every, hold no training loss)
    ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], lw=1.5)
    ax.set(xlabel="step", ylabel="loss (target tokens)", title=f"training loss: {title}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
