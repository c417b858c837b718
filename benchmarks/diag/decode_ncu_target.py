"""A few decode launches for Nsight Compute (`ncu -k regex:decode ... python3 benchmarks/diag/decode_ncu_target.py N`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

import infernb as ib  # noqa: E402

HQ, HKV, D, PAGE = 32, 8, 128, 16
from infernb.profile import random_decode_batch  # noqa: E402
from infernb.ops.paged_decode import DecodeRunner  # noqa: E402

lens = {"1x32768": [32768], "64x4096": [4096] * 64}[sys.argv[1]]
cache, ids, q = random_decode_batch(lens, num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, page_size=PAGE)
t = cache.page_table(ids)
p = ib.plan([1] * len(lens), lens, num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, page_size=PAGE, page_table=t)
r = DecodeRunner(p, cache, t, rope=ib.RoPE() if sys.argv[2:] == ['rope'] else None)
for _ in range(4):
    r(q)
torch.cuda.synchronize()
