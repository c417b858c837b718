"""The Hopper vocabulary's proof (issue 16): the wgmma + TMA bf16 GEMM (kernels/include/infernb/gemm_sm90.cuh).

CPU: the sm_90a specialization compiles with NVRTC in <= 3 s without spills, and its SASS (the whole cubin, read
with nvdisasm) issues HGMMA from the consumers and UTMALDG from the producer, with the register hand-over
(USETMAXREG); the spec is written for sm_90a only. GPU (an sm_90 device): against torch in fp32 on fresh random
inputs, output poisoned first; bad shapes raise before any launch."""
import re

import pytest
import torch

from infernb import CompileError, InputError
from infernb.jit import build, toolchain
from infernb.ops.gemm import TRAITS, gemm, gemm_spec
from infernb.testing import rel_error

gpu = pytest.mark.gpu
hopper = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                            reason="needs an sm_90 (Hopper) GPU")


def test_compiles_fast_without_spills_for_sm90a_only():
    k = build(gemm_spec(), "sm_90a", force=True)
    assert k.report.compile_seconds <= 3.0, k.report
    (r,) = k.report.kernels
    assert not r.spills and r.stack_frame == 0, r
    assert gemm_spec().targets("sm_90a") and not gemm_spec().targets("sm_80")
    with pytest.raises(CompileError, match="sm_90a"):
        build(gemm_spec(), "sm_80")


@pytest.mark.skipif(toolchain.nvdisasm_path() is None, reason="nvdisasm (pip install nvidia-cuda-nvdisasm)")
def test_sass_uses_hgmma_and_tma():
    text = toolchain.sass(build(gemm_spec(), "sm_90a").cubin)
    ops = re.findall(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", text)
    # four m64n256k16 per K block (BK 64), in the consumers' loop; the two tiles' TMA loads in the producer's
    assert ops.count("HGMMA") == TRAITS.bk // 16, ops.count("HGMMA")
    assert ops.count("UTMALDG") == 2
    assert ops.count("USETMAXREG") == 2 and "LDL" not in ops and "STL" not in ops
    hg = [i for i, op in enumerate(ops) if op == "HGMMA"]
    back = [i for i, op in enumerate(ops) if op == "BRA"]
    assert any(b > hg[-1] for b in back), "the HGMMAs sit in a loop"


def test_cpu_path_and_bad_input():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 96, generator=g).to(torch.bfloat16)
    b = torch.randn(48, 96, generator=g).to(torch.bfloat16)
    c = gemm(a, b)
    assert c.dtype == torch.bfloat16 and c.shape == (64, 48)
    assert rel_error(c, a.double() @ b.double().T) < 1e-2
    with pytest.raises(InputError, match="same K"):
        gemm(a, b[:, :64])
    with pytest.raises(InputError, match="bf16"):
        gemm(a.float(), b)
    with pytest.raises(InputError, match="out"):
        gemm(a, b, out=torch.empty(64, 47, dtype=torch.bfloat16))


@gpu
@hopper
@pytest.mark.parametrize("mnk", [(128, 256, 64), (256, 512, 192), (1024, 768, 4096), (384, 256, 1024)])
def test_gpu_gemm_against_torch(mnk):
    M, N, K = mnk
    g = torch.Generator(device="cuda").manual_seed(M + N + K)
    a = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
    b = torch.randn(N, K, device="cuda", generator=g).to(torch.bfloat16)
    out = torch.full((M, N), float("nan"), device="cuda", dtype=torch.bfloat16)
    gemm(a, b, out=out)
    torch.cuda.synchronize()
    ref = a.double() @ b.double().T
    assert torch.isfinite(out).all()
    assert rel_error(out, ref) < 1e-2       # bf16 output: relative rounding 2^-9
    # every tile and every accumulator register in place: row / column sums
    assert rel_error(out.double().sum(0), ref.sum(0)) < 1e-2 and rel_error(out.double().sum(1), ref.sum(1)) < 1e-2


@gpu
@hopper
def test_gpu_bad_shapes_raise_before_launch():
    a = torch.randn(100, 64, device="cuda").to(torch.bfloat16)
    b = torch.randn(256, 64, device="cuda").to(torch.bfloat16)
    with pytest.raises(InputError, match="multiple of 128"):
        gemm(a, b)
