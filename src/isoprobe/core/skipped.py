"""The one protocol for outputs a stage did not compute because the fine-tuning run they depend on
did not finish normally (diverged, failed): the stage still writes every output DVC expects,
marked `status: skipped` with the reason, warns once on stderr and exits 0; the report lists them."""

from __future__ import annotations

import sys
from typing import Any

SKIPPED = "skipped"


def skip_reason(status: dict | None) -> str | None:
    """Why an encoder is not used: `status` (a fine-tuning metrics JSON, models/.../status.json or a
    skipped stage's output) says its run did not finish normally; None when it did (or is absent)."""
    if not status or status.get("status", "ok") == "ok":
        return None
    if status.get("reason"):
        return str(status["reason"])
    if status["status"] == "diverged":
        return f"fine-tuning diverged at step {status.get('diverged_at_step')}"
    return f"fine-tuning ended with status {status['status']}"


def is_skipped(record: dict | None) -> bool:
    """Whether a stage output (metrics JSON, info.json) is marked skipped."""
    return bool(record) and record.get("status") == SKIPPED


def skipped_record(stage: str, task: str, encoder: str, reason: str, **context: Any) -> dict:
    """The JSON a skipped stage writes in place of its metrics (and info) files."""
    return {"status": SKIPPED, "reason": reason, "stage": stage, "task": task, "encoder": encoder,
            **context}  # fmt: skip


def warn_skipped(stage: str, where: str, reason: str) -> None:
    print(f"isoprobe: warning: {stage} {where} skipped: {reason}", file=sys.stderr, flush=True)
