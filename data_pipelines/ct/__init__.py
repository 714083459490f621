"""CT modality: NIfTI / DICOM series -> resampled int16 HU volumes in the store (RAS, 1.5 mm
by default, as Hi-End-MAE pretrains)."""
