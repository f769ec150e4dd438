"""Where the shared e-commerce samples live: ``../shared/data`` beside the checkout (as in CI),
or ``$INTENT_STREAM_SHARED_DATA``. A fresh clone without them skips the tests that need them."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("INTENT_STREAM_SHARED_DATA") or REPO.parent / "shared" / "data")
SHARED_REES46 = SHARED_DATA / "rees46_multicategory" / "2019-Oct_head_users_a.csv"
SHARED_GA_MERCH = SHARED_DATA / "ga_merch" / "2016-Aug-Oct_users_a.csv.gz"
BUNDLED_SAMPLE = REPO / "stream_app" / "demo_data" / "rees46_2019-Oct_sample.csv"
SHARED_GA_MERCH = SHARED_DATA / "ga_merch" / "2016-Aug-Oct_users_a.csv.gz"
