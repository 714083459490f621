"""Datasets and Lightning data modules that read the stores written by ``build_dataset``."""
