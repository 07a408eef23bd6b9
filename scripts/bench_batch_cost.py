#!/usr/bin/env python
"""Model-only cost of one caption batch at sizes 1, 10 and 16 (4 s of calls each), with the run's decode settings.

python scripts/bench_batch_cost.py RUN 'IMAGES_GLOB'
"""

import glob
import sys
import time

import numpy as np

from captioner.data.images import load_image
from captioner.run import load_run
from captioner.tasks.caption import CaptionTask

run = load_run(sys.argv[1])
paths = sorted(glob.glob(sys.argv[2]))[:16]
gen = CaptionTask().generator(run)
size = run.model.encoder.image_size
images = np.stack([load_image(p, size) for p in paths])
gen(images[:8])
for b in (1, 10, 16):
    t = time.perf_counter()
    n = 0
    while time.perf_counter() - t < 4:
        gen(images[:b])
        n += 1
    print(f"batch {b}: {1000 * (time.perf_counter() - t) / n:.0f} ms per call", flush=True)
