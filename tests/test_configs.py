"""The tile table and the dispatcher (cupyflash.configs): pure Python, so tested without a GPU."""
import pytest

from cupyflash import configs
from hypothesis import given, settings, strategies as st

from cupyflash.problem import Variant

from cupyflash.configs import (FWD_TABLE, KERNEL_HEAD_DIMS, RESERVED_SMEM_PER_BLOCK, DeviceLimits,
                               NoConfigFits, TileConfig, all_fwd_variants, check_fwd_config, family_for,
                               fwd_smem_bytes, kernel_head_dim, select_config, select_fwd_config)

# Shared-memory limits of real (and one hypothetical) GPUs, as the CUDA attributes report them.
SMEM_48K = DeviceLimits(80, smem_per_block_optin=49152, smem_per_sm=65536, sm_count=100, name="48 KB")
SM86 = DeviceLimits(86, smem_per_block_optin=101376, smem_per_sm=102400, sm_count=84, name="sm_86")
A100 = DeviceLimits(80, smem_per_block_optin=166912, smem_per_sm=167936, sm_count=108, name="A100")
H100 = DeviceLimits(90, smem_per_block_optin=232448, smem_per_sm=233472, sm_count=132, name="H100")
DEVICES = (SMEM_48K, SM86, A100, H100)
TURING = DeviceLimits(75, smem_per_block_optin=65536, smem_per_sm=65536, sm_count=40, name="T4")


def table(head_dim):
    return tuple(configs._entry_config(e) for e in FWD_TABLE[("mma_sm80", kernel_head_dim(head_dim))])


def fits_block(config, kd, limits):
    return fwd_smem_bytes(config, kd) <= limits.smem_per_block_optin


def fits_residency(config, kd, limits):
    """Computed here, not with configs.fits, so a bug there cannot hide itself."""
    per_block = fwd_smem_bytes(config, kd) + RESERVED_SMEM_PER_BLOCK
    return fits_block(config, kd, limits) and config.blocks_per_sm * per_block <= limits.smem_per_sm


@settings(max_examples=300, deadline=None)
@given(head_dim=st.integers(1, 32).map(lambda i: 8 * i), causal=st.booleans(),
       limits=st.sampled_from(DEVICES))
def test_select_returns_a_fitting_table_entry(head_dim, causal, limits):
    kd = kernel_head_dim(head_dim)
    cfg = select_fwd_config(limits, head_dim, causal, family="mma_sm80")
    assert isinstance(cfg, TileConfig)
    assert cfg in table(head_dim)
    assert fits_block(cfg, kd, limits)
    assert select_fwd_config(limits, head_dim, causal, family="mma_sm80") == cfg  # deterministic
    if limits.compute_capability < 90 or kd not in (64, 128, 192, 256):
        assert select_fwd_config(limits, head_dim, causal) == cfg  # no other family runs it there
    first = table(head_dim)[0]
    if fits_residency(first, kd, limits):
        assert cfg == first  # the tuned best tile wins whenever it fits as tuned
    if fits_residency(cfg, kd, limits):
        # Preference order: no earlier entry fitted its residency.
        earlier = table(head_dim)[:table(head_dim).index(cfg)]
        assert not any(fits_residency(c, kd, limits) for c in earlier)


@pytest.mark.parametrize("head_dim, expected", [
    (1, 32), (8, 32), (32, 32), (33, 64), (64, 64), (72, 96), (120, 128), (128, 128), (129, 160),
    (200, 224), (248, 256), (256, 256)])
def test_kernel_head_dim_rounds_up(head_dim, expected):
    assert kernel_head_dim(head_dim) == expected


@given(st.integers(1, 256))
def test_kernel_head_dim_is_the_smallest_instantiated_dim_that_holds_it(head_dim):
    kd = kernel_head_dim(head_dim)
    assert kd in KERNEL_HEAD_DIMS and kd >= head_dim
    assert all(d < head_dim for d in KERNEL_HEAD_DIMS if d < kd)


@pytest.mark.parametrize("head_dim", [257, 264, 512])
def test_kernel_head_dim_rejects_over_256(head_dim):
    with pytest.raises(ValueError, match=rf"at most 256.*{head_dim}"):
        kernel_head_dim(head_dim)


@pytest.mark.parametrize("config, kd, expected", [
    (TileConfig("mma_sm80", 128, 32, 4, stages=2), 128, (128 + 2 * 2 * 32) * (128 + 8) * 2),  # 69632
    (TileConfig("mma_sm80", 128, 32, 4, stages=3), 128, (128 + 2 * 3 * 32) * (128 + 8) * 2),  # stages count
    (TileConfig("mma_sm80", 64, 64, 4), 64, (64 + 2 * 2 * 64) * (64 + 8) * 2),
    (TileConfig("mma_sm80", 16, 16, 1), 256, (16 + 2 * 2 * 16) * (256 + 8) * 2)])
def test_fwd_smem_bytes_hand_computed(config, kd, expected):
    assert fwd_smem_bytes(config, kd) == expected


def test_h100_forward_prefers_wgmma_where_it_has_tiles():
    for kd in KERNEL_HEAD_DIMS:
        cfg = select_fwd_config(H100, kd)
        assert cfg.family == ("wgmma_sm90" if kd % 64 == 0 else "mma_sm80"), (kd, cfg)
        assert select_fwd_config(A100, kd).family == "mma_sm80"
    assert family_for(H100, kind="fwd", head_dim=128).name == "wgmma_sm90"
    assert family_for(H100, kind="bwd", head_dim=128).name == "mma_sm80"
    assert family_for(H100).name == "mma_sm80"  # the backward's and the helpers' family: one that has every kind
    # sm_90a code runs on compute capability 9.0 only
    assert select_fwd_config(DeviceLimits(100, 232448, 233472, 148), 128).family == "mma_sm80"


