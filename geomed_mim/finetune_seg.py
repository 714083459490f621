"""Segmentation fine-tuning: ``python -m geomed_mim.finetune_seg fit|validate|test|predict
--config configs/finetune/X.yaml``.

The command is :func:`geomed_mim.cli.finetune_seg_main`; the task is
:class:`geomed_mim.tasks.segmentation.SegmentationTask`.
"""

from geomed_mim.cli import finetune_seg_main as main

__all__ = ["main"]

if __name__ == "__main__":
    main()
