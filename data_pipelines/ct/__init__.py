"""CT modality: NIfTI / DICOM series -> resampled int16 HU volumes in the store (DESIGN.md §5)."""
