"""The online-softmax part (kernels/include/infernb/softmax_state.cuh) on its own: a one-warp probe kernel feeds it
chunks of logits in the mma fragment layout and accumulates O = sum P v per row, then compares O and the LSE with
a float64 softmax over all the chunks at once. Cases: random logits, masked keys, rows masked in every chunk, a
row's maximum jumping by more than the rescale slack late in the row, and a falling one. Both ways of summing the
rows: FADDs of the fp32 probabilities, and MMA_SUMS (the tensor core sums each k-step's probabilities as rounded to
fp16 for P V; the probe then accumulates O from the same rounded values, as the prefill kernel does)."""
import math

import numpy as np
import pytest
import torch

from infernb.jit import KernelSpec, build

PROBE = r"""
// one warp, one 16-row mma tile (M_TILES = 1), NT 8-key n-tiles per chunk; s: [chunks][16][8 NT] log2-domain
// scores (the softmax takes scale * s), vals: [chunks][8 NT]. o[0][0][0] / [2] hold this lane's partial sum of
// p * val of rows g / g + 8 (rescaled by the state like any accumulator of those rows), reduced over the 4 lanes.
// MMA_SUMS: P rounded to fp16 (the A fragments of P V) for O and for the row sums (sum_kstep)
template <int NT, bool MMA_SUMS>
__global__ void softmax_state_probe(const float* s, const float* vals, int chunks, float scale, float* out_o,
                                    float* out_lse) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  infernb::softmax_state_t<1, true, 2, MMA_SUMS> st;
  st.init();
  float o[1][1][4] = {{{0.f, 0.f, 0.f, 0.f}}};
  for (int c = 0; c < chunks; ++c) {
    float f[1][NT][4];
    for (int nt = 0; nt < NT; ++nt)
      for (int i = 0; i < 4; ++i)
        f[0][nt][i] = s[((long long)c * 16 + g + 8 * (i / 2)) * 8 * NT + nt * 8 + 2 * t + (i % 2)];
    st.update(f, o, scale);
    if constexpr (MMA_SUMS) {
      for (int kk = 0; kk < NT / 2; ++kk) {
        const unsigned a[4] = {infernb::mma::pack2<half>(f[0][2 * kk][0], f[0][2 * kk][1]),
                               infernb::mma::pack2<half>(f[0][2 * kk][2], f[0][2 * kk][3]),
                               infernb::mma::pack2<half>(f[0][2 * kk + 1][0], f[0][2 * kk + 1][1]),
                               infernb::mma::pack2<half>(f[0][2 * kk + 1][2], f[0][2 * kk + 1][3])};
        st.template sum_kstep<half>(0, a);
      }
      for (int nt = 0; nt < NT; ++nt)
        for (int i = 0; i < 4; ++i) f[0][nt][i] = __half2float(__float2half_rn(f[0][nt][i]));
    }
    for (int nt = 0; nt < NT; ++nt)
      for (int i = 0; i < 4; ++i) o[0][0][(i / 2) * 2] += f[0][nt][i] * vals[c * 8 * NT + nt * 8 + 2 * t + (i % 2)];
  }
  float sc[2], lse[2];
  st.finish(sc, lse);
  for (int h = 0; h < 2; ++h) {
    float x = o[0][0][2 * h];
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    if (t == 0) { out_o[g + 8 * h] = x * sc[h]; out_lse[g + 8 * h] = lse[h]; }
  }
}
"""
SPEC = KernelSpec(family="softmax_state", name="softmax_state_probe",
                  kernels=(("nt4", "softmax_state_probe<4, false>"), ("nt2", "softmax_state_probe<2, false>"),
                           ("nt4_mma", "softmax_state_probe<4, true>"), ("nt2_mma", "softmax_state_probe<2, true>")),
                  preamble=PROBE)


def test_probe_compiles_for_the_ci_archs():
    for arch in ("sm_90a", "sm_80"):
        k = build(SPEC, arch)
        assert {r.name for r in k.report.kernels} == {"nt4", "nt2", "nt4_mma", "nt2_mma"} and not k.report.spills


