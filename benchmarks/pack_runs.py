"""Pack finished run folders for the trip back from a device call (at most 8 files of 16 MiB).

Writes ``runs-<call>.tar.aa``, ``.ab``, ... (15 MiB parts of one tar of whole run folders:
run.json + model.safetensors) holding the complete runs under ``ROOT/KEY`` that no earlier call
returned, up to ``--budget-mib``; what it packed is remembered in ``ROOT/.returned`` so the
next call (``gpu_check.sh`` with ``RESUME=1``) returns the rest. A run is complete when it is
trained, evaluated with its test-time views and diagnosed (what ``protocol`` skips). Unpack here
with ``cat runs-*.tar.* | tar x -C checkpoints``.

    python benchmarks/pack_runs.py /tmp/ck elpv-224px "$OUT" --call 1
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, uninstalled
from csba.runs import protocol_complete
from csba.store import RunError, read_run_json

PART = 15 * 2**20  # bytes per returned file (the limit is 16 MiB)


def complete(run_dir: Path) -> bool:
    """What ``protocol`` skips (:func:`csba.runs.protocol_complete`), with its weights present."""
    try:
        meta = read_run_json(run_dir)
    except RunError:
        return False
    return protocol_complete(meta) and (run_dir / "model.safetensors").is_file()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("key")
    ap.add_argument("out")
    ap.add_argument("--call", default="1")
    ap.add_argument("--budget-mib", type=float, default=56.0, help="bytes of runs per call")
    args = ap.parse_args()
    root, out = Path(args.root), Path(args.out)
    root.mkdir(parents=True, exist_ok=True)  # no run finished yet: nothing to pack
    ledger = root / ".returned"
    returned = set(ledger.read_text().split()) if ledger.exists() else set()
    budget = args.budget_mib * 2**20
    picked, size, left = [], 0, []
    for run_dir in sorted((root / args.key).glob("*")):
        name = f"{args.key}/{run_dir.name}"
        if name in returned or not complete(run_dir):
            continue
        n = sum(f.stat().st_size for f in run_dir.iterdir() if f.is_file())
        if size + n > budget:
            left.append(name)
            continue
        picked.append(name)
        size += n
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in picked:
            for f in ("run.json", "model.safetensors"):
                tar.add(root / name / f, arcname=f"{name}/{f}")
    data = buf.getvalue()
    for i in range(0, len(data) if picked else 0, PART):
        suffix = chr(ord("a") + i // PART // 26) + chr(ord("a") + i // PART % 26)
        (out / f"runs-{args.call}.tar.{suffix}").write_bytes(data[i : i + PART])
    ledger.write_text("\n".join(sorted(returned | set(picked))) + "\n")
    print(f"packed {len(picked)} run(s), {size / 2**20:.1f} MiB: {' '.join(picked) or '-'}")
    if left:
        print(f"left for the next call (over the budget): {' '.join(left)}")


if __name__ == "__main__":
    main()
