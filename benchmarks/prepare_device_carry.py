"""Prepare ``.carry/`` for a device (GPU) check: ELPV labels plus its decoded uint8 cache.

The GPU machine has torch, scikit-learn, safetensors and pillow but not the 91 MB elpv-dataset
package, and a device call carries at most 64 MiB. ``labels.csv`` plus the decoded cache for one
size is enough (``CSBA_ELPV_ROOT`` + ``CSBA_CACHE``); the cache is 2,624 x S x S bytes: 43 MB at
128 px (fits), 132 MB at 224 px, which ``xz -9e`` packs into 63 MB (60 MiB; gpu_check.sh unpacks
it there). Sizes over 128 px are packed.

    python benchmarks/prepare_device_carry.py --size 224
    # then, with the device tool: run(command="bash benchmarks/gpu_check.sh 224", carry=[".carry"])
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from csba import data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    carry = REPO / ".carry"
    shutil.rmtree(carry, ignore_errors=True)
    carry.mkdir()
    data.load_dataset("elpv", args.size)  # decodes into the cache once
    shutil.copy(data._elpv_root() / "labels.csv", carry / "labels.csv")
    cached = sorted(data.cache_dir().glob(f"elpv-{args.size}px-*.safetensors"))
    if not cached:
        sys.exit("no cache entry was written")
    if args.size > 128:  # xz -9e: 132 -> 63 MB at 224 px (zstd -19: 66 MB, over the limit)
        with open(carry / f"{cached[-1].name}.xz", "wb") as fh:
            subprocess.run(["xz", "-9e", "-T0", "-c", str(cached[-1])], stdout=fh, check=True)
    else:
        shutil.copy(cached[-1], carry / cached[-1].name)
    size = sum(p.stat().st_size for p in carry.iterdir()) / 2**20
    print(f".carry/: {size:.0f} MiB (limit 64 MiB; .carry/ is gitignored, so name it in carry)")


if __name__ == "__main__":
    main()
