"""Drivers and safety: JAKA arm (jkrc SDK), gripper, RealSense camera, safety layer; the MuJoCo twin in sim/."""
