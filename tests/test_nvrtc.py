"""Every kernel compiles with NVRTC for the architectures we ship for, without a GPU;
kernel sources are assembled into one text."""
import pytest

from cupyvae.cuda import loader, ops
from cupyvae.cuda.nvrtc import NvrtcError, compile_ptx, nvrtc_available

needs_nvrtc = pytest.mark.skipif(
    not nvrtc_available(),
    reason="NVRTC unavailable: install cuda-bindings and nvidia-cuda-nvrtc (the nvrtc extra)")

ARCHITECTURES = ["sm_80", "sm_90"]


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("kernel_file", loader.kernel_files())
def test_kernel_file_compiles(kernel_file, arch):
    try:
        compile_ptx(loader.load_source(kernel_file), arch=arch, name=kernel_file)
    except NvrtcError as error:
        pytest.fail(f"{kernel_file} does not compile for {arch}:\n{error.log}", pytrace=False)


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("spec", ops.ELEMENTWISE_SPECS, ids=lambda spec: spec.name)
def test_elementwise_spec_compiles(spec, arch):
    """An ElementwiseSpec's operation and preamble, as the equivalent raw kernel (CuPy wraps
    the same text in its own ElementwiseKernel template on the GPU)."""
    try:
        ptx = compile_ptx(spec.cuda_source(), arch=arch, name=f"{spec.name}.cu")
    except NvrtcError as error:
        pytest.fail(f"elementwise {spec.name} does not compile for {arch}:\n{error.log}",
                    pytrace=False)
    assert f".entry {spec.name}(" in ptx


@needs_nvrtc
def test_products_feeding_additions_are_never_fused():
    """Adam's products are __fmul_rn and the schedule's __dmul_rn: NVRTC must not contract
    them into FMAs (so GPU and emulator round alike whatever --fmad says)."""
    ptx = compile_ptx(ops.ADAM_UPDATE.cuda_source(), name="adam_update.cu")
    assert "fma.rn.f32" not in ptx and "mul.rn.f32" in ptx
    ptx = compile_ptx(loader.load_source("schedule"), name="schedule.cu")
    assert "mul.rn.f64" in ptx


@needs_nvrtc
def test_entry_points_keep_their_c_names():
    ptx = compile_ptx(loader.load_source("bernoulli"), name="bernoulli.cu")
    assert ".entry bernoulli_nll(" in ptx
    ptx = compile_ptx(loader.load_source("normal"), name="normal.cu")
    assert ".entry normal_fill(" in ptx


@needs_nvrtc
def test_broken_source_raises_with_the_compiler_log():
    broken = 'extern "C" __global__ void broken(float* out) { out[0] = undefined_name; }\n'
    with pytest.raises(NvrtcError) as raised:
        compile_ptx(broken, name="broken.cu")
    assert "undefined_name" in raised.value.log
    assert "broken.cu" in str(raised.value)
    assert raised.value.log in str(raised.value)


def test_kernel_files_are_found():
    assert {"bernoulli.cu", "normal.cu"} <= set(loader.kernel_files())
    assert (loader.kernel_dir() / "philox.cuh").is_file()


def test_load_source_inlines_each_local_header_once():
    source = loader.load_source("normal")
    assert '#include "' not in source
    assert source.count("begin philox.cuh") == 1
    assert "#pragma once" not in source
    twice = loader.inline_source('#include "philox.cuh"\n#include "philox.cuh"\n', "twice.cu")
    assert twice.count("__device__ inline uint4 philox4x32_10") == 1


def test_missing_header_names_file_and_line():
    with pytest.raises(loader.KernelSourceError, match=r'broken\.cu:2: .*"no_such_header\.cuh"'):
        loader.inline_source('// first line\n#include "no_such_header.cuh"\n', "broken.cu")


def test_nvrtc_options_never_use_fast_math():
    assert not any("fast" in option for option in loader.NVRTC_OPTIONS)
    assert "-std=c++17" in loader.NVRTC_OPTIONS