def test_float32_tf32_takes_the_wgmma_tf32_tiles_on_the_h100():
    # precision "tf32" at head dims 64 and 128 (and the dims padded to them): TF32 wgmma with a producer and bulk
    # copies; "highest" with a producer's cp.async (its threads split what they copy), one consumer warpgroup at 128;
    # biases, masks, dropout, packed rows and other head dims stay on mma_tf32; not on the A100
    for hd, kd in ((64, 64), (40, 64), (100, 128), (128, 128)):
        config = select_config("fwd", H100, hd, variant=Variant("float32", "band", precision="tf32", softcap=True))
        assert config.family == "wgmma_tf32" and config.tma and config.producer_warps == 4, (hd, config)
        configs.check_config("fwd", config, H100, kd, Variant("float32", "band", precision="tf32", softcap=True))
    for hd in (40, 64, 100, 128):
        config = select_config("fwd", H100, hd, variant=Variant("float32", "band", precision="highest", alibi=True))
        assert config.family == "wgmma_tf32" and not config.tma and config.producer_warps == 4, (hd, config)
    for variant in (Variant("float32", precision="highest", bias="float32"),
                    Variant("float32", precision="tf32", bias="float32"),
                    Variant("float32", precision="tf32", bool_mask=True), Variant("float32", precision="tf32",
                                                                                  dropout=True),
                    Variant("float32", precision="tf32", rows="packed")):
        assert select_config("fwd", H100, 64, variant=variant).family == "mma_tf32", variant
    tf32 = Variant("float32", precision="tf32")
    assert select_config("fwd", H100, 32, variant=tf32).family == "mma_tf32"
    assert select_config("fwd", H100, 192, variant=tf32).family == "mma_tf32"
    assert select_config("fwd", A100, 64, variant=tf32).family == "mma_tf32"
    assert family_for(H100, tf32).name == "mma_tf32"  # the backward and the helpers


def test_bulk_copy_tiles_lead_on_dense_and_packed_rows():
    # TMA tiles (cupyflash/_tma.py) need a producer warpgroup; packed rows take the same tile as dense ones (the
    # kernel reads each entry at its offset and zeroes the values its last box reads past the entry's end)
    for kd in (64, 128, 192, 256):
        dense = select_fwd_config(H100, kd)
        assert dense.tma and dense.producer_warps == 4, (kd, dense)
        for mask in ("none", "band"):
            packed = select_config("fwd", H100, kd, False, Variant("bfloat16", mask, rows="packed"))
            assert packed == select_config("fwd", H100, kd, False, Variant("bfloat16", mask)), (kd, packed)
    for (family, kd), entries in configs.FWD_TABLE.items():
        for entry in entries:
            config = configs._entry_config(entry)
            assert not config.tma or (family.startswith("wgmma_") and config.producer_warps), (family, kd, config)
            assert not config.persistent or config.tma, (family, kd, config)  # tested and measured only with TMA


def test_decode_tiles_serve_short_query_rows_only():
    # When.max_seqlen_q: the 64-row tile serves problems of at most 64 query rows, and only when the length is known
    kd = 64
    decode = select_config("fwd", H100, kd, seqlen_q=1)
    assert decode.block_m == 64 and decode.tma and decode.producer_warps == 4, (kd, decode)
    assert select_config("fwd", H100, kd, seqlen_q=64) == decode
    assert select_config("fwd", H100, kd, seqlen_q=65) != decode  # the short rows' tile from 65 rows
    long = select_config("fwd", H100, kd, seqlen_q=2049)
    assert long.block_m > 64 and long == select_config("fwd", H100, kd)  # unknown length: the long rows' tile
    assert decode in configs.candidates("fwd", H100, kd)  # forced configs may take it at any length
    check_fwd_config(decode, H100, kd)
    # the variants the producer tiles avoid take the tiles after it
    assert select_config("fwd", H100, kd, variant=Variant("bfloat16", rows="packed"), seqlen_q=1) == decode
    assert select_config("fwd", H100, kd, variant=Variant("bfloat16", bias="float32"), seqlen_q=1).block_m > 64
    for kd in (128, 192, 256):  # no decode tile there (at 128 it lost to the lead on the H100)
        assert select_config("fwd", H100, kd, seqlen_q=1) == select_config("fwd", H100, kd), kd
    assert select_config("fwd", A100, 64, seqlen_q=1) == select_config("fwd", A100, 64)  # wgmma tiles only


def test_short_rows_at_64_take_two_blocks_an_sm():
    # at most 2048 query rows (and more than 64): 64x128 with overlapped consumers, two blocks an SM, for plain
    # attention, band masks, packed rows and block-sparse masks (64 rows divide their blocks); biases, masks read in
    # their tiles, softcap and ALiBi keep their long-row tiles; unknown lengths take the long rows' tiles
    short = select_config("fwd", H100, 64, seqlen_q=2048)
    assert (short.block_m, short.block_n, short.blocks_per_sm, short.overlap, short.tma) == (64, 128, 2, True, True)
    assert select_config("fwd", H100, 64, seqlen_q=65) == short
    assert select_config("fwd", H100, 64, seqlen_q=2049) == select_config("fwd", H100, 64)
    check_fwd_config(short, H100, 64)
    for variant in (Variant("bfloat16", "band"), Variant("float16", rows="packed"),
                    Variant("bfloat16", bool_mask=True, mask_blocks=True),
                    Variant("bfloat16", "band", bool_mask=True, mask_blocks=True)):
        assert select_config("fwd", H100, 64, variant=variant, seqlen_q=1024) == short, variant
    for variant in (Variant("bfloat16", softcap=True), Variant("bfloat16", alibi=True),
                    Variant("bfloat16", bias="bfloat16"), Variant("bfloat16", bool_mask=True),
                    Variant("bfloat16", bool_mask=True, mask_blocks=True, softcap=True)):
        assert select_config("fwd", H100, 64, variant=variant, seqlen_q=1024) == select_config(
            "fwd", H100, 64, variant=variant), variant
    assert configs.row_lengths("fwd") == (None, 64, 2048) and configs.row_lengths("bwd") == (None,)
    for kd in (128, 192, 256):
        assert select_config("fwd", H100, kd, seqlen_q=1024) == select_config("fwd", H100, kd), kd


