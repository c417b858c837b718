"""Where the small-batch decode time goes: host time per call, event time with and without CUDA graphs, and the
steady-state rate of a longer batch of the same shape. Diagnostic (prints only)."""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

import infernb as ib  # noqa: E402

HQ, HKV, D, PAGE = 32, 8, 128, 16
from infernb.profile import random_decode_batch  # noqa: E402
from infernb.ops.paged_decode import DecodeRunner  # noqa: E402
from infernb.profile import cuda_graph_time, cuda_time  # noqa: E402


for lens in ([16], [1024] * 8, [32768], [65536] + [512] * 63):
    cache, ids, q = random_decode_batch(lens, num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, page_size=PAGE)
    t = cache.page_table(ids)
    nbytes = 2 * sum(lens) * HKV * D * 2
    for kw in (dict(), dict(ctas_per_sm=1), dict(fixed_cost=64.0)):
        p = ib.plan([1] * len(lens), lens, num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, page_size=PAGE, page_table=t,
                    **kw)
        r = DecodeRunner(p, cache, t, ctas_per_sm=kw.get("ctas_per_sm"))
        r(q)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            r(q)
        host_us = (time.perf_counter() - t0) / 200 * 1e6
        torch.cuda.synchronize()
        ev = cuda_time(lambda: r(q), runs=30).median_ms
        nf = cuda_time(lambda: r(q), runs=30, flush_l2=False).median_ms
        gr = cuda_graph_time(lambda: r(q)).median_ms
        print(f"{len(lens):3d} req sum {sum(lens):7d} {str(kw):28s} items {p.num_items:4d} split {len(p.merge_unit):3d} "
              f"host {host_us:6.1f}us  event {ev * 1e3:7.1f}us ({nbytes / ev / 1e9:.2f} TB/s)  noflush {nf * 1e3:7.1f}us  "
              f"graph {gr * 1e3:7.1f}us ({nbytes / gr / 1e9:.2f} TB/s)")
    if fi := __import__("importlib").util.find_spec("flashinfer"):
        import flashinfer
        ws = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
        w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=True)
        w.plan(t.indptr, t.indices, t.last_page_len, HQ, HKV, D, PAGE, data_type=torch.bfloat16,
               q_data_type=torch.bfloat16)
        w.run(q, cache.pool)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            w.run(q, cache.pool)
        host_us = (time.perf_counter() - t0) / 200 * 1e6
        torch.cuda.synchronize()
        ev = cuda_time(lambda: w.run(q, cache.pool), runs=30).median_ms
        print(f"    flashinfer tc: host {host_us:6.1f}us event {ev * 1e3:7.1f}us ({nbytes / ev / 1e9:.2f} TB/s)")
    del cache, q
    torch.cuda.empty_cache()
