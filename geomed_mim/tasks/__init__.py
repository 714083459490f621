"""Lightning training tasks: ``pretraining`` (any registered MIM model), ``selective_pretraining``
(plus easy-sample pruning), ``segmentation`` (fine-tuning and prediction, ``seg_predict``), and
what they share: ``optim`` (AdamW, parameter groups, warmup-cosine), atomic checkpoint writes,
preemption, the torchrun launch, previews. The command line is :mod:`geomed_mim.cli`."""
