"""What ``fanvla collect info`` reports about a store: counts, no-ops, per instruction/object, duration."""

from __future__ import annotations

from collections import Counter
from typing import Any

from collect.store import EpisodeStore
from collect.verify import VerifyReport


def store_summary(store: EpisodeStore) -> dict[str, Any]:
    """A JSON-ready summary; always has ``episodes``, ``frames`` and ``noop_frames``."""
    episodes = store.episodes_meta()
    noop = store.noop_mask()
    frames = store.num_frames
    per_instruction: Counter[str] = Counter()
    per_object: Counter[str] = Counter()
    frames_per_instruction: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for meta in episodes:
        instruction = str(meta.get("instruction", "(none)"))
        per_instruction[instruction] += 1
        frames_per_instruction[instruction] += meta["frames"]
        per_object[str(meta.get("object", "(none)"))] += 1
        outcomes[str(meta.get("outcome", meta.get("success", "(none)")))] += 1
    recorded_s = [meta["duration_s"] for meta in episodes if isinstance(meta.get("duration_s"), (int, float))]
    noop_frames = int(noop.sum())
    return {
        "path": str(store.path),
        "episodes": store.num_episodes,
        "frames": frames,
        "noop_frames": noop_frames,
        "noop_percent": round(100.0 * noop_frames / frames, 2) if frames else 0.0,
        "training_frames": frames - noop_frames,
        "rate_hz": store.schema.rate_hz,
        "duration_s": round(frames / store.schema.rate_hz, 3),
        "recorded_duration_s": round(sum(recorded_s), 3) if recorded_s else None,
        "episode_frames": {"min": min((m["frames"] for m in episodes), default=0),
                           "max": max((m["frames"] for m in episodes), default=0)},
        "per_instruction": {k: {"episodes": n, "frames": frames_per_instruction[k]}
                            for k, n in sorted(per_instruction.items())},
        "per_object": dict(sorted(per_object.items())),
        "outcomes": dict(sorted(outcomes.items())),
        "keys": {name: {"dtype": spec.dtype, "shape": list(spec.shape), "unit": spec.unit}
                 for name, spec in store.schema.keys.items()},
        "image_codec": store.schema.image_codec.describe(),
        "noop": store.noop_record,
        "created_at": store.attrs.get("created_at"),
        "software_version": store.attrs.get("software_version"),
        "hardware": store.schema.hardware,
    }


def integrity_summary(report: VerifyReport) -> dict[str, Any]:
    """What ``info`` says about integrity: it checks every low-dim and metadata chunk and that every frame exists."""
    return {"ok": report.ok, "layout": report.layout, "checksums": report.checksummed,
            "chunks_checked": report.chunks_checked, "image_frames_present": report.image_frames_checked,
            "damaged_episodes": report.to_dict()["damaged_episodes"], "unreadable": report.fatal,
            "not_checked": report.not_checked}


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['path']}: {summary['episodes']} episodes, {summary['frames']} frames "
        f"({summary['duration_s']:.1f} s at {summary['rate_hz']:g} Hz)",
        f"  no-op frames: {summary['noop_frames']} ({summary['noop_percent']:.1f} %); "
        f"{summary['training_frames']} frames left for training",
    ]
    if summary["noop"]:
        noop = summary["noop"]
        lines.append(f"  no-op thresholds: joints {noop['joint_eps_rad']:.3g} rad, gripper {noop['gripper_eps']:.3g} "
                     f"({noop['source']}, {noop['computed_at']})")
    if summary["episodes"]:
        lines.append(f"  episode length: {summary['episode_frames']['min']}..{summary['episode_frames']['max']} frames")
    if summary["recorded_duration_s"] is not None:
        lines.append(f"  recorded duration (sum of episodes): {summary['recorded_duration_s']:.1f} s")
    lines.append("  per instruction:")
    lines += [f"    {n['episodes']:4d} episodes {n['frames']:7d} frames  {k}"
              for k, n in summary["per_instruction"].items()]
    lines.append("  per object: " + (", ".join(f"{k} {n}" for k, n in summary["per_object"].items()) or "-"))
    lines.append("  outcomes: " + (", ".join(f"{k} {n}" for k, n in summary["outcomes"].items()) or "-"))
    shapes = ", ".join(f"{k} {tuple(v['shape'])}" for k, v in summary["keys"].items() if len(v["shape"]) >= 2)
    lines.append(f"  images: {shapes or 'none'}, codec {summary['image_codec']}")
    lines.append(f"  created {summary['created_at']} by fanvla {summary['software_version']}")
    integrity = summary.get("integrity")
    if integrity is not None:
        kind = "CRC32C per chunk" if integrity["checksums"] else "layout 1, no checksums"
        state = "ok" if integrity["ok"] else f"DAMAGED ({len(integrity['damaged_episodes'])} episodes)"
        lines.append(f"  integrity ({kind}): {state}: {integrity['chunks_checked']} low-dim and metadata chunks "
                     f"checked, every image frame present; `fanvla collect verify` reads the frames too")
    return "\n".join(lines)
