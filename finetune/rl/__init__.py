"""Reinforced finetuning in the twin: PPO and FAN-PPO (docs/rl.md)."""
