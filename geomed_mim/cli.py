"""The training command line: ``pretrain`` and ``finetune_seg`` are one LightningCLI.

``python -m geomed_mim.pretrain fit --config configs/pretrain/X.yaml`` and
``python -m geomed_mim.finetune_seg fit|validate|test|predict --config configs/finetune/X.yaml``
(also the ``geomed-pretrain`` / ``geomed-finetune-seg`` console scripts) differ only in the task
class and in which fields of the data module are linked into it, so a model always matches the
store it trains on. Both:

* read YAML with ``class_path``/``init_args`` for the task and the data module;
* check the stores, checkpoints and inputs named before building anything: a user mistake is
  one line naming the flag and the fix, exit status 2 (:mod:`geomed_mim.usage`);
* write everything of a run under its root, ``trainer.default_root_dir``
  (:mod:`geomed_mim.tasks.run_dir`): checkpoints, one log folder per invocation (CSV and
  TensorBoard together), previews, predictions;
* under ``torchrun`` take ``devices`` and ``num_nodes`` from the launcher
  (:mod:`geomed_mim.tasks.distributed`), one config serving any number of processes and nodes;
* add :class:`~geomed_mim.tasks.preemption.PreemptionCheckpoint` (SIGTERM/SIGUSR1 → checkpoint,
  exit ``128 + signal``) unless the config has one;
* make ``fit --ckpt_path`` default to ``last``: re-running the same command resumes this run's
  ``last.ckpt`` when its model and settings match, and says so; a checkpoint of another run in
  the folder is an error (:mod:`geomed_mim.tasks.resume`). ``--ckpt_path null`` starts fresh,
  ``--ckpt_path PATH`` resumes from PATH. ``validate``/``test``/``predict`` need ``--ckpt_path``;
* show progress (a bar on a terminal, one line per epoch otherwise) and end ``fit`` with a
  summary (:mod:`geomed_mim.tasks.progress`);
* write checkpoints atomically (temp file, fsync, rename:
  :class:`~geomed_mim.tasks.checkpoint_io.AtomicCheckpointIO`).

``finetune_seg predict`` writes GeoTIFF/NIfTI class maps and PNG overlays for
``--data.init_args.predict_inputs`` into ``<root>/predictions`` (or
``--data.init_args.predict_output``), printing each file; an input that cannot be predicted is
reported with its name, the others go on, and the exit status is 2 if any failed.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from data_pipelines.errors import EXIT_USAGE
from geomed_mim import tasks as task_package
from geomed_mim.models.weights import NotAPretrainingCheckpointError, read_checkpoint_entries
from geomed_mim.tasks import run_dir
from geomed_mim.tasks.checkpoint_io import AtomicCheckpointIO
from geomed_mim.tasks.distributed import torchrun_trainer_overrides
from geomed_mim.tasks.preemption import PreemptionCheckpoint
from geomed_mim.tasks.pretraining import MIMPretrainTask
from geomed_mim.tasks.progress import TrainingProgress
from geomed_mim.tasks.resume import read_checkpoint, require_file, resolve_resume
from geomed_mim.tasks.segmentation import DATA_FIELDS as SEGMENTATION_DATA_FIELDS
from geomed_mim.tasks.segmentation import SegmentationTask
from geomed_mim.tasks.store_checks import check_data_config
from geomed_mim.usage import UsageError, is_rank_zero, usage_errors_exit

log = logging.getLogger(__name__)


def say(line: str) -> None:
    """One line for the user on stdout (rank 0 only)."""
    if is_rank_zero():
        print(line, flush=True)


def check_encoder_source(init_from: str, flag: str, checkpoint_example: str) -> None:
    """``init_from`` is a pretraining or fine-tuning checkpoint, or an export folder; else a
    usage error naming ``flag``."""
    source = Path(init_from)
    if source.is_dir():
        needed = ("config.json", "model.safetensors")
        missing = [n for n in needed if not (source / n).is_file()]
        if missing:
            raise UsageError(
                f"{flag} {init_from}: a folder without {', '.join(missing)}; give an export "
                "folder (python -m geomed_mim.export) or a pretraining checkpoint"
            )
        return
    if not source.is_file():
        raise UsageError(
            f"{flag} {init_from}: no such file or folder; give a pretraining checkpoint "
            f"({checkpoint_example} of a pretraining run) or an export folder"
        )
    try:
        read_checkpoint_entries(source)
    except NotAPretrainingCheckpointError as e:
        raise UsageError(f"{flag}: {e}; give a pretraining checkpoint or an export") from None


class TrainingCLI(LightningCLI):
    """LightningCLI for training on a laptop, under torchrun, SLURM or Kubernetes (see the module
    docstring); ``linked_fields`` of the data module become the task's init arguments."""

    linked_fields: tuple[str, ...] = ()
    task_class: type[LightningModule] = LightningModule
    labeled_data = False  # the data must carry labels (fine-tuning)
    checkpoint_example = "runs/<run>/checkpoints/last.ckpt"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for field in self.linked_fields:
            parser.link_arguments(
                f"data.{field}", f"model.init_args.{field}", apply_on="instantiate"
            )

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:
            self.parser.set_defaults({"fit.ckpt_path": "last"})  # the same command resumes

    # -- before anything is built ----------------------------------------------------------
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check ``--ckpt_path`` before Lightning reads the task's arguments from it
        (which it does right after this)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        trainer = (self.config[subcommand] if subcommand else self.config).get("trainer") or {}
        argv = sys.argv[1:] if args is None else args
        self.batch_limit_counts = batch_limit_counts(trainer, argv)
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if subcommand and subcommand != "fit" and not ckpt_path:
            raise UsageError(
                f"{subcommand} needs a trained model: pass --ckpt_path {self.checkpoint_example} "
                "(the checkpoint a fit wrote)"
            )
        if ckpt_path and ckpt_path != "last":
            self.check_own_checkpoint(require_file(ckpt_path, "--ckpt_path"))

    def check_own_checkpoint(self, path: Path) -> None:
        """``path`` is a checkpoint of this command's task (Lightning would otherwise rebuild
        whatever task it names and fail far from the cause)."""
        hparams = read_checkpoint(path).get("hyper_parameters") or {}
        class_path = str(hparams.get("_class_path") or "")
        if class_path and self.checkpoint_task_ok(class_path):
            return
        what = class_path.rsplit(".", 1)[-1] or "no task arguments"
        raise UsageError(
            f"--ckpt_path {path}: a checkpoint of {what}, not of {self.task_class.__name__}; "
            f"{self.wrong_checkpoint_hint}"
        )

    wrong_checkpoint_hint = "give a checkpoint this command wrote"

    def checkpoint_task_ok(self, class_path: str) -> bool:
        """Whether a checkpoint's ``_class_path`` names a task of this command. The checkpoint
        chooses that string, so only a module of the project's task package is ever imported
        for it (anything else is refused before any import)."""
        module, _, name = class_path.rpartition(".")
        if module not in project_task_modules():
            return False
        try:
            task = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            return False
        return isinstance(task, type) and issubclass(task, self.task_class)

    def adopt_checkpoint_architecture(self, ckpt_path: str) -> None:
        """Evaluation commands: nothing by default (fine-tuning rebuilds its encoder from the
        checkpoint's own record)."""

    def before_instantiate_classes(self) -> None:
        subcommand = self.subcommand or "fit"  # no subcommand: built to be run by the caller
        config = self.config[self.subcommand] if self.subcommand else self.config
        if subcommand != "fit" and config.get("ckpt_path"):
            self.adopt_checkpoint_architecture(config["ckpt_path"])
        check_data_config(config["data"], subcommand, self.labeled_data)
        self.check_init_from(config["model"].get("init_args") or {})
        if subcommand == "predict":
            self.save_config_callback = None  # a prediction is no new run: no config.yaml
            self.prepare_predict(config)

    def instantiate_classes(self) -> None:
        """Build the task and data; a :class:`UsageError` a class raised while being built
        (jsonargparse wraps it in its own error about Union subtypes) is raised as itself: one
        line naming the flag."""
        try:
            super().instantiate_classes()
        except ValueError as e:
            cause = usage_cause(e)
            if cause is None:
                raise
            raise cause from None

    def check_init_from(self, init_args: Any) -> None:
        """Fine-tuning's ``init_from`` (see :class:`FinetuneSegCLI`)."""

    def prepare_predict(self, config: Any) -> None:
        """Predict inputs and output folder (see :class:`FinetuneSegCLI`)."""

    # -- building the trainer ----------------------------------------------------------------
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # the instantiated config of the subcommand (or the whole one without subcommands)
        config = self.config_init.get(str(self.subcommand), self.config_init).get("trainer") or {}
        root = run_dir.run_root(config)
        counts = getattr(self, "batch_limit_counts", {})
        kwargs = {**torchrun_trainer_overrides(config), **counts, **kwargs}
        if self.subcommand == "predict":
            kwargs["logger"] = False  # a prediction logs nothing: no empty log folder
        else:
            version = run_dir.next_log_version(root)
            kwargs["logger"] = run_dir.run_loggers(config.get("logger"), root, version)
        kwargs["callbacks"] = run_dir.place_checkpoints(
            config.get("callbacks") or [], root, config.get("enable_checkpointing")
        )
        terminal = sys.stderr.isatty()
        if config.get("enable_progress_bar") is None:
            kwargs["enable_progress_bar"] = terminal
        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(cb, PreemptionCheckpoint) for cb in trainer.callbacks):
            # its setup also adds the LoaderPosition that mid-epoch resume needs
            trainer.callbacks.append(PreemptionCheckpoint())
        if not any(isinstance(cb, TrainingProgress) for cb in trainer.callbacks):
            no_bar = trainer.progress_bar_callback is None
            trainer.callbacks.append(TrainingProgress(print_epochs=no_bar))
        # plain TorchCheckpointIO (the default) → our atomic writer; keep any custom one a user set
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    # -- the subcommands ---------------------------------------------------------------------
    def fit(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        """``Trainer.fit`` from the checkpoint :func:`~geomed_mim.tasks.resume.resolve_resume`
        picks (said in one line)."""
        folders = {cb.dirpath for cb in self.trainer.checkpoint_callbacks if cb.dirpath}
        path, line = resolve_resume(ckpt_path, sorted(folders), dict(model.hparams))
        say(line)
        self.trainer.fit(model, datamodule=datamodule, ckpt_path=path, **kwargs)


class PretrainCLI(TrainingCLI):
    linked_fields = ("in_chans", "img_size", "spatial_dims")
    task_class = MIMPretrainTask
    wrong_checkpoint_hint = "give a checkpoint a pretraining run wrote"

    def check_init_from(self, init_args: Any) -> None:
        """``init_from`` (continuing from an export or a converted published model) exists."""
        init_from = init_args.get("init_from")
        if init_from:
            check_encoder_source(init_from, "--model.init_args.init_from", self.checkpoint_example)


class FinetuneSegCLI(TrainingCLI):
    linked_fields = SEGMENTATION_DATA_FIELDS
    task_class = SegmentationTask
    labeled_data = True
    wrong_checkpoint_hint = (
        "give a checkpoint a fine-tuning run wrote; a pretraining checkpoint or an export "
        "starts a fine-tuning as --model.init_args.init_from"
    )

    def check_init_from(self, init_args: Any) -> None:
        """``init_from`` is a pretraining or fine-tuning checkpoint, or an export folder (a ViT,
        a Swin V2 or a 3-D Swin: the family chooses the network)."""
        init_from = init_args.get("init_from")
        if init_from:
            check_encoder_source(init_from, "--model.init_args.init_from", self.checkpoint_example)

    def adopt_checkpoint_architecture(self, ckpt_path: str) -> None:
        """Build the network the checkpoint records (encoder family and sizes, decoder blocks and
        width) rather than
        read its ``init_from`` again: the weights come from the checkpoint anyway, and the
        pretraining file may be gone or elsewhere."""
        try:
            _, meta = read_checkpoint_entries(ckpt_path)
        except NotAPretrainingCheckpointError:
            return  # written before checkpoints recorded it: Lightning's reading stands
        init_args = self.config[self.config.subcommand]["model"]["init_args"]
        init_args["init_from"] = None
        init_args["encoder"] = dict(meta["encoder"])
        init_args["skip_blocks"] = list(meta["skip_blocks"]) or None
        init_args["head"] = meta.get("head", "unetr")
        if meta.get("feature_size"):  # the decoder's (FPN's) width is the trained one too
            init_args["feature_size"] = int(meta["feature_size"])

    def prepare_predict(self, config: Any) -> None:
        init_args = config["data"]["init_args"]
        if not init_args.get("predict_inputs"):
            example = "scene.tif" if "RS" in str(config["data"]["class_path"]) else "volume.nii.gz"
            raise UsageError(
                f"predict needs inputs: pass --data.init_args.predict_inputs '[{example}, ...]'"
            )
        if init_args.get("predict_output") in (None, run_dir.PREDICTIONS_DIRNAME):
            root = run_dir.run_root(config["trainer"] or {})
            init_args["predict_output"] = str(root / run_dir.PREDICTIONS_DIRNAME)

    def predict(self, model: SegmentationTask, **kwargs: Any) -> None:
        """``Trainer.predict``, then one line on what was written; exit 2 if an input failed."""
        kwargs["return_predictions"] = False  # the files are the result
        self.trainer.predict(model, **kwargs)
        written, failed = len(model.predict_written), len(model.predict_failed)
        output = self.datamodule.predict_output
        say(f"predicted {written} of {written + failed} inputs → {output}")
        if failed:
            say(f"{failed} input(s) could not be predicted (listed above)")
            raise SystemExit(EXIT_USAGE)


BATCH_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches",
                "limit_predict_batches", "overfit_batches")  # fmt: skip


