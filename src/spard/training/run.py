"""One fine-tuning run end to end: load, poison, select safety data, train with a defense, save.

The output directory holds ``config.yaml`` (resolved), ``safe_set.jsonl`` (when the defense uses
safety data), ``model/`` (adapter or merged model), ``train_log.jsonl`` (a row per update) and
``metrics.json`` (written last, atomically: its presence marks a finished run).

Over 300 lines: training, resuming, replacing a finished run and reusing an identical one share the
same folder rules.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from spard.config import to_dict
from spard.data import (
    FieldMap,
    load_examples,
    load_poisoned_task,
    origin_counts,
    tokenize_examples,
    write_jsonl,
)
from spard.data.formatting import as_dataset, data_collator
from spard.data.records import Example
from spard.defenses import get_defense
from spard.io import atomic_write_json, atomic_write_text
from spard.models import load_model, prepare_for_training, save_trained
from spard.selection.safe_set import make_encoder, select_safe_examples
from spard.training.config import TrainConfig, micro_batching

logger = logging.getLogger(__name__)


def peak_memory_mb() -> float:
    """Peak resident memory of this process (and the GPU's peak allocation when there is one), in MiB."""
    import resource

    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        return max(rss, torch.cuda.max_memory_allocated() / 2**20)
    return rss


def load_task_examples(cfg: TrainConfig) -> list[Example]:
    return load_poisoned_task(cfg.data, cfg.training.seed)


def load_safety_pool(cfg: TrainConfig, source: str, target_field: str) -> list[Example]:
    d = cfg.data
    return load_examples(source, FieldMap(prompt=d.prompt_field, input=d.input_field, target=target_field), origin="safety")


def planned_updates(n_rows: int, t: Any, world_size: int = 1) -> int:
    """Optimiser updates on user data: ``t.max_steps`` when > 0, else ``epochs x ceil(n / rows per
    update)``, an update consuming ``batch_size x accumulation`` rows on each of ``world_size`` processes."""
    if t.max_steps > 0:
        return t.max_steps
    return math.ceil(t.epochs * math.ceil(n_rows / (t.batch_size * t.gradient_accumulation_steps * world_size)))


def training_arguments(cfg: TrainConfig, output_dir: Path) -> Any:
    from transformers import TrainingArguments

    t = cfg.training
    micro, accumulation = micro_batching(t.batch_size, t.gradient_accumulation_steps, cfg.data.max_length, t.micro_batch_size)
    if micro < t.batch_size:
        logger.info("batch of %d rows in %d passes of %d (memory); %d accumulation steps per update",
                    t.batch_size, t.batch_size // micro, micro, accumulation)
    return TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        lr_scheduler_type=t.lr_scheduler,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=t.save_steps if t.save_steps > 0 else 500,
        save_total_limit=2,  # the newest may be cut short by a kill; the one before is complete
        report_to=[],
        bf16=t.bf16,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        disable_tqdm=not cfg.progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with what is decided from other settings filled in: the selector its defense uses when
    ``selection.method`` is auto, and the selection seed (the run's ``training.seed`` unless set)."""
    selection = cfg.selection
    if selection.method == "auto":
        selection = dataclasses.replace(selection, method=get_defense(cfg.defense, cfg).default_selector)
    if selection.seed is None:
        selection = dataclasses.replace(selection, seed=cfg.training.seed)
    return cfg if selection == cfg.selection else dataclasses.replace(cfg, selection=selection)


def reuse_training(cfg: TrainConfig, donor_dir: str | Path) -> dict[str, Any]:
    """Finish the run ``cfg`` describes from a finished run of the defense it trains like.

    Valid only when ``get_defense(cfg.defense, cfg).trains_like()`` names the donor's defense: the two
    trainings are then the same computation, so the donor's model, step log and training statistics
    are copied, and ``metrics.json`` gets this defense's name and evaluation prompt plus
    ``reused_training_from`` naming the donor."""
    out, donor_dir = Path(cfg.output_dir), Path(donor_dir)
    defense = get_defense(cfg.defense, cfg)
    donor = json.loads((donor_dir / "metrics.json").read_text())
    like = defense.trains_like()
    if like is None or donor.get("defense") != like:
        raise ValueError(f"{cfg.defense} does not train like the {donor.get('defense')!r} run in {donor_dir}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(resolve_config(cfg)), sort_keys=False))
    shutil.rmtree(out / "model", ignore_errors=True)
    shutil.copytree(donor_dir / "model", out / "model")
    if (donor_dir / "train_log.jsonl").exists():
        shutil.copyfile(donor_dir / "train_log.jsonl", out / "train_log.jsonl")
    metrics = {**donor, "defense": cfg.defense, "eval_system_prompt": defense.eval_system_prompt(),
               "reused_training_from": donor_dir.name}
    atomic_write_json(out / "metrics.json", metrics)
    logger.info("%s trains like %s: reused the finished run %s", cfg.defense, donor["defense"], donor_dir.name)
    return metrics


def find_resume_checkpoint(cfg: TrainConfig) -> Path:
    """The last checkpoint of the unfinished run in ``cfg.output_dir``, after checking that the run can
    resume: not finished, made with the same settings, a trainer that supports it."""
    from spard.io import fingerprint_difference

    out = Path(cfg.output_dir)
    if (out / "metrics.json").exists():
        raise ValueError(f"{out}: the run has finished; nothing to resume")
    if not get_defense(cfg.defense, cfg).trainer_class.resumable:
        raise ValueError(f"defense {cfg.defense!r} cannot resume from a checkpoint yet: train it again")
    # a checkpoint is complete once spard_state.json is in it (written last); a kill mid-save leaves one without
    complete = sorted((p for p in (out / "checkpoints").glob("checkpoint-*") if (p / "spard_state.json").exists()),
                      key=lambda p: int(p.name.rsplit("-", 1)[1])) if (out / "checkpoints").is_dir() else []
    if not complete:
        raise ValueError(f"{out}: no complete checkpoint to resume from (train with --save-steps N to write them)")
    found = complete[-1]
    saved = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").exists() else None
    now = to_dict(resolve_config(cfg))
    if saved is not None:
        for d in (saved, now):
            d.pop("progress", None)
        differs = fingerprint_difference(saved, now)
        if differs:
            raise ValueError(f"{out}: the run was started with other settings ({', '.join(differs)}); "
                             "resume with the same ones, or train into another folder")
    return Path(found)


def run_training(cfg: TrainConfig, *, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Run one fine-tuning job as configured and return its metrics (also written to ``metrics.json``).

    Everything is checked before the output folder is touched (the defense's needs, the data). A folder
    that holds a finished run (``metrics.json``) is refused unless ``overwrite``; then the new run trains
    in a hidden sibling folder and replaces the old one only when it has finished. A run that fails in
    a folder it created leaves nothing behind. ``resume`` continues an unfinished run from its last
    checkpoint (``training.save_steps``), ending with the weights and step log an uninterrupted run has."""
    from accelerate import PartialState

    final = Path(cfg.output_dir)
    defense = get_defense(cfg.defense, cfg)
    defense.check()
    task = load_task_examples(cfg)  # bad data fails here, before anything is written
    if resume:
        checkpoint = find_resume_checkpoint(cfg)
        logger.info("resuming %s from %s", final, checkpoint.name)
        return _train(cfg, defense, task, final, PartialState(), resume_from=checkpoint)
    finished = (final / "metrics.json").exists()
    if finished and not overwrite:
        raise ValueError(f"{final} holds a finished run (metrics.json): choose another --output-dir, or pass --overwrite "
                         "(the old run is replaced only once the new one has finished)")
    inputs = [p for p in (cfg.data.task, cfg.data.harmful, cfg.data.safe_pool, cfg.data.safety_demos, cfg.model.name) if p]
    for path in inputs:
        inside = Path(path).exists() and (Path(path).resolve() == final.resolve() or final.resolve() in Path(path).resolve().parents)
        if inside and (finished or Path(path).resolve() == final.resolve()):
            raise ValueError(f"output dir {final} holds the input {path}, which replacing the run would delete: "
                             "choose another --output-dir")
    state = PartialState()
    main_process = state.is_main_process
    work = final.with_name(f".{final.name}.replacing") if finished else final
    created = not work.exists()
    if main_process and finished and work.exists():
        shutil.rmtree(work)  # a replacement that was interrupted earlier
    try:
        metrics = _train(cfg, defense, task, work, state)
    except BaseException:
        if main_process and created and work.exists():
            shutil.rmtree(work, ignore_errors=True)
        raise
    if main_process and finished:
        old = final.with_name(f".{final.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
        logger.info("replaced the finished run in %s", final)
    return metrics


def _train(cfg: TrainConfig, defense: Any, task: list[Example], out: Path, state: Any,
           resume_from: Path | None = None) -> dict[str, Any]:
    """The run itself, writing into ``out`` (``config.yaml`` names ``cfg.output_dir``)."""
    from transformers import set_seed

    main_process = state.is_main_process
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").unlink(missing_ok=True)
        if resume_from is None:
            (out / "train_log.jsonl").unlink(missing_ok=True)
    resolved = resolve_config(cfg)
    selection_cfg = resolved.selection
    if main_process:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(resolved), sort_keys=False))
    set_seed(cfg.training.seed)

    started = time.perf_counter()
    model, tokenizer = load_model(cfg.model)

    safe_examples: list[Example] = []
    heldout_examples: list[Example] = []
    selection_info: dict[str, Any] = {}
    if defense.uses_safety_data:
        pool = load_safety_pool(cfg, *defense.safety_source())
        encoder = None
        if selection_cfg.method != "random":
            encoder = make_encoder(
                selection_cfg.embedding_model, base_model=model, base_tokenizer=tokenizer,
                base_key=cfg.model.name, batch_size=selection_cfg.embedding_batch_size,
            )
        picked, selection = select_safe_examples(pool, task, selection_cfg, encoder=encoder, cache_dir=cfg.embedding_cache)
        del encoder  # the sentence encoder's memory is free for training (it would otherwise live to the end)
        gc.collect()
        if main_process:
            write_jsonl(out / "safe_set.jsonl", (p.to_row() for p in picked))
        safe_examples = [p.example for p in picked]
        selection_info = {"method": selection_cfg.method, "k": len(picked), "pool_size": len(pool), **selection.notes}
        if defense.heldout_size():
            chosen = {p.pool_index for p in picked}
            rest = [ex for i, ex in enumerate(pool) if i not in chosen]
            heldout_examples = random.Random(cfg.training.seed).sample(rest, min(defense.heldout_size(), len(rest)))

    train_examples = defense.training_examples(task, safe_examples)
    model = prepare_for_training(model, cfg.lora)
    max_length, system = cfg.data.max_length, defense.train_system_prompt()
    train_ds = as_dataset(tokenize_examples(tokenizer, train_examples, max_length=max_length, system_prompt=system))
    safe_ds = (
        as_dataset(tokenize_examples(tokenizer, safe_examples, max_length=max_length, system_prompt=system))
        if safe_examples
        else None
    )
    heldout_ds = (
        as_dataset(tokenize_examples(tokenizer, heldout_examples, max_length=max_length, system_prompt=system))
        if heldout_examples
        else None
    )
    args = training_arguments(cfg, out)
    utility_updates = planned_updates(len(train_ds), cfg.training, state.num_processes)
    if defense.total_updates(utility_updates) != utility_updates:
        args.max_steps = defense.total_updates(utility_updates)
        logger.info("%s runs %d updates so that %d are on the fine-tuning data", defense.name, args.max_steps, utility_updates)
    trainer = defense.trainer_class(
        model=model,
        args=args,
        train_dataset=train_ds,
        data_collator=data_collator(tokenizer),
        processing_class=tokenizer,
        step_log=out / "train_log.jsonl",
        safe_dataset=safe_ds,
        loss_chunk_size=cfg.training.loss_chunk_size,
        **defense.trainer_kwargs(heldout_ds),
    )
    train_started = time.perf_counter()
    if resume_from is not None:
        trainer.resume_dir = resume_from
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    train_seconds = time.perf_counter() - train_started
    post = defense.after_training(trainer.model)
    trainer.accelerator.wait_for_everyone()

    updates = trainer.state.global_step
    metrics = {
        "defense": cfg.defense,
        "model": cfg.model.name,
        "train_examples": len(train_examples),
        "origins": origin_counts(train_examples),
        "selection": selection_info,
        "updates": updates,
        "train_seconds": train_seconds,
        "seconds_per_update": train_seconds / updates if updates else None,
        "wall_seconds": time.perf_counter() - started,
        "peak_memory_mb": peak_memory_mb(),
        "eval_system_prompt": defense.eval_system_prompt(),
        "training": trainer.summary(),
        "defense_stats": post,
    }
    if main_process:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # save_strategy is "no": only an empty folder
        save_trained(trainer.model, tokenizer, out / "model", merge=cfg.merge)
        atomic_write_json(out / "metrics.json", metrics)
    logger.info("run finished: %d updates in %.1fs, written to %s", updates, train_seconds, out)
    return metrics