def test_block_masks_take_the_bulk_copy_producer_tiles_at_64_and_128():
    # a block-sparse mask's walk rides with the key tiles of the bulk-copy producer: 128x128 tiles, which divide
    # the usual power-of-two blocks; a bias beside it, a mask read in its tiles and plain attention keep their picks
    for kd in (64, 128):
        for extra in ({}, dict(mask="band", softcap=True, alibi=True)):
            config = select_config("fwd", H100, kd, variant=Variant("bfloat16", bool_mask=True, mask_blocks=True,
                                                                     **extra))
            assert config.producer_warps and config.tma and (config.block_m, config.block_n) == (128, 128), config
            assert not config.persistent
        variant = Variant("bfloat16", bool_mask=True, mask_blocks=True, bias="float32")
        assert not select_config("fwd", H100, kd, variant=variant).producer_warps, (kd, variant)
    assert select_config("fwd", H100, 64).block_m == 192  # plain attention keeps its lead


def test_16_bit_biases_take_the_bulk_copy_producer_tiles_at_64_and_128():
    # a 16-bit additive bias's tiles ride with the key tiles of the bulk-copy producer (bulk_bias.cuh), in the
    # kernel's SwizzledBias policy and its unpadded smem; a float32 bias, a bias with a boolean mask and head dims
    # whose stages do not fit a bias tile keep the all-warps tiles
    from cupyflash.families import BY_NAME, bulk_bias

    for kd in (64, 128):
        for extra in ({}, dict(mask="band", softcap=True, alibi=True), dict(bias="float16")):
            variant = Variant("float16", **{"bias": "bfloat16", **extra})
            for seqlen_q in (None, 1):
                config = select_config("fwd", H100, kd, variant=variant, seqlen_q=seqlen_q)
                assert config.producer_warps and config.tma and not config.persistent, config
                assert bulk_bias(config, variant)
                name = BY_NAME[config.family].kernel_name("fwd", config, kd, variant)
                assert f"cf::SwizzledBias<{'cf::bf16' if variant.bias == 'bfloat16' else 'cf::f16'}>" in name
                tiles = BY_NAME[config.family].smem_bytes("fwd", config, kd, None)
                assert configs.smem_bytes("fwd", config, kd, variant) == tiles + 2 * config.block_m * config.block_n \
                    * config.stages
        for variant in (Variant("bfloat16", bias="float32"), Variant("bfloat16", bias="bfloat16", bool_mask=True),
                        Variant("bfloat16", bias="bfloat16", bool_mask=True, mask_blocks=True)):
            config = select_config("fwd", H100, kd, variant=variant)
            assert not config.producer_warps and not bulk_bias(config, variant), (kd, variant)
    for kd in (192, 256):
        assert not select_config("fwd", H100, kd, variant=Variant("bfloat16", bias="bfloat16")).producer_warps


def test_masks_read_in_their_tiles_take_the_bulk_copy_producer_tiles_at_64_and_128():
    # a boolean mask read in the tiles it cuts comes with the key tiles too (bulk_bias.cuh SwizzledBias<mask8>):
    # tiles of whole 128-key panels, the walk entries in a 1024-byte header a stage; with a bias beside it, not
    from cupyflash.families import BY_NAME, bulk_bias

    for kd in (64, 128):
        for extra in ({}, dict(mask="band", softcap=True, alibi=True)):
            variant = Variant("float16", bool_mask=True, **extra)
            for seqlen_q in (None, 1):
                config = select_config("fwd", H100, kd, variant=variant, seqlen_q=seqlen_q)
                assert config.producer_warps and config.tma and config.block_n == 128, config
                assert bulk_bias(config, variant)
                assert "cf::SwizzledBias<cf::mask8>" in BY_NAME[config.family].kernel_name("fwd", config, kd, variant)
                tiles = BY_NAME[config.family].smem_bytes("fwd", config, kd, None)
                assert configs.smem_bytes("fwd", config, kd, variant) == tiles + config.stages * (
                    1024 + config.block_m * config.block_n)
        assert not bulk_bias(select_config("fwd", H100, kd, variant=Variant("bfloat16", bool_mask=True,
                                                                              bias="float16")),
                             Variant("bfloat16", bool_mask=True, bias="float16"))
    for kd in (192, 256):
        assert not select_config("fwd", H100, kd, variant=Variant("bfloat16", bool_mask=True)).producer_warps


def test_a_row_limit_must_be_met_by_a_known_length():
    entry = configs.When(configs._w(64, 128, producer=True), max_seqlen_q=64)
    assert configs._entry_serves_rows(entry, 64) and configs._entry_serves_rows(entry, configs.EVERY_LENGTH)
    assert not configs._entry_serves_rows(entry, 65) and not configs._entry_serves_rows(entry, None)
    assert configs._entry_serves_rows(configs.When(configs._w(128, 128)), None)


