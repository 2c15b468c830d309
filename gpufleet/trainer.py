"""The bundled sample trainer: a tiny, dependency-free stand-in for a real training script.

It behaves like the trainers gpufleet runs: reads its parameters from GPUFLEET_PARAMS_JSON,
prints `Epoch N/M loss=... val_loss=...` lines, writes train.csv and val.csv (one row per
epoch), epoch_N.pth checkpoints and best.pth into GPUFLEET_OUTPUT_DIR, resumes from
`resumeFrom`, and in test mode (`mode: test`) writes test.csv and a result zip.

    python -m gpufleet.trainer            # parameters from the environment, as under an agent
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
import zipfile
from pathlib import Path


def _params() -> dict[str, object]:
    try:
        p = json.loads(os.environ.get("GPUFLEET_PARAMS_JSON") or "{}")
    except ValueError:
        p = {}
    return p if isinstance(p, dict) else {}


def _append(path: Path, header: str, row: str) -> None:
    new = not path.exists()
    with path.open("a") as f:
        if new:
            f.write(header + "\n")
        f.write(row + "\n")
        f.flush()
        os.fsync(f.fileno())


def train(out: Path, p: dict[str, object]) -> int:
    total = int(p.get("total_epoch") or p.get("totalEpoch") or 5)  # type: ignore[call-overload]
    delay = float(p.get("epoch_seconds", 0.2))  # type: ignore[arg-type]
    seed = int(p.get("seed", 7))  # type: ignore[call-overload]
    fail_at = int(p.get("fail_at_epoch", 0))  # type: ignore[call-overload]
    start = 1
    resume = str(p.get("resumeFrom") or "")
    if resume:
        start = int(p.get("resumeEpoch") or 0) + 1  # type: ignore[call-overload]
        if resume == "latest" or start <= 1:
            done = sorted(int(f.stem.split("_")[1]) for f in out.glob("epoch_*.pth") if f.stem.split("_")[1].isdigit())
            start = (done[-1] + 1) if done else 1
        print(f"resuming from epoch {start - 1}", flush=True)
        # Drop rows past the checkpoint so every epoch has exactly one row.
        for name in ("train.csv", "val.csv"):
            f = out / name
            if f.exists():
                lines = f.read_text().splitlines()
                f.write_text("\n".join(lines[:1] + [ln for ln in lines[1:] if ln and int(ln.split(",")[0]) < start])
                             + "\n")
    rng = random.Random(seed)
    best = math.inf
    for epoch in range(start, total + 1):
        loss = 2.0 / (epoch + 1) + rng.random() * 0.05
        val_loss = loss + 0.05 + rng.random() * 0.05
        acc = min(0.99, 0.5 + epoch * 0.08 + rng.random() * 0.02)
        time.sleep(delay)
        _append(out / "train.csv", "epoch,loss,lr", f"{epoch},{loss:.4f},0.001")
        _append(out / "val.csv", "epoch,val_loss,accuracy", f"{epoch},{val_loss:.4f},{acc:.4f}")
        (out / f"epoch_{epoch}.pth").write_bytes(json.dumps({"epoch": epoch, "loss": loss}).encode())
        if val_loss < best:
            best = val_loss
            (out / "best.pth").write_bytes(json.dumps({"epoch": epoch}).encode())
        print(f"Epoch {epoch}/{total} loss={loss:.4f} val_loss={val_loss:.4f} accuracy={acc:.4f}", flush=True)
        if fail_at and epoch == fail_at:
            print(f"simulated failure at epoch {epoch}", file=sys.stderr, flush=True)
            return 3
    return 0


def test(out: Path, p: dict[str, object]) -> int:
    epoch = int(p.get("testEpoch") or p.get("epoch") or 1)  # type: ignore[call-overload]
    ckpt = out / str(p.get("checkpoint") or f"epoch_{epoch}.pth")
    if not ckpt.exists():
        print(f"checkpoint {ckpt.name} not found", file=sys.stderr, flush=True)
        return 2
    time.sleep(float(p.get("epoch_seconds", 0.2)))  # type: ignore[arg-type]
    rng = random.Random(epoch)
    acc = 0.8 + rng.random() * 0.1
    (out / "test.csv").write_text(f"epoch,test_loss,accuracy\n{epoch},{0.3 + rng.random() * 0.1:.4f},{acc:.4f}\n")
    with zipfile.ZipFile(out / f"result_epoch_{epoch}.zip", "w") as z:
        z.write(out / "test.csv", "test.csv")
    print(f"test at epoch {epoch}: accuracy={acc:.4f}", flush=True)
    return 0


def main() -> int:
    # Stop cleanly on SIGTERM: what is written stays consistent (rows are appended whole).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = Path(os.environ.get("GPUFLEET_OUTPUT_DIR") or ".")
    out.mkdir(parents=True, exist_ok=True)
    p = _params()
    return test(out, p) if p.get("mode") == "test" else train(out, p)


if __name__ == "__main__":
    sys.exit(main())
