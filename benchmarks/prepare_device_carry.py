"""Prepare ``.carry/`` for a device (GPU) check: ELPV labels plus its decoded uint8 cache.

The GPU machine has torch, scikit-learn, safetensors and pillow but not the 91 MB elpv-dataset
package, and a device call carries at most 64 MiB. ``labels.csv`` plus the decoded cache for one
size is enough (``CSBA_ELPV_ROOT`` + ``CSBA_CACHE``); the cache is 2,624 x S x S bytes: 43 MB at
128 px (fits), 132 MB at 224 px (does not: split it over two calls or use a smaller size).

    python benchmarks/prepare_device_carry.py --size 128
    # then, with the device tool: run(command="bash benchmarks/gpu_check.sh 128", carry=[".carry"])
"""

import argparse
import shutil
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
    carry.mkdir(exist_ok=True)
    data.load_dataset("elpv", args.size)  # decodes into the cache once
    shutil.copy(data._elpv_root() / "labels.csv", carry / "labels.csv")
    cached = sorted(data.cache_dir().glob(f"elpv-{args.size}px-*.safetensors"))
    if not cached:
        sys.exit("no cache entry was written")
    shutil.copy(cached[-1], carry / cached[-1].name)
    size = sum(p.stat().st_size for p in carry.iterdir()) / 2**20
    print(f".carry/: {size:.0f} MiB (limit 64 MiB; .carry/ is gitignored, so name it in carry)")


if __name__ == "__main__":
    main()
