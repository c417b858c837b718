"""infernb.jit: every specialization compiles without a GPU and without spills; the cache is robust."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import infernb
from infernb import CompileError, jit
from infernb.jit import cache as jcache
from infernb.jit.spec import KernelSpec, kernels_digest
from infernb.ops import kernel_specializations
from infernb.ops.build_all import build_all
from infernb.ops.merge import merge_spec


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERNB_CACHE_DIR", str(tmp_path / "cache"))
    jit.clear_memory_cache()
    yield tmp_path / "cache"
    jit.clear_memory_cache()


def test_every_specialization_compiles_for_ci_archs_without_spills():
    reports = build_all(jit.CI_ARCHS, progress=False)
    assert len(reports) == sum(s.targets(a) for s in kernel_specializations() for a in jit.CI_ARCHS) > 0
    assert {r.arch for r in reports} == set(jit.CI_ARCHS)
    for r in reports:
        assert r.kernels, r.spec_name
        for k in r.kernels:
            assert k.registers > 0, (r.spec_name, k.name)
            assert not k.spills, f"{r.spec_name}/{k.name} on {r.arch} spills: {k}"
            assert k.stack_frame == 0, f"{r.spec_name}/{k.name} on {r.arch} uses a stack frame"


def test_specialization_names_are_unique_and_readable():
    names = [s.name for s in kernel_specializations()]
    assert len(names) == len(set(names))
    assert "merge_states_bf16_hd128" in names


def test_cache_miss_then_hit(fresh_cache):
    spec = merge_spec(torch.bfloat16, 64)
    k1 = jit.build(spec, "sm_90a")
    assert not k1.report.cache_hit and k1.report.compile_seconds > 0
    assert jit.build(spec, "sm_90a") is k1                 # in-process memo
    jit.clear_memory_cache()
    k2 = jit.build(spec, "sm_90a")
    assert k2.report.cache_hit and k2.cubin == k1.cubin   # the bytes that were written
    assert k2.report.compile_seconds == k1.report.compile_seconds  # kept from the original compile
    assert len(list(fresh_cache.glob("*.ibk"))) == 1
    assert "cache hit" in str(k2.report) and "merge_states" in k2.report._repr_html_()
    k3 = jit.build(spec, "sm_80")                          # another arch is another entry
    assert not k3.report.cache_hit and k3.cubin != k1.cubin


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_entry_is_rebuilt(fresh_cache, damage):
    spec = merge_spec(torch.float16, 128)
    good = jit.build(spec, "sm_80")
    (path,) = fresh_cache.glob("*.ibk")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    else:
        path.write_bytes(b"not a cache entry")
    jit.clear_memory_cache()
    with pytest.warns(UserWarning, match="damaged"):
        k = jit.build(spec, "sm_80")
    assert not k.report.cache_hit and "corrupt" in k.report.note
    # NVRTC names internal-linkage symbols with a per-compile hash, so compare structure, not bytes
    assert len(k.cubin) == len(good.cubin) and k.lowered == good.lowered
    jit.clear_memory_cache()
    assert jit.build(spec, "sm_80").report.cache_hit      # the rebuilt entry is sound


def _rewrite_header(path, edit):
    """Rewrite an entry's JSON header with ``edit(meta)`` (a valid file, lengths adjusted, checksums untouched)."""
    import json
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[8:16])
    meta = json.loads(data[16:16 + n])
    edit(meta)
    header = json.dumps(meta).encode()
    path.write_bytes(data[:8] + struct.pack("<Q", len(header)) + header + data[16 + n:])


@pytest.mark.parametrize("damage", ["renamed key", "missing field", "null log", "altered entry point",
                                    "altered arch", "other kernel"])