def reference(s, vals, scale):
    """float64: softmax over every chunk's keys of scale * s (log2 domain); O = sum p val; natural-log LSE."""
    C, R, N = s.shape
    x = (scale * s.astype(np.float64)).transpose(1, 0, 2).reshape(R, C * N) * math.log(2.0)
    v = vals.astype(np.float64).reshape(C * N)
    out, lse = np.zeros(R), np.full(R, -np.inf)
    for r in range(R):
        ok = np.isfinite(x[r])
        if ok.any():
            m = x[r, ok].max()
            e = np.exp(x[r, ok] - m)
            out[r] = (e * v[ok]).sum() / e.sum()
            lse[r] = m + math.log(e.sum())
    return out, lse


def cases(nt, rng):
    n = 8 * nt
    base = rng.standard_normal((9, 16, n)).astype(np.float32) * 4
    masked = base.copy()
    masked[rng.random(masked.shape) < 0.3] = -np.inf
    masked[:, 5] = -np.inf                                         # a row that never sees a key
    masked[:3, 9] = -np.inf                                        # a row whose first chunks see none
    jump = base.copy()
    jump[6:, ::2] += 40.0                                          # late jumps far past the slack (8 log2 units)
    fall = base + np.linspace(30, -30, 9, dtype=np.float32)[:, None, None]
    spike = base.copy()
    spike[4, :, 3] = 60.0                                          # one key far above every other, mid-row
    return {"random": base, "masked": masked, "jump": jump, "falling": fall, "spike": spike}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run `pytest -m gpu tests` on a GPU machine)")
@pytest.mark.parametrize("nt", [4, 2])
@pytest.mark.parametrize("scale", [1.0, 0.127])
@pytest.mark.parametrize("mma_sums", [False, True])
def test_gpu_softmax_state_against_float64(nt, scale, mma_sums):
    """fp32 sums: O within 1e-5 and the LSE within 1e-4 (relative) of float64. MMA_SUMS: P is rounded to fp16
    (2^-11 relative a probability) for both O and l, so O is a mean with weights perturbed by <= 4.9e-4: O within
    2e-3 and the LSE within 1e-3 (absolute, natural log: log(1 + 4.9e-4) = 4.9e-4)."""
    rng = np.random.default_rng(nt)
    go = build(SPEC).launcher(f"nt{nt}" + ("_mma" if mma_sums else ""))
    tol_o, tol_lse = (2e-3, 1e-3) if mma_sums else (1e-5, 0.0)
    for name, s in cases(nt, rng).items():
        vals = rng.standard_normal((s.shape[0], s.shape[2])).astype(np.float32)
        ds, dv = torch.from_numpy(s).cuda(), torch.from_numpy(vals).cuda()
        o = torch.full((16,), float("nan"), device="cuda")
        lse = torch.full((16,), float("nan"), device="cuda")
        go((1, 1, 1), (32, 1, 1), (np.uint64(ds.data_ptr()), np.uint64(dv.data_ptr()), np.int32(s.shape[0]),
                                   np.float32(scale), np.uint64(o.data_ptr()), np.uint64(lse.data_ptr())))
        torch.cuda.synchronize()
        ref_o, ref_lse = reference(s, vals, scale)
        got_o, got_lse = o.cpu().double().numpy(), lse.cpu().double().numpy()
        fin = np.isfinite(ref_lse)
        assert np.array_equal(np.isfinite(got_lse), fin) and (got_lse[~fin] == -np.inf).all(), name
        assert (got_o[~fin] == 0).all(), f"{name}: rows with no key must give 0"
        err_o = np.linalg.norm(got_o[fin] - ref_o[fin]) / np.linalg.norm(ref_o[fin])
        assert err_o < tol_o, f"{name}: O relative error {err_o:.2e}"
        assert np.abs(got_lse[fin] - ref_lse[fin]).max() < tol_lse + 1e-4 * max(1.0, np.abs(ref_lse[fin]).max()), name