def test_every_family_that_runs_a_problem_is_a_candidate_and_may_be_forced():
    both = configs.candidates("fwd", H100, 128)
    assert {c.family for c in both} == {"wgmma_sm90", "mma_sm80"} and both[0].family == "wgmma_sm90"
    for config in both:
        check_fwd_config(config, H100, 128)
    with pytest.raises(ValueError, match="not a forward candidate"):
        check_fwd_config(configs._entry_config(configs.FWD_TABLE[("wgmma_sm90", 128)][0]), A100, 128)
    with pytest.raises(NoConfigFits, match="wgmma_sm90 family has no fwd kernel for head dim 96"):
        select_fwd_config(H100, 96, family="wgmma_sm90")


def test_h100_head_dim_128_runs_two_blocks_per_sm():
    cfg = select_fwd_config(H100, 128, family="mma_sm80")
    assert cfg.blocks_per_sm == 2
    assert 2 * (fwd_smem_bytes(cfg, 128) + RESERVED_SMEM_PER_BLOCK) <= H100.smem_per_sm


def test_a_tuned_tile_at_one_block_beats_a_fallback_at_its_residency():
    # sm_86 at head dim 128: two blocks of the first entry do not fit an SM, and no other tuned entry fits its
    # residency; the first entry at one block per SM is still preferred over the small fallback tiles.
    tbl, first = table(128), table(128)[0]
    assert first.blocks_per_sm == 2 and fits_block(first, 128, SM86)
    assert not fits_residency(first, 128, SM86)
    assert not any(fits_residency(c, 128, SM86) for c in tbl if c not in configs._SMALL)
    assert any(fits_residency(c, 128, SM86) for c in configs._SMALL)
    assert select_fwd_config(SM86, 128) == first


def test_a_tuned_tile_that_fits_its_residency_beats_an_earlier_one_that_does_not(monkeypatch):
    big = TileConfig("mma_sm80", 128, 128, 4, blocks_per_sm=2)  # 92160 bytes at head dim 64
    small = TileConfig("mma_sm80", 128, 64, 4, blocks_per_sm=2)  # 55296
    monkeypatch.setitem(FWD_TABLE, ("mma_sm80", 64), (big, small) + configs._SMALL)
    limits = DeviceLimits(86, smem_per_block_optin=101376, smem_per_sm=2 * (55296 + 1024), sm_count=1)
    assert fits_block(big, 64, limits) and not fits_residency(big, 64, limits)
    assert select_fwd_config(limits, 64) == small
    # With room for two of the big tile, the first entry wins again.
    roomy = DeviceLimits(86, smem_per_block_optin=101376, smem_per_sm=2 * (92160 + 1024), sm_count=1)
    assert select_fwd_config(roomy, 64) == big


def test_without_any_residency_fit_the_first_entry_that_fits_is_chosen(monkeypatch):
    # The real tables end in 1-block tiles, so this branch needs a table of 2-block tiles only.
    too_big = TileConfig("mma_sm80", 128, 128, 4, blocks_per_sm=2)  # 92160 bytes at head dim 64
    middle = TileConfig("mma_sm80", 128, 64, 4, blocks_per_sm=2)  # 55296
    small = TileConfig("mma_sm80", 64, 32, 4, blocks_per_sm=2)  # 27648: two need 57344 with the reserve
    monkeypatch.setitem(FWD_TABLE, ("mma_sm80", 64), (too_big, middle, small))
    limits = DeviceLimits(80, smem_per_block_optin=57000, smem_per_sm=57000, sm_count=1)
    assert not any(fits_residency(c, 64, limits) for c in (too_big, middle, small))
    assert select_fwd_config(limits, 64) == middle


def test_check_fwd_config_accepts_a_fitting_table_entry():
    for kd in KERNEL_HEAD_DIMS:
        check_fwd_config(select_fwd_config(H100, kd), H100, kd)  # must not raise
    check_fwd_config(table(128)[-1], SMEM_48K, 120)  # a problem head dim that is not a kernel one
    # A forced 2-block tile only has to fit one block: sm_86 runs table(128)[0] at 1 block/SM.
    assert not fits_residency(table(128)[0], 128, SM86)
    check_fwd_config(table(128)[0], SM86, 128)


def test_check_fwd_config_rejects_a_config_from_another_head_dims_table():
    cfg = TileConfig("mma_sm80", 128, 128, 4, blocks_per_sm=2)
    assert cfg in table(64) and cfg not in table(128)
    with pytest.raises(ValueError, match="not a forward candidate for head dim 128"):
        check_fwd_config(cfg, H100, 128)
    # Same tiles but a different residency is a different kernel instance.
    with pytest.raises(ValueError, match="not a forward candidate"):
        check_fwd_config(TileConfig("mma_sm80", 128, 32, 4, blocks_per_sm=1), H100, 128)


def test_check_fwd_config_rejects_a_config_too_big_for_the_device():
    cfg = table(128)[0]  # 69632 bytes > 48 KB
    with pytest.raises(ValueError, match=r"69632 bytes.*49152"):
        check_fwd_config(cfg, SMEM_48K, 128)


def test_all_fwd_variants_covers_each_table_entry_once():
    variants = list(all_fwd_variants())
    assert len(variants) == len(set(variants))
    for key, entries in FWD_TABLE.items():
        assert {c for f, kd, c in variants if (f, kd) == key} == set(map(configs._entry_config, entries))
    assert {(f, kd) for f, kd, _ in variants} == set(FWD_TABLE)
    # Every instantiated head dim has a table, else select_fwd_config would raise KeyError.
    assert {kd for _, kd in FWD_TABLE} == set(KERNEL_HEAD_DIMS)


def test_all_fwd_variants_drops_repeated_entries(monkeypatch):
    a, b = TileConfig("mma_sm80", 64, 32, 4), TileConfig("mma_sm80", 16, 16, 1)
    monkeypatch.setitem(FWD_TABLE, ("mma_sm80", 32), (a, b, a))
    assert [c for f, kd, c in all_fwd_variants() if kd == 32 and f == "mma_sm80"] == [a, b]


