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
def test_products_feeding_additions_are_never_fused():
    """Adam's products are __fmul_rn and the schedule's __dmul_rn: NVRTC must not contract
    them into FMAs (so GPU and emulator round alike whatever --fmad says).  Compiled with
    contraction switched back on (the last option wins), since the project's default
    --fmad=false would hide a plain product."""
    contract = ("--fmad=true",)
    ptx = compile_ptx(ops.ADAM_UPDATE.cuda_source(), name="adam_update.cu", options=contract)
    assert "fma.rn.f32" not in ptx and "mul.rn.f32" in ptx
    ptx = compile_ptx(loader.load_source("schedule"), name="schedule.cu", options=contract)
    assert "mul.rn.f64" in ptx      # (libdevice cos/expm1/log1p use fma themselves)


@needs_nvrtc
def test_entry_points_keep_their_c_names():
    ptx = compile_ptx(loader.load_source("bernoulli"), name="bernoulli.cu")
    assert ".entry bernoulli_nll(" in ptx
    ptx = compile_ptx(loader.load_source("step"), name="step.cu")
    assert ".entry gather_rows(" in ptx and ".entry end_step(" in ptx


@needs_nvrtc
def test_broken_source_raises_with_the_compiler_log():
    broken = 'extern "C" __global__ void broken(float* out) { out[0] = undefined_name; }\n'
    with pytest.raises(NvrtcError) as raised:
        compile_ptx(broken, name="broken.cu")
    assert "undefined_name" in raised.value.log
    assert "broken.cu" in str(raised.value)
    assert raised.value.log in str(raised.value)


def test_kernel_files_are_found():
    assert {"bernoulli.cu", "linear.cu"} <= set(loader.kernel_files())
    assert (loader.kernel_dir() / "philox.cuh").is_file()


def test_load_source_inlines_each_local_header_once():
    source = loader.load_source("step")
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


# ------------------------------------------------------------------ the parity policy
CONTRACTIBLE = ('extern "C" __global__ void k(const float* a, const float* b, float* c)\n'
                '{ c[0] = a[0] * b[0] + c[0]; c[1] = fmaf(a[1], b[1], c[1]); }\n')


def _float_ops(ptx):
    return [line.split()[0] for line in ptx.splitlines()
            if line.strip().startswith(("fma.", "mul.", "add."))]


def test_every_way_cupy_compiles_gets_the_no_contraction_option():
    """RawModule (NVRTC_OPTIONS) and ElementwiseKernel (ELEMENTWISE_NVRTC_OPTIONS) alike:
    --fmad=false, the GPU side of the emulator's -ffp-contract=off."""
    assert "--fmad=false" in loader.NVRTC_OPTIONS
    assert "--fmad=false" in loader.ELEMENTWISE_NVRTC_OPTIONS
    assert not any("std" in option for option in loader.ELEMENTWISE_NVRTC_OPTIONS), \
        "CuPy picks the language standard of the code it generates around an operation"
    assert not any("fast" in option for option in loader.ELEMENTWISE_NVRTC_OPTIONS)


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_no_contraction_keeps_a_times_b_plus_c_as_written(arch):
    """With the project's options a * b + c is a rounded multiply then a rounded add, as
    on the emulator; an explicit fmaf stays one fused operation.  NVRTC's default
    (--fmad=true, the last option wins) would fuse both: the option is what makes the
    difference."""
    assert _float_ops(compile_ptx(CONTRACTIBLE, arch=arch)) == ["mul.rn.f32", "add.rn.f32",
                                                                 "fma.rn.f32"]
    assert _float_ops(compile_ptx(CONTRACTIBLE, arch=arch, options=("--fmad=true",))) == \
        ["fma.rn.f32", "fma.rn.f32"]


@needs_nvrtc
def test_the_gemm_keeps_its_explicit_fused_multiply_adds():
    ptx = compile_ptx(loader.load_source("linear"), name="linear.cu")
    assert ".entry linear_forward(" in ptx and ".entry linear_backward(" in ptx
    assert ptx.count("fma.rn.f32") >= 16, "the 4 x 4 micro-tile's fmaf must survive"


def _elementwise_specs():
    from cupyvae.cuda import ops

    return ops.elementwise_specs()


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("name", sorted(_elementwise_specs()))
def test_elementwise_spec_compiles(name, arch):
    """Each ElementwiseSpec's operation and preamble, as the grid-stride kernel its emulator
    twin runs (every non-raw input a scalar, as the launch builders pass them -- all but
    Adam's gradient, which the operation reads by value either way), with the same
    code-generation options; CuPy wraps the same operation in its own indexing code."""
    spec = _elementwise_specs()[name]
    scalars = frozenset(part.split()[-1] for part in spec.in_params.split(",")
                        if part.strip() and part.split()[0] != "raw")
    try:
        ptx = compile_ptx(spec.cuda_source(scalars), arch=arch, name=f"{name}.cu")
    except NvrtcError as error:
        pytest.fail(f"elementwise {name} does not compile for {arch}:\n{error.log}",
                    pytrace=False)
    assert f".entry {name}(" in ptx


def test_the_elementwise_specs_are_found():
    assert {"normal_fill", "gaussian_posterior_sample", "adam_update"} <= set(_elementwise_specs())
