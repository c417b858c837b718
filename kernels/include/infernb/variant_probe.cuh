// infernb: evaluate a variant's hooks on a grid of (b, h, q, kv), to check generated code against Python.
//
// scores:    [B, H, Q, K] fp32 input logits          out_score: [B, H, Q, K] fp32 = score_mod(...)
// out_mask:  [B, H, Q, K] uint8 = mask_mod(...)      q_idx = q + q_offset, kv_idx = k
#pragma once
#include <infernb/variant.cuh>

namespace infernb {

template <typename V>
__global__ void __launch_bounds__(256)
variant_probe_kernel(const typename V::params_t* __restrict__ params, const float* __restrict__ scores,
                     float* __restrict__ out_score, unsigned char* __restrict__ out_mask, int B, int H, int Q, int K,
                     int q_offset) {
  const long long total = (long long)B * H * Q * K;
  const typename V::params_t p = *params;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x) {
    const int k = int(i % K);
    const int q = int((i / K) % Q);
    const int h = int((i / ((long long)K * Q)) % H);
    const int b = int(i / ((long long)K * Q * H));
    out_score[i] = V::score_mod(p, scores[i], b, h, q + q_offset, k);
    out_mask[i] = V::mask_mod(p, b, h, q + q_offset, k) ? 1 : 0;
  }
}

}  // namespace infernb
