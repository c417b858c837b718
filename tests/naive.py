"""A deliberately naive attention: scalar loops over requests, heads and query rows, written independently of
infernb.reference (no shared helpers), used as an oracle for it."""
import math

import torch


def naive_attention(q, k, v, qo_indptr, kv_indptr, *, causal=False, sm_scale=None, window_left=-1,
                    soft_cap=0.0, alibi=None, keep=None, score_mod=None, rope=None, q_rope_pos=None,
                    k_rope_off=None):
    q, k, v = q.double(), k.double(), v.double()
    hq, d = q.shape[1], q.shape[2]
    hkv = k.shape[1]
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    out = torch.zeros(q.shape[0], hq, v.shape[2], dtype=torch.float64)
    lse = torch.full((q.shape[0], hq), -math.inf, dtype=torch.float64)
    for b in range(len(qo_indptr) - 1):
        L = qo_indptr[b + 1] - qo_indptr[b]
        S = kv_indptr[b + 1] - kv_indptr[b]
        for h in range(hq):
            hk = h // (hq // hkv)
            for i in range(L):
                pos = S - L + i
                qi = q[qo_indptr[b] + i, h]
                if rope is not None:
                    qi = rope(qi, pos if q_rope_pos is None else q_rope_pos[qo_indptr[b] + i])
                scores = []
                for j in range(S):
                    kj = k[kv_indptr[b] + j, hk]
                    if rope is not None:
                        kj = rope(kj, j + (0 if k_rope_off is None else k_rope_off[b]))
                    visible = True
                    if causal and j > pos:
                        visible = False
                    if window_left >= 0 and j < pos - window_left:
                        visible = False
                    if keep is not None and not keep(b, h, i, j):
                        visible = False
                    if not visible:
                        continue
                    s = scale * float(torch.dot(qi, kj))
                    if alibi is not None:                     # FlashInfer's order: ALiBi, then the cap
                        s += float(alibi[h]) * (j - pos)
                    if soft_cap > 0:
                        s = soft_cap * math.tanh(s / soft_cap)
                    if score_mod is not None:
                        s = score_mod(s, b, h, pos, j)
                    scores.append((j, s))
                if not scores:
                    continue
                m = max(s for _, s in scores)
                den = sum(math.exp(s - m) for _, s in scores)
                acc = torch.zeros(v.shape[2], dtype=torch.float64)
                for j, s in scores:
                    acc += math.exp(s - m) / den * v[kv_indptr[b] + j, hk]
                out[qo_indptr[b] + i, h] = acc
                lse[qo_indptr[b] + i, h] = m + math.log(den)
    return out, lse


def naive_rope(theta=1e4, scale=1.0, interleave=False, rotary_dim=None):
    """RoPE as a rotation of complex numbers, one vector at a time."""
    def f(x, pos):
        d = rotary_dim or x.shape[0]
        half = d // 2
        y = x.clone()
        for i in range(half):
            ang = pos / scale * theta ** (-2.0 * i / d)
            a_idx, b_idx = (2 * i, 2 * i + 1) if interleave else (i, i + half)
            z = complex(float(x[a_idx]), float(x[b_idx])) * complex(math.cos(ang), math.sin(ang))
            y[a_idx], y[b_idx] = z.real, z.imag
        return y
    return f