def batch_limit_counts(trainer: Any, argv: Any) -> dict[str, int]:
    """The batch limits (``--trainer.limit_train_batches 2``) that are counts, as ints. The
    Trainer's ``int | float`` annotation reaches the parser as ``float | int`` (typing caches
    unions ignoring their order), so a count arrives as a float: ``2.0`` (which Lightning refuses
    as a fraction) or ``1.0`` (which it reads as 100 %). An integral value above 1, or one typed
    without a decimal point on the command line, is a count."""
    counts = {}
    typed = {}
    tokens = [str(a) for a in argv] if isinstance(argv, list | tuple) else []
    for i, token in enumerate(tokens):
        flag, _, value = token.partition("=")
        if not value and i + 1 < len(tokens):
            value = tokens[i + 1]
        typed[flag] = value
    for key in BATCH_LIMITS:
        value = trainer.get(key)
        if not isinstance(value, float) or not value.is_integer():
            continue
        literal = typed.get(f"--trainer.{key}", "")
        if value > 1 or (literal and literal.lstrip("+").isdigit()):
            counts[key] = int(value)
    return counts


def usage_cause(error: BaseException) -> UsageError | None:
    """The :class:`UsageError` ``error`` was raised from (itself included), if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UsageError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def project_task_modules() -> set[str]:
    """The modules of ``geomed_mim.tasks``, listed from the package folder without importing
    any of them."""
    prefix = f"{task_package.__name__}."
    return {prefix + m.name for m in pkgutil.iter_modules(task_package.__path__)}


def run(
    cli_class: type[TrainingCLI],
    task_class: type[LightningModule],
    args: list[str] | None = None,
    **cli_kwargs: Any,
) -> TrainingCLI:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_known_noise()
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+ GPUs; no effect on CPU
    with usage_errors_exit():
        return cli_class(
            task_class,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            **cli_kwargs,
        )


def quiet_known_noise() -> None:
    """Warnings every run would print that say nothing about the user's run."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )


def pretrain_main(args: list[str] | None = None) -> None:
    """``python -m geomed_mim.pretrain``: the task builds its own optimizer and schedule."""
    run(PretrainCLI, MIMPretrainTask, args, auto_configure_optimizers=False)


def finetune_seg_main(args: list[str] | None = None) -> None:
    """``python -m geomed_mim.finetune_seg``."""
    run(FinetuneSegCLI, SegmentationTask, args)
