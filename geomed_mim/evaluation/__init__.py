"""Downstream evaluation: encoders probed and fine-tuned at several label budgets and seeds,
beside non-deep baselines (``python -m geomed_mim.evaluate``): on a labeled store (segmentation),
a torchgeo classification or segmentation dataset, Sen1Floods11 or a Medical Segmentation
Decathlon task.

| module | what it holds |
|---|---|
| :mod:`~geomed_mim.evaluation.protocol` | the protocol's flags (:class:`Protocol`), checks and stages |
| :mod:`~geomed_mim.evaluation.deep` | one probe / fine-tuning run through the segmentation task |
| :mod:`~geomed_mim.evaluation.baselines` | logistic regression on pixels, spectral index, HU window |
| :mod:`~geomed_mim.evaluation.pixels` | labeled pixels in physical units from a data module |
| :mod:`~geomed_mim.evaluation.scene_protocol` | scene classification: flags (:class:`SceneProtocol`), checks, stages |
| :mod:`~geomed_mim.evaluation.scene_data` | a torchgeo dataset's splits, bands matched by name, normalisation, draws |
| :mod:`~geomed_mim.evaluation.patch_probes` | segmentation from patch tokens: the per-token pixel head, linear / finetune probes, the sweep, the report |
| :mod:`~geomed_mim.evaluation.floods` | Sen1Floods11: the hand-labeled S2 or S1 chips' reader, NDWI / VV thresholds, Bolivia hold-out |
| :mod:`~geomed_mim.evaluation.tgseg` | any torchgeo segmentation dataset: reader, class table, pixel baseline |
| :mod:`~geomed_mim.evaluation.probes` | k-NN, linear and attentive probes; the step loop with early stopping |
| :mod:`~geomed_mim.evaluation.msd` | a Medical Segmentation Decathlon task folder → a CT store, MONAI's case split |
| :mod:`~geomed_mim.evaluation.report` | CSV, markdown table (mean ± std) and plot |
"""  # noqa: E501

from geomed_mim.evaluation.protocol import Protocol, check_protocol

__all__ = ["Protocol", "check_protocol"]