def test_a_damaged_or_altered_header_is_rebuilt(fresh_cache, damage):
    """Issue 12, item 11: the header is checked as a whole (checksum and fields), not just the cubin."""
    spec = merge_spec(torch.float16, 128)
    good = jit.build(spec, "sm_80")
    (path,) = fresh_cache.glob("*.ibk")
    edits = {
        "renamed key": lambda m: m.__setitem__("lowerd", m.pop("lowered")),
        "missing field": lambda m: m.pop("compile_seconds"),
        "null log": lambda m: m.__setitem__("log", None),
        "altered entry point": lambda m: m["lowered"].__setitem__(next(iter(m["lowered"])), "_Z3fooPv"),
        "altered arch": lambda m: m.__setitem__("arch", "sm_90a"),
        "other kernel": lambda m: m.__setitem__("lowered", {"other": "_Z3fooPv"}),
    }
    _rewrite_header(path, edits[damage])
    jit.clear_memory_cache()
    with pytest.warns(UserWarning, match="damaged"):
        k = jit.build(spec, "sm_80")
    assert not k.report.cache_hit and k.lowered == good.lowered


def test_cached_cubins_are_whole_elf_files(fresh_cache):
    """Issue 12, item 12: the cubin is nvrtcGetCUBINSize bytes (CuPy's getCUBIN drops the last one): its ELF
    structures end exactly at its end, in memory and after a round trip through the disk cache."""
    import struct

    def elf_end(c):
        phoff, shoff = struct.unpack_from("<QQ", c, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", c, 0x36)
        end = max(64, phoff + phentsize * phnum, shoff + shentsize * shnum)
        for i in range(shnum):
            sh_type, = struct.unpack_from("<I", c, shoff + i * shentsize + 4)
            off, size = struct.unpack_from("<QQ", c, shoff + i * shentsize + 0x18)
            end = max(end, off + size) if sh_type != 8 else end          # SHT_NOBITS takes no file space
        for i in range(phnum):
            off, = struct.unpack_from("<Q", c, phoff + i * phentsize + 8)
            filesz, = struct.unpack_from("<Q", c, phoff + i * phentsize + 0x20)
            end = max(end, off + filesz)
        return end

    spec = merge_spec(torch.bfloat16, 64)
    k = jit.build(spec, "sm_90a")
    assert k.cubin[:4] == b"\x7fELF" and len(k.cubin) == elf_end(k.cubin)
    jit.clear_memory_cache()
    k2 = jit.build(spec, "sm_90a")
    assert k2.report.cache_hit and k2.cubin == k.cubin


def test_two_processes_compiling_at_once_both_succeed(fresh_cache):
    code = textwrap.dedent("""
        import sys, torch, infernb
        from infernb.ops.merge import merge_spec
        k = infernb.jit.build(merge_spec(torch.float32, 256), "sm_90a")
        print(len(k.cubin), k.report.cache_hit)
    """)
    env = dict(os.environ, INFERNB_CACHE_DIR=str(fresh_cache))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    sizes = {o[0].split()[0] for o in outs}
    assert len(sizes) == 1
    (path,) = fresh_cache.glob("*.ibk")
    assert jcache.read_entry(path) is not None
    assert not list(fresh_cache.glob("*.tmp"))


def test_compile_error_shows_generated_lines_and_origin(fresh_cache):
    spec = KernelSpec(family="merge_states", name="broken_demo", kernels=(),
                      preamble="constexpr float ok = 1.f;\nconstexpr float bad = not_defined * 2.f;\n",
                      preamble_origin=((2, "my_variant.py:12  return score * not_defined"),))
    with pytest.raises(CompileError) as ei:
        jit.build(spec, "sm_90a")
    msg = str(ei.value)
    assert "broken_demo" in msg and "sm_90a" in msg
    assert 'identifier "not_defined" is undefined' in msg
    assert "> " in msg and "constexpr float bad = not_defined * 2.f;" in msg   # the offending line, marked
    assert "constexpr float ok = 1.f;" in msg                                   # with context
    assert "generated from: my_variant.py:12" in msg
    assert ei.value.log and ei.value.source.startswith("// infernb generated")
    assert not list(fresh_cache.glob("*.ibk"))                                  # nothing cached


def test_compile_error_in_a_header_points_at_the_header(fresh_cache, tmp_path):
    spec = KernelSpec(family="merge_states", name="bad_inst",
                      kernels=(("k", "infernb::merge_states_kernel<float, 96, 100>"),))  # 100 threads: no tiling
    with pytest.raises(CompileError, match=r"kernels/include/infernb/merge_states.cuh:\d+: error") as ei:
        jit.build(spec, "sm_80")
    assert "detected during" in str(ei.value) and "HEAD_DIM=96, NUM_THREADS=100" in str(ei.value)


def test_unwritable_cache_keeps_the_compiled_kernel(tmp_path, monkeypatch):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    monkeypatch.setenv("INFERNB_CACHE_DIR", str(blocker / "cache"))
    jit.clear_memory_cache()
    with pytest.warns(UserWarning, match="could not write the kernel cache"):
        k = jit.build(merge_spec(torch.float16, 64), "sm_90a")
    assert k.cubin and "not cached" in k.report.note
    jit.clear_memory_cache()


def test_editing_a_header_in_a_live_session_recompiles(tmp_path, monkeypatch, fresh_cache):
    import shutil

    import infernb.jit.builder as jbuild
    import infernb.jit.compiler as jcompiler
    import infernb.jit.spec as jspec

    shutil.copytree(jspec.KERNELS_DIR, tmp_path / "kernels")
    monkeypatch.setattr(jspec, "KERNELS_DIR", tmp_path / "kernels")
    monkeypatch.setattr(jcompiler, "INCLUDE_DIR", tmp_path / "kernels" / "include")
    monkeypatch.setattr(jbuild, "SOURCE_CHECK_INTERVAL", 0.0)
    spec = merge_spec(torch.bfloat16, 256)
    k1 = jit.build(spec, "sm_80")
    assert jit.build(spec, "sm_80") is k1                       # unchanged sources: the fast path
    hdr = tmp_path / "kernels" / "include" / "infernb" / "merge_states.cuh"
    hdr.write_text(hdr.read_text().replace("float denom = 0.f;", "float denom = 0.0f;"))
    k2 = jit.build(spec, "sm_80")
    assert k2 is not k1 and not k2.report.cache_hit and k2.report.cache_key != k1.report.cache_key


def test_cache_key_covers_every_kernel_header(tmp_path, monkeypatch):
    import shutil

    import infernb.jit.spec as jspec

    shutil.copytree(jspec.KERNELS_DIR, tmp_path / "kernels")
    monkeypatch.setattr(jspec, "KERNELS_DIR", tmp_path / "kernels")
    d1 = kernels_digest()
    hdr = tmp_path / "kernels" / "include" / "infernb" / "common.cuh"
    hdr.write_text(hdr.read_text() + "\n// an edit in an included header\n")
    d2 = kernels_digest()
    assert d1 != d2
    keys = {jcache.cache_key("src", "sm_90a", ["-O3"], (13, 0), d) for d in (d1, d2)}
    assert len(keys) == 2
    assert jcache.cache_key("s", "sm_90a", [], (13, 0), d1, "tc-a") != jcache.cache_key("s", "sm_90a", [], (13, 0), d1, "tc-b")
    assert len(jit.toolchain.toolchain_fingerprint()) == 64
    assert jcache.cache_key("src", "sm_90a", ["-O3"], (13, 0), d1) != jcache.cache_key("src", "sm_90a", ["-O3"], (13, 1), d1)


def test_arch_normalization():
    assert jit.normalize_arch("90a") == "sm_90a" and jit.normalize_arch("8.0") == "sm_80"
    assert jit.normalize_arch("compute_90") == "sm_90"
    with pytest.raises(ValueError, match="arch"):
        jit.normalize_arch("hopper")


def test_build_all_cli_runs():
    out = subprocess.run([sys.executable, "-m", "infernb.ops.build_all", "--arch", "sm_90a"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert "0 kernel(s) spill" in out.stdout and "merge_states_bf16_hd128" in out.stdout


def test_launch_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    k = jit.build(merge_spec(torch.bfloat16, 128), "sm_90a")
    with pytest.raises(infernb.DeviceError, match="CUDA tensors"):
        k.launch("merge_state", (1, 1, 1), (128, 1, 1), (torch.zeros(1),))