def test_nothing_fits_raises_no_config_fits_with_numbers():
    tiny = DeviceLimits(80, smem_per_block_optin=8192, smem_per_sm=65536, sm_count=1)
    smallest = min(fwd_smem_bytes(c, 64) for c in table(64))
    with pytest.raises(NoConfigFits) as info:
        select_fwd_config(tiny, 64)
    assert isinstance(info.value, ValueError)  # callers may catch ValueError
    msg = str(info.value)
    assert "head dim 64" in msg and "8192" in msg and f"smallest needs {smallest}" in msg


def test_pre_ampere_is_refused_naming_compute_capability():
    for call in (lambda: family_for(TURING), lambda: select_fwd_config(TURING, 64),
                 lambda: check_fwd_config(table(64)[-1], TURING, 64)):
        with pytest.raises(NoConfigFits, match=r"compute capability 8\.0.*7\.5"):
            call()
    assert family_for(SM86).name == "mma_sm80" and family_for(H100).name == "mma_sm80"
    assert family_for(H100, kind="fwd").name == "wgmma_sm90"


# ---- backward tables ----

BWD_DEVICES = (SM86, A100, H100)  # every sm_80+ GPU has at least 99 KB per block


def test_bwd_smem_bytes_hand_computed():
    # K, V: 2 x 128 x 136 x 2; P^T, dS^T: 2 x 128 x 72 x 2; Q, dO: 2 stages x 2 x 64 x 136 x 2; lse2, delta rows.
    config = TileConfig("mma_sm80", 64, 128, 8, 2, 1, 2)
    assert configs.bwd_smem_bytes(config, 128) == 69632 + 36864 + 69632 + 1024


@pytest.mark.parametrize("kind", ["bwd", "bwd_dq"])
@pytest.mark.parametrize("limits", BWD_DEVICES, ids=lambda l: l.name)
@pytest.mark.parametrize("head_dim", range(8, 257, 8))
def test_every_backward_kind_has_a_fitting_config(kind, limits, head_dim):
    config = configs.select_config(kind, limits, head_dim)
    assert configs.smem_bytes(kind, config, kernel_head_dim(head_dim)) <= limits.smem_per_block_optin


@pytest.mark.parametrize("kd,config", [(kd, c) for _f, kd, c in configs.all_variants("bwd")],
                         ids=lambda x: str(x))
