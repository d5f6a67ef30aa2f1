"""Datasets over Zarr episode stores, SFT / FAN-SFT / label-smoothing losses, LoRA training, checkpoints."""
