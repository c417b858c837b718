"""Variants that exercise the code generator's operator semantics where C++ and torch differ."""
import torch

import infernb as ib


def cases():
    t = torch.arange(64, dtype=torch.float32) * 0.5          # indexed with negative traced indices
    t2 = torch.arange(8 * 10, dtype=torch.float32).reshape(8, 10)
    z = torch.tensor(2.0)                                      # a captured 0-d tensor, read at run time
    V = ib.Variant
    return [
        V("op_floordiv_float", score_mod=lambda s, b, h, q, k: s + (q + 1) // 0.1),
        V("op_remainder_float", score_mod=lambda s, b, h, q, k: s + torch.remainder(q + 1.0, 0.1) * 10),
        V("op_mod_neg_int", score_mod=lambda s, b, h, q, k: s + ((k - q) % 3) + ((k - q) // 3)),
        V("op_truncdiv", score_mod=lambda s, b, h, q, k: s + torch.div(k - q, 3, rounding_mode="trunc")),
        V("op_const_neg_index", score_mod=lambda s, b, h, q, k: s + t2[h, -1]),
        V("op_traced_neg_index", score_mod=lambda s, b, h, q, k: s + t[k - q]),
        V("op_bool_add", mask_mod=lambda b, h, q, k: ((k <= q) + (k >= q - 2)) & ((k <= q) * (k > 0))),
        V("op_pow_neg", score_mod=lambda s, b, h, q, k: s + 2 ** (k - q)),
        V("op_big_ints", score_mod=lambda s, b, h, q, k: s + torch.where(k <= q, 2**33, 0) * 1e-9,
          mask_mod=lambda b, h, q, k: (q + 2**31) > 0),
        V("op_casts", score_mod=lambda s, b, h, q, k: s.to(torch.bfloat16).float(),
          mask_mod=lambda b, h, q, k: (q * 50 + k).to(torch.uint8) < 100),
        V("op_nan_clamp", score_mod=lambda s, b, h, q, k: torch.clamp(torch.log(s), min=-1.0) + torch.maximum(s, s * 0)),
        V("op_zero_d_capture", score_mod=lambda s, b, h, q, k: s * z),
        V("op_abs_sign_where", score_mod=lambda s, b, h, q, k: torch.where(s > 0, torch.abs(k - q), torch.sign(s)) * 1.0),
    ]
