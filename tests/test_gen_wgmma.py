"""cuda_src/wgmma_ops.cuh is what cupyflash._gen_wgmma writes, and covers the widths the wgmma family's tiles use."""
import re

from cupyflash import _gen_wgmma
from cupyflash.configs import FWD_TABLE, _entry_config


def test_the_generated_header_is_current():
    assert _gen_wgmma.path().read_text() == _gen_wgmma.header(), "run python -m cupyflash._gen_wgmma"


def test_every_width_the_tiles_use_is_generated():
    widths = set()
    for (family, kd), entries in FWD_TABLE.items():
        if family == "wgmma_sm90":
            widths |= {kd} | {_entry_config(e).block_n for e in entries}  # O += P V is kd wide, S = Q K^T block_n
    assert widths <= set(_gen_wgmma.WIDTHS), sorted(widths - set(_gen_wgmma.WIDTHS))


def test_each_instruction_names_all_its_accumulators_once():
    text = _gen_wgmma.header()
    for n in _gen_wgmma.WIDTHS:
        for t in _gen_wgmma.TYPES:
            ops = re.findall(rf'"wgmma\.mma_async\.sync\.aligned\.m64n{n}k16\.f32\.{t}\.{t} "\s*"\{{([^}}]*)\}}', text)
            assert len(ops) == 2, (n, t)  # ss and rs
            for regs in ops:
                assert regs.split(", ") == [f"%{i}" for i in range(n // 2)]
