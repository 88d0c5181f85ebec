"""Tests run the fp32 torch encoder (the reference numerics their thresholds were set on) unless
``CASAM_RUNTIME`` says otherwise; tests/core/test_runtime.py covers the other runtimes."""

import os

os.environ.setdefault("CASAM_RUNTIME", "torch")
