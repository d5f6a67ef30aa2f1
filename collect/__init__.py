"""Teleoperation devices, the recording loop, the crash-safe Zarr episode store and no-op filtering."""