def test_dkdv_configs_satisfy_the_kernels_warp_grid(kd, config):
    """The static_asserts of flash_bwd_dkdv_kernel, restated: a config that breaks one would fail to compile."""
    from cupyflash.families import BY_NAME

    # the warps that own key rows: all, or all but a helper warpgroup (wgmma_tf32, one warpgroup more than the keys)
    math_warps = config.warps - 4 * BY_NAME[config.family].helper_warpgroup(config)
    key_warps = math_warps // config.d_split
    assert math_warps % config.d_split == 0 and config.block_n % (16 * key_warps) == 0
    assert (config.block_m // config.d_split) % 16 == 0 and config.block_m % config.d_split == 0
    assert (kd // config.d_split) % 16 == 0
    if config.family == "wgmma_tf32":  # warpgroups: 16 key rows a warp; dK^T, dV^T in 64-row products, unsplit
        assert config.block_n == 16 * math_warps and config.d_split == 1 and kd % 64 == 0
        assert config.block_m % 16 == 0


def test_h100_backward_head_dim_128_uses_32_key_rows_per_warp():
    config = configs.select_config("bwd", H100, 128)
    assert (config.block_m, config.block_n, config.warps, config.d_split) == (64, 128, 8, 2)
    assert config.block_n // (config.warps // config.d_split) == 32


@pytest.mark.parametrize("seqlen_q,seqlen_k,causal,expected", [
    (2048, 2048, False, True), (1024, 1024, False, False), (4096, 4096, True, True), (2048, 2048, True, False),
    (512, 8192, False, True), (1, 1, False, False)])
def test_atomic_dq_only_for_large_problems(seqlen_q, seqlen_k, causal, expected):
    assert configs.use_atomic_dq(H100, 128, seqlen_q, seqlen_k, causal) is expected


def test_float32_takes_atomic_dq_from_smaller_problems():
    # the dQ kernel's recomputed products cost more in float32: atomics from 1024 x 1024 causal pairs
    for precision in ("tf32", "highest"):
        variant = Variant("float32", precision=precision)
        assert configs.use_atomic_dq(H100, 128, 1024, 1024, True, variant) is True
        assert configs.use_atomic_dq(H100, 64, 512, 512, False, variant) is False
    assert configs.use_atomic_dq(H100, 128, 1024, 1024, True) is False  # 16-bit: from 2048 x 2048


def test_atomic_dq_follows_the_table_per_head_dim(monkeypatch):
    assert configs.use_atomic_dq(H100, 192, 8192, 8192, False) is False  # the separate kernel measured faster
    monkeypatch.setitem(configs.BWD_ATOMIC_DQ, ("mma_sm80", 128), False)
    assert configs.use_atomic_dq(H100, 128, 8192, 8192, False) is False


# ---- conditional entries (variants) ----

SCORE_MODS = [Variant(dtype, mask, softcap, alibi) for dtype in ("float16", "bfloat16") for mask in ("none", "band")
              for softcap, alibi in ((True, False), (False, True), (True, True))]


@pytest.mark.parametrize("kind", ["fwd", "bwd", "bwd_dq"])
@pytest.mark.parametrize("limits", BWD_DEVICES, ids=lambda l: l.name)
@pytest.mark.parametrize("head_dim", [1, 12, 59, 64, 111, 128, 200, 256])
def test_score_modifier_variants_skip_entries_that_exclude_them(kind, limits, head_dim):
    kd = kernel_head_dim(head_dim)
    for variant in SCORE_MODS:
        excluded = {e.config for e in configs.TABLES[kind][("mma_sm80", kd)]
                    if isinstance(e, configs.When) and not e.allows(variant, limits)}
        config = configs.select_config(kind, limits, head_dim, variant=variant)
        assert config not in excluded
        assert config in configs.candidates(kind, limits, head_dim, variant)
        for entry in excluded:
            with pytest.raises(ValueError, match="score modifiers"):
                configs.check_config(kind, entry, limits, head_dim, variant)


def test_when_excludes_only_the_combinations_it_names():
    entry = configs.When(configs.TileConfig("mma_sm80", 128, 128, 4), avoid=("softcap",))
    assert entry.allows(None) and entry.allows(Variant("float16", "band"))
    assert entry.allows(Variant("float16", alibi=True))
    assert not entry.allows(Variant("float16", softcap=True))
    assert not entry.allows(Variant("float16", softcap=True, alibi=True))
    unpacked = configs.When(configs.TileConfig("mma_sm80", 128, 128, 4), avoid=("packed",))
    assert unpacked.allows(Variant("float16", "band", True, True))
    assert not unpacked.allows(Variant("float16", rows="packed"))
    narrow = configs.When(configs.TileConfig("mma_sm80", 128, 128, 4), avoid=("fp32_bias+mask",))
    assert narrow.allows(Variant("float16", bias="float32")) and narrow.allows(Variant("float16", bool_mask=True))
    assert narrow.allows(Variant("float16", bias="bfloat16", bool_mask=True))
    assert not narrow.allows(Variant("float16", bias="float32", bool_mask=True))
    both = configs.When(configs.TileConfig("mma_sm80", 128, 128, 4), avoid=("band+softcap+mask", "dbias"))
    assert both.allows(Variant("float16", softcap=True, bool_mask=True))  # not the band mask
    assert not both.allows(Variant("float16", "band", softcap=True, bool_mask=True))
    assert not both.allows(Variant("float16", bias="bfloat16", dbias=True))
    assert both.allows(Variant("float16", bias="bfloat16"))


def test_when_rejects_unknown_features():
    with pytest.raises(ValueError, match="unknown features.*'sofcap'"):
        configs.When(configs.TileConfig("mma_sm80", 128, 128, 4), avoid=("sofcap+alibi",))


def test_every_feature_is_true_of_some_variant_and_false_of_plain():
    plain = Variant("float16")
    full = Variant("float16", "band", True, True, "dense", "float32", True, True, dropout=True)
    blocks = Variant("float16", bias="float32", bool_mask=True, mask_blocks=True)
    for name, has in configs.FEATURES.items():
        assert not has(plain), name
        assert has(full) or name in ("packed", "block_mask", "tf32", "highest"), name
    assert configs.FEATURES["packed"](Variant("float16", rows="packed"))
    assert configs.FEATURES["tf32"](Variant("float32", precision="tf32"))
    assert not configs.FEATURES["tf32"](Variant("float32", precision="highest"))
    assert configs.FEATURES["highest"](Variant("float32", precision="highest"))
    assert not configs.FEATURES["highest"](Variant("float32", precision="tf32"))
    assert configs.FEATURES["block_mask"](blocks) and not configs.FEATURES["mask"](blocks)
    assert not configs.FEATURES["block_mask"](full)


def test_h100_head_dim_64_forward_uses_128x128_except_with_softcap():
    plain = select_fwd_config(H100, 64, family="mma_sm80")
    assert (plain.block_m, plain.block_n) == (128, 128)
    softcap = configs.select_config("fwd", H100, 64, variant=Variant("bfloat16", softcap=True), family="mma_sm80")
    assert (softcap.block_m, softcap.block_n) == (128, 64)
    alibi = configs.select_config("fwd", H100, 64, variant=Variant("bfloat16", "band", alibi=True),
                                  family="mma_sm80")
    assert (alibi.block_m, alibi.block_n) == (128, 128)


@pytest.mark.parametrize("head_dim", [0, -8, 1.5, "64", None])
def test_kernel_head_dim_rejects_non_positive_and_non_ints(head_dim):
    with pytest.raises(ValueError, match="head dim"):
        kernel_head_dim(head_dim)


# ---- grouped-query backward: splitting a K/V head's group over blocks ----

def test_kv_splits_fill_the_gpu_and_bound_the_walk_with_divisors_of_the_group():
    sms = H100.sm_count
    assert configs.kv_splits(H100, 8 * sms, 4, 16) == 1  # GQA 4:1 at 2k: 64 steps per block, 8 blocks per SM
    assert configs.kv_splits(H100, 8 * sms, 4, 16, band=True) == 1
    assert configs.kv_splits(H100, 8 * sms, 4, 64, band=True) == 2  # causal 8k: 256 steps halved to 128
    assert configs.kv_splits(H100, 8 * sms, 4, 128) == 1  # 512 steps without a causal mask
    assert configs.kv_splits(H100, 8 * sms, 4, 128, band=True) == 4
    assert configs.kv_splits(H100, sms - 4, 32, 1) == 2  # MQA on a small grid: every SM a block
    assert configs.kv_splits(H100, 4, 32, 1) == 32  # a tiny grid: one query head per block
    assert configs.kv_splits(H100, sms, 6, 100) == 2  # 600 steps: the smallest divisor within 512 steps
    assert configs.kv_splits(H100, sms, 7, 100) == 7  # a prime group: all or nothing
    assert configs.kv_splits(H100, 1, 1) == 1  # no group to split
    for causal, limit in configs.KV_SPLIT_MAX_STEPS.items():
        for group in (2, 4, 8, 32):
            splits = configs.kv_splits(H100, 1000, group, 64, band=causal)
            assert group % splits == 0 and (64 * group // splits <= limit or splits == group)


def test_packed_rows_are_a_policy_of_every_kernel_but_the_staging_copy():
    from cupyflash.families import MMA_SM80

    cfg = select_fwd_config(H100, 64)
    packed = Variant("bfloat16", "band", rows="packed")
    assert ", cf::PackedRows, " in MMA_SM80.kernel_name("fwd", cfg, 64, packed)
    assert ", cf::DenseRows, " in MMA_SM80.kernel_name("fwd", cfg, 64, Variant("bfloat16"))
    bwd = configs.select_config("bwd", H100, 64)
    assert ", cf::PackedRows, cf::NoDropout, true, 2, " in MMA_SM80.kernel_name("bwd", bwd, 64, packed, True)
    pre = "cf::flash_bwd_preprocess_kernel<cf::bf16, cf::PackedRows>"
    assert MMA_SM80.kernel_name("bwd_preprocess", None, 0, packed) == pre
    assert MMA_SM80.kernel_name("copy_rows", None, 0, packed) == "cf::flash_copy_rows_kernel<cf::bf16>"


# ---- an additive bias and a boolean mask: one Bias policy each, both tiles per stage together ----

BIAS_POLICIES = {Variant("bfloat16"): "cf::NoBias",
                 Variant("bfloat16", bias="float32"): "cf::TileBias<float>",
                 Variant("bfloat16", bool_mask=True): "cf::TileBias<cf::mask8>",
                 Variant("bfloat16", bias="bfloat16", bool_mask=True): "cf::MaskedBias<cf::bf16>",
                 Variant("bfloat16", bool_mask=True, mask_blocks=True): "cf::BlockMask",
                 Variant("bfloat16", bias="bfloat16", bool_mask=True, mask_blocks=True):
                     "cf::MaskedBias<cf::bf16, false, cf::BlockMask>"}


@pytest.mark.parametrize("variant,policy", BIAS_POLICIES.items(), ids=BIAS_POLICIES.values())
def test_the_bias_policy_and_its_tiles(variant, policy):
    from dataclasses import replace

    from cupyflash.families import MMA_SM80

    cfg = configs.select_config("fwd", H100, 64, variant=variant, family="mma_sm80")  # (bulk copies: their own test)
    assert f", {policy}, cf::DenseRows, " in MMA_SM80.kernel_name("fwd", cfg, 64, variant)
    # only the dK/dV kernel computes dbias, and only a bias has one
    if variant.bias != "none":
        grad = replace(variant, dbias=True)
        bwd = configs.select_config("bwd", H100, 64, variant=grad)
        grad_policy = policy.replace(", false,", ", true,") if variant.mask_blocks else f"{policy[:-1]}, true>"
        assert f", {grad_policy}, " in MMA_SM80.kernel_name("bwd", bwd, 64, grad, True)
        dq = configs.select_config("bwd_dq", H100, 64, variant=grad)
        assert f", {policy}, " in MMA_SM80.kernel_name("bwd_dq", dq, 64, grad)
    # a stage holds a tile of each: rows of block_n elements padded by 16 bytes; a block mask only two entries
    plain = MMA_SM80.smem_bytes("fwd", cfg, 64, Variant("bfloat16"))
    mask_tile = 16 if variant.mask_blocks else cfg.block_m * (cfg.block_n + 16)
    per_stage = (cfg.block_m * (cfg.block_n * {"none": 0, "bfloat16": 2, "float32": 4}[variant.bias] + 16)
                 * (variant.bias != "none") + mask_tile * variant.bool_mask)
    assert MMA_SM80.smem_bytes("fwd", cfg, 64, variant) == plain + cfg.stages * per_stage


@pytest.mark.parametrize("limits", [SM86, A100, H100], ids=lambda d: d.name)  # real GPUs (at 48 KB: NoConfigFits)
@pytest.mark.parametrize("kind", ["fwd", "bwd", "bwd_dq"])
def test_a_mask_with_a_bias_gets_a_tile_that_allows_both(limits, kind):
    for kd in KERNEL_HEAD_DIMS:
        both = Variant("bfloat16", "band", bias="float16", dbias=kind == "bwd", bool_mask=True)
        config = configs.select_config(kind, limits, kd, variant=both)
        for alone in (Variant("bfloat16", "band", bias="float16", dbias=kind == "bwd"),
                      Variant("bfloat16", "band", bool_mask=True)):
            assert config in configs.candidates(kind, limits, kd, alone), (kd, config, alone)


def test_masks_and_biases_are_refused_with_packed_rows_by_the_family():
    from cupyflash.families import MMA_SM80

    assert MMA_SM80.supports(90, Variant("bfloat16", bias="float16", bool_mask=True))
    assert not MMA_SM80.supports(90, Variant("bfloat16", rows="packed", bool_mask=True))
    assert not MMA_SM80.supports(90, Variant("bfloat16", rows="packed", bias="float16"))


def test_arch_features_apply_only_on_their_gpus():
    entry = configs.When(configs.TileConfig("mma_sm80", 128, 64, 4), avoid=("sm80+band+fp32_bias",))
    variant = Variant("bfloat16", "band", bias="float32")
    assert not entry.allows(variant, A100) and entry.allows(variant, H100)
    assert entry.allows(variant)  # without limits (every entry a variant may ever get): allowed
    assert entry.allows(Variant("bfloat16", bias="float32"), A100)  # not the band mask
    a100 = configs.select_config("fwd", A100, 64, variant=variant)
    h100 = configs.select_config("fwd", H100, 64, variant=variant, family="mma_sm80")
    assert (a100.block_m, a100.block_n) == (64, 32) and (h100.block_m, h100.block_n) == (128, 64)
    with pytest.raises(ValueError, match="score modifiers"):
        configs.check_config("fwd", h100, A100, 64, variant)


def test_a_block_sparse_mask_takes_the_tiles_of_no_mask():
    """Only its tile summary is read: the forward at head dim 64 gets the plain 128x128 tile, which a mask read
    in its tiles cannot have (its stage tiles do not fit two blocks per SM)."""
    blocks = Variant("bfloat16", bool_mask=True, mask_blocks=True)
    for kind in ("fwd", "bwd", "bwd_dq"):
        for kd in (64, 128):
            family = "mma_sm80" if kind == "fwd" else None
            assert (configs.select_config(kind, H100, kd, variant=blocks, family=family)
                    == configs.select_config(kind, H100, kd, family=family))
    for kd in (64, 128):  # wgmma: 128-row tiles, which divide power-of-two blocks (the plain forward takes 192)
        tile = configs.select_config("fwd", H100, kd, variant=blocks)
        assert tile.family == "wgmma_sm90" and 128 % tile.block_m == 0 and 128 % tile.block_n == 0
    cut = configs.select_config("fwd", H100, 64, variant=Variant("bfloat16", bool_mask=True), family="mma_sm80")
    assert (cut.block_m, cut.block_n) == (128, 64)


def test_mask_blocks_describe_a_boolean_mask():
    with pytest.raises(ValueError, match="bool_mask must be True"):
        Variant("bfloat16", mask_blocks=True)


def test_float32_takes_its_own_family_and_tiles():
    for kind in ("fwd", "bwd", "bwd_dq"):
        for kd in configs.KERNEL_HEAD_DIMS:
            for precision in ("highest", "tf32"):
                variant = Variant("float32", precision=precision)
                config = configs.select_config(kind, H100, kd, variant=variant)
                # TF32 wgmma's forward and dK/dV kernel at head dims 64 and 128 (the dQ kernel is mma_tf32's; at
                # "highest" the dK/dV kernel's split operand tiles fit at 128 with 16 queries a step)
                wgmma = kind in ("fwd", "bwd") and kd in (64, 128)
                assert config.family == ("wgmma_tf32" if wgmma else "mma_tf32"), (kind, kd, precision, config)
                assert configs.fits(config, kd, H100, residency=False, kind=kind, variant=variant)
    # measured picks (docs/performance.md): the single-pass backward runs 32x64 at head dim 64 and 32x128 at 128;
    # "highest" runs wgmma's 32x64 with a helper warpgroup at 64 with plain scores, the band mask, softcap and ALiBi,
    # not with a bias; at 128 16x64 with a helper warpgroup, with the band mask, softcap and ALiBi too
    def bwd(kd, precision, **kw):
        c = configs.select_config("bwd", H100, kd, variant=Variant("float32", precision=precision, **kw))
        return c.block_m, c.block_n, c.warps

    assert bwd(64, "tf32") == (32, 64, 4) and bwd(128, "tf32") == (32, 128, 8)  # wgmma_tf32 on the H100
    assert bwd(64, "highest") == bwd(64, "highest", mask="band", softcap=True, alibi=True) == (32, 64, 8)
    assert bwd(128, "highest") == bwd(128, "highest", mask="band", softcap=True, alibi=True) == (16, 64, 8)
    assert bwd(64, "highest", bias="float32") == (64, 64, 4) and bwd(128, "highest", bias="float32") == (32, 32, 4)
    assert configs.select_config("fwd", A100, 128, variant=Variant("bfloat16")).family == "mma_sm80"


def test_a_combination_without_a_kernel_says_so():
    heavy = Variant("float32", "band", True, True, bias="float32", dbias=True, bool_mask=True, precision="highest")
    with pytest.raises(configs.NoConfigFits, match="every tile of the mma_tf32 family spills registers"):
        configs.select_config("bwd", H100, 256, variant=heavy)


def test_forward_splits_fill_idle_sms_with_enough_keys_each():
    assert configs.forward_splits(H100, blocks=132, key_tiles=1000) == 1  # the grid fills the GPU
    assert configs.forward_splits(H100, blocks=67, key_tiles=1000) == 1  # ... more than half of it
    assert configs.forward_splits(H100, blocks=66, key_tiles=1000) == 2  # one round of 132 slots
    assert configs.forward_splits(H100, blocks=100, key_tiles=1000, blocks_per_sm=2) == 2
    assert configs.forward_splits(H100, blocks=8, key_tiles=1024) == 16
    assert configs.forward_splits(H100, blocks=8, key_tiles=20) == 20 // configs.SPLIT_MIN_KEY_TILES
    assert configs.forward_splits(H100, blocks=1, key_tiles=10**6) == configs.SPLIT_MAX
    assert configs.forward_splits(H100, blocks=8, key_tiles=3) == 1  # too few keys to share


def test_split_keys_are_a_variant_of_dense_rows_without_block_masks():
    Variant("bfloat16", split_kv=True)
    for bad in (dict(rows="packed"), dict(bool_mask=True, mask_blocks=True)):
        with pytest.raises(ValueError, match="split_kv"):
            Variant("bfloat16", split_kv=True, **bad)


def test_families_can_be_disabled_by_name():
    from cupyflash import families

    assert families.enabled(disabled="") == families.ALL_FAMILIES
    assert [f.name for f in families.enabled(disabled="wgmma_sm90")] == ["wgmma_tf32", "mma_sm80", "mma_tf32"]
    assert [f.name for f in families.enabled(disabled=" wgmma_sm90 , wgmma_tf32, mma_tf32")] == ["mma_sm80"]
    with pytest.raises(ValueError, match="unknown kernel families.*wgmma"):
        families.enabled(disabled="wgmma")
