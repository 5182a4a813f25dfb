"""cuda_src/wgmma_ops.cuh is what cupyflash._gen_wgmma writes, and covers the widths the wgmma family's tiles use."""
import re

from cupyflash import _gen_wgmma
from cupyflash.configs import BWD_TABLE, FWD_TABLE, _entry_config


def test_the_generated_header_is_current():
    assert _gen_wgmma.path().read_text() == _gen_wgmma.header(), "run python -m cupyflash._gen_wgmma"


def test_every_width_the_tiles_use_is_generated():
    widths = set()
    for (family, kd), entries in FWD_TABLE.items():
        if family == "wgmma_sm90":
            widths |= {kd} | {_entry_config(e).block_n for e in entries}  # O += P V is kd wide, S = Q K^T block_n
    assert widths <= set(_gen_wgmma.WIDTHS), sorted(widths - set(_gen_wgmma.WIDTHS))


def test_every_tf32_width_the_tiles_use_is_generated():
    widths = set()
    for (family, kd), entries in FWD_TABLE.items():
        if family == "wgmma_tf32":
            widths |= {kd} | {_entry_config(e).block_n for e in entries}
    for (family, kd), entries in BWD_TABLE.items():
        if family == "wgmma_tf32":  # S^T = K Q^T and dP^T = V dO^T: block_m queries wide
            widths |= {_entry_config(e).block_m for e in entries}
    assert widths and widths <= set(_gen_wgmma.TF32_WIDTHS), sorted(widths - set(_gen_wgmma.TF32_WIDTHS))


def test_each_instruction_names_all_its_accumulators_once():
    text = _gen_wgmma.header()
    for n in _gen_wgmma.WIDTHS:
        for t in _gen_wgmma.TYPES:
            ops = re.findall(rf'"wgmma\.mma_async\.sync\.aligned\.m64n{n}k16\.f32\.{t}\.{t} "\s*"\{{([^}}]*)\}}', text)
            assert len(ops) == 2, (n, t)  # ss and rs
            for regs in ops:
                assert regs.split(", ") == [f"%{i}" for i in range(n // 2)]


def test_each_tf32_instruction_names_all_its_accumulators_once():
    text = _gen_wgmma.header()
    for n in _gen_wgmma.TF32_WIDTHS:
        ops = re.findall(rf'"wgmma\.mma_async\.sync\.aligned\.m64n{n}k8\.f32\.tf32\.tf32 "\s*"\{{([^}}]*)\}}', text)
        assert len(ops) == 2, n  # ss and rs
        for regs in ops:
            assert regs.split(", ") == [f"%{i}" for i in range(n // 2)]


_TF32_KERNEL = r'''
namespace cf {
// One warpgroup: S (64 x N) = A (64 x 32 floats, K-major) B^T (N x 32, K-major), then D += P (registers) V^T.
template <int N>
__global__ void tf32_products(float* out, const unsigned* p) {
    using ATile = SwizzledTile<64, 32, float>;
    using BTile = SwizzledTile<N, 32, float>;
    __shared__ __align__(1024) unsigned char smem[ATile::BYTES + BTile::BYTES];
    const u32 a = smem_addr(smem), b = a + ATile::BYTES;
    float d[N / 8][4] = {};
    const unsigned frag[4] = {p[threadIdx.x], p[threadIdx.x + 128], p[threadIdx.x + 256], p[threadIdx.x + 384]};
    wgmma_fence();  // after the registers the products read are written
    for (int k0 = 0; k0 < 32; k0 += 8)
        WgmmaTf32Op<N>::ss(d, kmajor_desc(a + k0 * 4), kmajor_desc(b + k0 * 4), k0 > 0);
    WgmmaTf32Op<N>::rs(d, frag, kmajor_desc(b), 1);
    wgmma_commit();
    wgmma_wait<0>();
    for (int j = 0; j < N / 8; ++j)
        for (int e = 0; e < 4; ++e) out[(threadIdx.x * (N / 8) + j) * 4 + e] = d[j][e];
}
}  // namespace cf
'''


def test_the_tf32_instructions_compile_for_sm_90a():
    # the generated TF32 forms, as ptxas takes them (no transpose immediates; A from registers), on 32-column float
    # panels (SwizzledTile<.., float>) without serializing the products (C7515 raises in compile_report)
    from conftest import require_nvrtc

    require_nvrtc("the TF32 wgmma compile check")
    from cupyflash import _nvrtc
    from cupyflash._kernels import load_source

    names = [f"cf::tf32_products<{n}>" for n in (32, 64, 128)]
    report = _nvrtc.compile_report(load_source("wgmma.cuh") + _TF32_KERNEL, names, "sm_90a")
    assert all(r.spill_stores == 0 and r.spill_loads == 0 for r in report.values()), report
