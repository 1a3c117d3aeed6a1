#!/usr/bin/env python3
"""check_png.py FILE...: each PNG exists, is larger than 5 kB and is not a single flat colour."""
import os
import sys

import matplotlib.image as mpimg

bad = 0
for path in sys.argv[1:]:
    if not os.path.exists(path) or os.path.getsize(path) < 5000:
        print(f"{path}: missing or too small")
        bad += 1
        continue
    img = mpimg.imread(path)
    if img.std() < 0.01:
        print(f"{path}: flat image")
        bad += 1
    else:
        print(f"{path}: ok, {img.shape[1]}x{img.shape[0]}, pixel std {img.std():.3f}")
sys.exit(1 if bad else 0)
