#!/usr/bin/env python
"""Retrain the linear head of a timm model on a debug dataset and report what it fixed (same as `failmode evaluate`).

Example:
    python scripts/evaluate.py --model resnet50 --dataset imagenet-1k --debug-data failmode/imagenet-bg-debug \
        --revision v1.0.0 --lambda-sweep 0,0.1,0.5,1,2,5 --out runs/evaluate
"""

import sys

from failmode.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
