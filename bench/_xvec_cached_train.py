"""``python -m xvec`` with the training dataset's decode cache switched on (benchmarks only).

Until the recipe schema has the option, this gives ``TrainDataset`` the cache folder named by
``XVEC_BENCH_DECODE_CACHE`` and then runs the ordinary CLI, so the benchmark times exactly
what ``xvec train`` does with the cache. Loader workers are forked, so they see the patch.
"""

from __future__ import annotations

import functools
import os

import xvec.train
from xvec.cli import main
from xvec.data import TrainDataset

xvec.train.TrainDataset = functools.partial(
    TrainDataset, decode_cache=os.environ["XVEC_BENCH_DECODE_CACHE"]
)
main()
