"""Pretraining: ``python -m geomed_mim.pretrain fit --config configs/pretrain/X.yaml``.

The command is :func:`geomed_mim.cli.pretrain_main`; the task is
:class:`geomed_mim.tasks.pretraining.MIMPretrainTask` (or a subclass named in the config).
"""

from geomed_mim.cli import pretrain_main as main

__all__ = ["main"]

if __name__ == "__main__":
    main()
