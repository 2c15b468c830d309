"""Quotas and fair share: pure decisions over per-owner usage.

Order of a scheduling pass: priority first (a user's own ordering, capped by role), then fair
share, then age. Fair share is each owner's recent GPU time: GPU-seconds used, each second
weighted 2^(-age / half_life), so an hour-old second counts half with a one-hour half-life (Slurm's
PriorityDecayHalfLife). Among jobs of equal priority the owner with the least recent use goes
next; two users with equal queues therefore take turns and get GPU time in proportion.

A job placed counts at least PLACED_CHARGE_S GPU-seconds from the moment it is placed, so that
placements made in one pass (no second of use measured yet), and very short jobs, alternate
between owners too.

A quota caps the GPUs an owner's RUNNING jobs hold at once. A job that would exceed it waits with
reason QUOTA; the jobs of other owners are placed meanwhile (each owner's queue is its own stream,
so a capped owner never blocks the rest).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from gpufleet.coordinator.pending import Pending, PendingCode

PLACED_CHARGE_S = 1.0
# Usage older than this many half-lives weighs under 1/256: not read at all.
HORIZON_HALF_LIVES = 8


@dataclass(frozen=True, slots=True)
class Use:
    """One attempt's GPU time (end None: still running)."""

    owner: str
    gpus: int
    start: datetime
    end: datetime | None


def decayed_gpu_seconds(gpus: int, start: datetime, end: datetime | None, now: datetime, half_life_s: float) -> float:
    """GPU-seconds of [start, end or now], each second weighted by 2^(-(now - t) / half_life).

    The integral of gpus * 2^(-(now-t)/h) dt from start to end: gpus * h/ln2 * (2^(-(now-end)/h) -
    2^(-(now-start)/h)). Every placed attempt counts at least PLACED_CHARGE_S (weighted as of its
    end), so that a job's charge never drops when it ends. Half-life 0: no decay (plain GPU-seconds)."""
    stop = now if end is None or end > now else end
    if stop < start:
        return 0.0
    span = max((stop - start).total_seconds(), PLACED_CHARGE_S)
    if half_life_s <= 0:
        return gpus * span
    age_end = max(0.0, (now - stop).total_seconds())
    k = math.log(2) / half_life_s
    return gpus * (math.exp(-k * age_end) - math.exp(-k * (age_end + span))) / k


def usage_by_owner(uses: Iterable[Use], now: datetime, half_life_s: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for u in uses:
        out[u.owner] = out.get(u.owner, 0.0) + decayed_gpu_seconds(u.gpus, u.start, u.end, now, half_life_s)
    return out


@dataclass(frozen=True, slots=True)
class Head:
    """The next job of one owner's queue, as the pass orders them."""

    owner: str
    priority: int
    created_at: datetime
    job_id: str


def order_key(priority: int, usage: float, created_at: datetime, job_id: str) -> tuple[int, float, datetime, str]:
    """A queue head's place in the pass (smallest first): the highest priority, then the least recent
    GPU use of its owner, then the oldest."""
    return (-priority, usage, created_at, job_id)


def next_owner(heads: Iterable[Head], usage: Mapping[str, float]) -> str | None:
    """Whose job goes next (order_key); the scheduler keeps the same order in a heap."""
    best = min(heads, key=lambda h: order_key(h.priority, usage.get(h.owner, 0.0), h.created_at, h.job_id),
               default=None)
    return None if best is None else best.owner


def over_quota(owner: str, gpus: int, held: Mapping[str, int], quotas: Mapping[str, int]) -> Pending | None:
    """Why placing a job of `gpus` GPUs would take `owner` past its quota, or None (no quota, a
    CPU-only job, or room left)."""
    limit = quotas.get(owner)
    if limit is None or gpus == 0:
        return None
    used = held.get(owner, 0)
    if used + gpus <= limit:
        return None
    return Pending(PendingCode.QUOTA, f"{owner} uses {used} of {limit} GPUs; this job needs {gpus}")
