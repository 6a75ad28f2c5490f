"""Every benchmark that fits a 2-core CPU machine in under 10 minutes, in one command.

    python benchmarks/run_all.py

1. training pipeline (bench_train.py): epoch / bare-step ratios at 64 and 128 px, fp32 and
   bf16 + channels_last, on 512 real ELPV training images, plus epoch time vs number of images;
2. Gradient Conflict Matrix (bench_gcm.py): matrix / one forward+backward pass and the per-class
   backward loop / matrix at C = 4 and C = 10, at 128 and 256 images (linear in images, flat in
   classes).

Each ratio's numerator and denominator are measured in the same process, back to back. On a
GPU machine, add ``python benchmarks/bench_device.py`` (images/s and MFU at 224 px).
"""

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = [
    ["bench_train.py", "--images", "512", "--sizes", "64", "128", "--scaling"],
    ["bench_gcm.py", "--classes", "4", "10", "--images", "128"],
    ["bench_gcm.py", "--classes", "4", "10", "--images", "256"],
]


def main() -> int:
    t0 = time.perf_counter()
    for step in STEPS:
        print(f"\n$ python benchmarks/{' '.join(step)}", flush=True)
        r = subprocess.run([sys.executable, str(HERE / step[0]), *step[1:]])
        if r.returncode:
            return r.returncode
    print(f"\nall benchmarks: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
